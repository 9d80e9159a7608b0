"""ONNX exports of a subject for the ONNX Runtime and OpenVINO contenders, made once and cached.

What a CPU user who wants speed runs instead of torch (GUIDE section 9): the model exported with
``torch.onnx`` and served by ONNX Runtime, optionally dynamically quantized to int8, or the same
export compiled by OpenVINO. sentence-transformers' ``backend="onnx"`` / ``"openvino"`` run these
runtimes too, but their extras do not install beside transformers 5 (optimum-onnx wants
transformers < 4.58), so the suite exports the subject itself, once, and loads it directly.

The exports live in ``<subject>/onnx/`` with a marker naming the subject's build, the weights file
and the recipe, so a rebuilt subject or a changed recipe is exported again.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["RECIPE", "VARIANTS", "onnx_export"]

log = logging.getLogger("benchmarks")

_OPSET = 17
RECIPE: dict[str, str | int] = {
    # The TorchScript exporter over the eager attention keeps attention as plain MatMul/Softmax nodes,
    # which ONNX Runtime's transformer optimizer can fuse into its Attention op (the dynamo exporter's
    # graph is not recognised). Both the plain graph (what OpenVINO reads: it has no ORT-only ops)
    # and the fused one are kept, each also quantized; benchmarks/RESULTS.md says which one is faster.
    "exporter": "torchscript",
    "attention": "eager",
    "opset": _OPSET,
    "fusion": "onnxruntime.transformers.optimizer, model_type bert, opt_level 1",
    "int8": "quantize_dynamic of MatMul/Attention: int8 weights per output channel, uint8 activations",
    "version": 1,
}
VARIANTS = ("plain", "fused", "plain-int8", "fused-int8")
"""``plain``: the exported graph; ``fused``: after ONNX Runtime's transformer fusions; ``-int8``:
dynamically quantized."""


def _marker(model_dir: Path) -> dict[str, Any]:
    weights = model_dir / "model.safetensors"
    subject = model_dir / "bge_test_model.json"
    return {
        "recipe": RECIPE,
        "subject": json.loads(subject.read_text()) if subject.exists() else None,
        "weights": [weights.stat().st_size, weights.stat().st_mtime_ns] if weights.exists() else None,
    }


def onnx_export(model_dir: Path, variant: str = "fused") -> Path:
    """The subject in ``model_dir`` as an ONNX file of ``variant`` (one of :data:`VARIANTS`).

    All variants are made on first use and kept. Inputs ``input_ids`` and ``attention_mask`` (int64,
    dynamic batch and length), output ``logits``. Needs ``onnx`` and ``onnxruntime`` (its optimizer
    and quantizer); raises ImportError without them.
    """
    import onnx  # noqa: F401  (fail early with ImportError: the contender is skipped)
    import onnxruntime  # noqa: F401

    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; choose from {', '.join(VARIANTS)}")
    folder = model_dir / "onnx"
    marker_path = folder / "export.json"
    marker = _marker(model_dir)
    current = marker_path.exists() and json.loads(marker_path.read_text()) == marker
    if not current:
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            f.unlink()
        t0 = time.perf_counter()
        _export(model_dir, folder / "plain.onnx")
        _fuse(model_dir, folder / "plain.onnx", folder / "fused.onnx")
        for name in ("plain", "fused"):
            _quantize_int8(folder / f"{name}.onnx", folder / f"{name}-int8.onnx")
        marker_path.write_text(json.dumps(marker, indent=1))
        log.info("exported %s to ONNX in %.1f s", model_dir, time.perf_counter() - t0)
    return folder / f"{variant}.onnx"


def _export(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.full((2, 16), 5, dtype=torch.long)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask")},
            opset_version=_OPSET,
            dynamo=False,
            external_data=True,
        )


def _fuse(model_dir: Path, plain: Path, out: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    optimized = optimize_model(
        str(plain),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=1,
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    log.info("ONNX Runtime fusions: %s", fused)
    optimized.save_model_to_file(str(out), use_external_data_format=True)


def _quantize_int8(fp32: Path, out: Path) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every tensor at INFO on the root
    try:
        _quantize_dynamic(fp32, out)
    finally:
        root.setLevel(level)


def _quantize_dynamic(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        op_types_to_quantize=["MatMul", "Attention"],  # the linear layers, as ours; embeddings stay fp32
        per_channel=True,
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
        # the fused graph's Attention op has no shape inference: name the float type it works in
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
