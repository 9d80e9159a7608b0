"""The scorers under test, behind one small interface: load, score pairs, count computed tokens.

Every contender gets the same (query, passage) pairs and returns raw logits (no sigmoid), so scores
compare directly. Padded tokens are counted where they are spent: a forward pre-hook on the
``transformers`` model counts the ``input_ids`` elements of every forward pass (the reference's
repeated first batch included); our packed path reports its own count.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import multiprocessing
import os
import sys
import time
import traceback
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

import torch

from benchmarks.harness import PeakRSS, sync

__all__ = [
    "CONTENDERS",
    "INSTALL_HINT",
    "Contender",
    "ContenderSpec",
    "IsolatedContender",
    "import_flag_class",
    "load_flag_reranker_class",
    "missing_packages",
    "stub_missing_modules",
]


@dataclass(frozen=True)
class ContenderSpec:
    """How to build one contender."""

    name: str
    kind: str  # "ours", "flag", "cross-encoder", "onnxruntime", "openvino"
    description: str
    options: dict[str, Any] = field(default_factory=dict)


def _specs(device: str) -> list[ContenderSpec]:
    cuda = device.startswith("cuda")
    specs = [
        ContenderSpec(
            "ours", "ours", "this package, dtype auto (fp16 on CUDA, fp32 on CPU)", {"dtype": "auto"}
        ),
    ]
    if not cuda:
        specs += [
            ContenderSpec("ours-bf16", "ours", "this package, dtype=bfloat16", {"dtype": "bfloat16"}),
            ContenderSpec(
                "ours-int8", "ours", "this package, dtype=int8 (int8 linear layers)", {"dtype": "int8"}
            ),
        ]
    specs += [
        ContenderSpec(
            "flag-default",
            "flag",
            "FlagEmbedding FlagReranker at its defaults (batch_size=128, use_fp16=False)",
            {"use_fp16": False, "batch_size": 128},
        ),
        ContenderSpec(
            "flag-best",
            "flag",
            "FlagReranker, best settings: use_fp16=True, one device"
            if cuda
            else "FlagReranker, best settings on CPU: batch_size=2 (best of 1-128 here; fp32, "
            "use_fp16 is ignored on CPU)",
            {"use_fp16": True, "batch_size": 128} if cuda else {"use_fp16": False, "batch_size": 2},
        ),
        ContenderSpec(
            "cross-encoder",
            "cross-encoder",
            "sentence-transformers CrossEncoder, batch_size=32" + (", fp16" if cuda else ", fp32"),
            {"fp16": cuda, "batch_size": 32},
        ),
    ]
    if not cuda:  # what CPU users who want speed pick instead of torch (GUIDE section 9)
        budget = _RUNTIME_BUDGET
        sorted_batches = f"length-sorted batches of at most {budget} padded tokens, our token ids"
        specs += [
            ContenderSpec(
                "onnxruntime",
                "onnxruntime",
                f"ONNX Runtime, fp32, all graph optimizations, transformer fusions, {sorted_batches}",
                {"variant": "fused", "budget": budget},
            ),
            ContenderSpec(
                "onnxruntime-int8",
                "onnxruntime",
                "ONNX Runtime, dynamic int8 (quantize_dynamic: int8 weights per output channel, uint8 "
                f"activations), {sorted_batches}",
                {"variant": "fused-int8", "budget": budget},
            ),
            ContenderSpec(
                "openvino",
                "openvino",
                f"OpenVINO, fp32 (INFERENCE_PRECISION_HINT f32), latency hint, {sorted_batches}",
                {"precision": "f32", "budget": budget},
            ),
            ContenderSpec(
                "openvino-default",
                "openvino",
                f"OpenVINO at its default precision on this CPU, latency hint, {sorted_batches}",
                {"precision": None, "budget": budget},
            ),
        ]
    return specs


# Padded tokens a batch for the ONNX Runtime and OpenVINO contenders (the best of a sweep here:
# benchmarks/RESULTS.md).
_RUNTIME_BUDGET = 1024

# What a contender needs beyond the dev environment: a missing one skips it, with this hint.
OPTIONAL_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnxruntime", "onnx")}
INSTALL_HINT = "pip install -e '.[bench-cpu]'"


def missing_packages(spec: ContenderSpec) -> list[str]:
    """The packages ``spec`` needs that are not installed (none for the dev environment's contenders)."""
    return [p for p in OPTIONAL_PACKAGES.get(spec.kind, ()) if importlib.util.find_spec(p) is None]


CONTENDERS = {"cpu": [s.name for s in _specs("cpu")], "cuda": [s.name for s in _specs("cuda")]}


class Contender:
    """A loaded scorer. ``score`` returns raw logits in input order."""

    def __init__(self, spec: ContenderSpec, model_dir: str, device: str, max_length: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.device = device
        self.max_length = max_length
        self.computed_tokens = 0  # tokens that went through the model, padding included
        self.pid = os.getpid()  # the process it computes in: this one
        self.import_note = ""
        self._hooks: list[Any] = []
        self._impl: Any = None
        self._stats: Any = None
        self._encoder: Any = None  # our tokenizer, for the ONNX Runtime and OpenVINO contenders
        self._pad_id = 1
        getattr(self, f"_load_{spec.kind.replace('-', '_')}")(model_dir)

    # -- loading -----------------------------------------------------------------------------------
    def _load_ours(self, model_dir: str) -> None:
        from bge_rerank_integrations import Reranker

        rr = Reranker(
            model_dir, device=self.device, dtype=self.spec.options["dtype"], max_length=self.max_length
        )
        rr.load()
        self._impl = rr
        self._stats = rr  # its ``stats``: the tokens its forward passes computed, padding included
        asked = self.spec.options["dtype"]
        # what runs: "auto" is fp16 on CUDA and fp32 elsewhere; int8 is checked by the agreement
        # bounds (a silent fp32 fallback would agree too closely: the smoke test asserts it does not)
        self.dtype = asked if asked != "auto" else "float16" if self.device.startswith("cuda") else "float32"

    def _load_flag(self, model_dir: str) -> None:
        cls, self.import_note = load_flag_reranker_class()
        opts = self.spec.options
        devices = [self.device] if self.device.startswith("cuda") else "cpu"
        flag = cls(
            model_dir,
            use_fp16=opts["use_fp16"],
            batch_size=opts["batch_size"],
            max_length=self.max_length,
            devices=devices,
        )
        self._impl = flag
        self._hook(flag.model)
        on_cuda = self.device.startswith("cuda")
        self.dtype = "float16" if opts["use_fp16"] and on_cuda else "float32"

    def _load_cross_encoder(self, model_dir: str) -> None:
        self.import_note = stub_missing_modules(("sklearn", "scipy"))
        from sentence_transformers import CrossEncoder

        opts = self.spec.options
        kwargs: dict[str, Any] = {"dtype": torch.float16} if opts["fp16"] else {}
        ce = CrossEncoder(
            model_dir,
            device=self.device,
            max_length=self.max_length,
            model_kwargs=kwargs,
            activation_fn=torch.nn.Identity(),
        )
        self._impl = ce
        self._hook(_find_transformers_model(ce))
        self.dtype = "float16" if opts["fp16"] else "float32"

    def _load_onnxruntime(self, model_dir: str) -> None:
        import onnxruntime as ort

        from benchmarks.exports import onnx_export

        opts = self.spec.options
        path = onnx_export(Path(model_dir), opts["variant"])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = torch.get_num_threads()  # the same cores as torch gets
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._impl = lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        self._runtime_setup(model_dir)
        self.dtype = "int8" if opts["variant"].endswith("int8") else "float32"
        self.import_note = f"onnxruntime {ort.__version__}, {path.name}"

    def _load_openvino(self, model_dir: str) -> None:
        import openvino as ov

        from benchmarks.exports import onnx_export

        opts = self.spec.options
        path = onnx_export(Path(model_dir), "plain")  # OpenVINO reads plain ONNX, not ORT's fused ops
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}  # sentence-transformers' default too
        if opts["precision"]:
            config["INFERENCE_PRECISION_HINT"] = opts["precision"]
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
        output = compiled.output(0)
        self._impl = lambda ids, mask: request.infer({"input_ids": ids, "attention_mask": mask})[output]
        self._runtime_setup(model_dir)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type
        precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(precision, precision)
        self.import_note = f"openvino {ov.__version__}, runs {precision}"

    def _runtime_setup(self, model_dir: str) -> None:
        """Our tokenizer and batching for an ONNX Runtime or OpenVINO contender: the same ids as ours."""
        from transformers import AutoTokenizer

        from bge_rerank_integrations.tokenization import PairEncoder

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._encoder = PairEncoder.from_transformers(
            tokenizer, max_length=self.max_length, query_max_length=self.max_length * 3 // 4
        )
        self._pad_id = int(tokenizer.pad_token_id)

    def _score_runtime(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Length-sorted padded batches under the token budget through the exported model."""
        import numpy as np

        from bge_rerank_integrations.batching import plan_batches

        ids = self._encoder.encode(list(pairs))
        out = [0.0] * len(ids)
        for batch in plan_batches([len(x) for x in ids], self.spec.options["budget"]):
            width = max(len(ids[i]) for i in batch)
            input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            logits = self._impl(input_ids, mask)
            self.computed_tokens += input_ids.size
            for row, i in enumerate(batch):
                out[i] = float(logits[row, 0])
        return out

    def _hook(self, model: Any) -> None:
        """Count the ids entering ``model``'s encoder (called as a module even when the head's
        ``forward`` is called directly, as sentence-transformers does)."""
        model = getattr(model, "base_model", model)

        def count(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids")
            if ids is None and args:
                ids = args[0]
            if ids is not None:
                self.computed_tokens += int(ids.numel())

        self._hooks.append(model.register_forward_pre_hook(count, with_kwargs=True))

    # -- scoring -----------------------------------------------------------------------------------
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw logits of ``pairs``, in input order."""
        kind = self.spec.kind
        before = self._stats.stats.computed_tokens if self._stats is not None else 0
        if kind == "ours":
            out = self._impl.score_pairs(list(pairs))
        elif kind in ("onnxruntime", "openvino"):
            out = self._score_runtime(pairs)
        elif kind == "flag":
            out = self._impl.compute_score([list(p) for p in pairs], normalize=False)
            out = [out] if isinstance(out, float) else list(out)
        else:
            arr = self._impl.predict(
                list(pairs), batch_size=self.spec.options["batch_size"], show_progress_bar=False
            )
            out = [float(x) for x in arr]
        if self._stats is not None:
            self.computed_tokens += self._stats.stats.computed_tokens - before
        return [float(x) for x in out]

    def timed_score(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float], float, float]:
        """``score(pairs)``, its wall seconds (the device idle before and after) and the resident
        memory it grew this process by at its peak, in MiB."""
        sync(self.device)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            scores = self.score(pairs)
            sync(self.device)
            elapsed = time.perf_counter() - t0
        return scores, elapsed, rss.grown_mib

    def token_ids(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """The ids this contender feeds the model for ``pairs`` (before padding)."""
        if self.spec.kind == "ours":
            return self._impl.encode_pairs(list(pairs))  # type: ignore[no-any-return]
        if self.spec.kind in ("onnxruntime", "openvino"):
            return [list(x) for x in self._encoder.encode(list(pairs))]
        if self.spec.kind == "flag":
            from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

            tok = self._impl.tokenizer
            qmax = self.max_length * 3 // 4
            out = []
            for q, p in pairs:
                q_ids = tok(q, add_special_tokens=False, max_length=qmax, truncation=True)["input_ids"]
                p_ids = tok(p, add_special_tokens=False, max_length=self.max_length, truncation=True)[
                    "input_ids"
                ]
                item = prepare_for_model_compat(
                    tok, q_ids, p_ids, truncation="only_second", max_length=self.max_length, padding=False
                )
                out.append(list(item["input_ids"]))
            return out
        tok = self._impl.tokenizer
        enc = tok([q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=self.max_length)
        return [list(x) for x in enc["input_ids"]]

    def close(self) -> None:
        """Drop hooks and the model."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._impl = None


class IsolatedContender:
    """A :class:`Contender` loaded and run in a spawned process of its own, driven over a pipe.

    Alone in its process, a contender computes as it would in a user's: beside the suite's own torch
    work (matmul peaks, other contenders), a torch contender's passes run 1.2-1.5x slower, GNU
    OpenMP throttling its spin-wait once two teams' threads outnumber the cores (RESULTS.md, issue
    15). Times and peak memory are measured in the contender's process, around its ``score`` only.
    """

    def __init__(
        self, spec: ContenderSpec, model_dir: str, device: str, max_length: int, *, threads: int
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.device = device
        self.max_length = max_length
        self.computed_tokens = 0
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, spec, model_dir, device, max_length, threads),
            name=f"contender-{spec.name}",
            daemon=True,
        )
        self._process.start()
        child.close()
        loaded = self._receive()  # the process speaks first: loaded, or why not
        self.dtype: str = loaded["dtype"]
        self.import_note: str = loaded["import_note"]
        self.pid: int = loaded["pid"]

    def _call(self, op: str, arg: Any) -> Any:
        try:
            self._conn.send((op, arg))
        except OSError:  # the pipe is broken: the process is gone
            self._ended()
        return self._receive()

    def _receive(self) -> Any:
        """The process's next answer; its error, or its end, as a ``RuntimeError`` naming it."""
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self._ended()
        if status == "error":
            raise RuntimeError(f"contender {self.name} failed in its process:\n{value}")
        return value

    def _ended(self) -> NoReturn:
        self._process.join(5)
        code = self._process.exitcode
        raise RuntimeError(f"contender {self.name}'s process ended (exit code {code})") from None

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw logits of ``pairs``, in input order."""
        return self.timed_score(pairs)[0]

    def timed_score(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float], float, float]:
        """As :meth:`Contender.timed_score`, measured in the contender's own process."""
        scores, elapsed, grown_mib, computed = self._call("score", list(pairs))
        self.computed_tokens += computed
        return scores, elapsed, grown_mib

    def token_ids(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """The ids this contender feeds the model for ``pairs`` (before padding)."""
        return self._call("token_ids", list(pairs))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Let the process drop its model and end; end it if it does not."""
        if self._process.is_alive():
            with contextlib.suppress(OSError, RuntimeError):  # already gone: nothing to close
                self._call("close", None)
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()


def _serve(
    conn: Connection, spec: ContenderSpec, model_dir: str, device: str, max_length: int, threads: int
) -> None:
    """A contender's process: load it, then answer ``score``, ``token_ids`` and ``close`` requests."""
    log_format = f"%(asctime)s [{spec.name}] %(message)s"
    logging.basicConfig(level=logging.INFO, format=log_format, stream=sys.stderr)
    for noisy in ("transformers", "sentence_transformers", "FlagEmbedding", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    try:
        contender = Contender(spec, model_dir, device, max_length)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", {"dtype": contender.dtype, "import_note": contender.import_note, "pid": os.getpid()}))
    while True:
        op, arg = conn.recv()
        try:
            if op == "close":
                contender.close()
                conn.send(("ok", None))
                return
            if op == "score":
                before = contender.computed_tokens
                scores, elapsed, grown_mib = contender.timed_score(arg)
                value: Any = (scores, elapsed, grown_mib, contender.computed_tokens - before)
            elif op == "token_ids":
                value = contender.token_ids(arg)
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception:
            conn.send(("error", traceback.format_exc()))
        else:
            conn.send(("ok", value))


def build_specs(device: str, names: Sequence[str] | None) -> list[ContenderSpec]:
    """The contenders for ``device``, optionally only those in ``names`` (in that order)."""
    specs = {s.name: s for s in _specs(device)}
    if not names:
        return list(specs.values())
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {', '.join(specs)}")
    return [specs[n] for n in names]


def _find_transformers_model(obj: Any) -> Any:
    from transformers import PreTrainedModel

    for module in obj.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise RuntimeError("no transformers model inside the CrossEncoder")


@functools.cache
def load_flag_reranker_class() -> tuple[Any, str]:
    """FlagEmbedding's ``FlagReranker`` class, and how it was imported (see :func:`import_flag_class`)."""
    return import_flag_class("FlagReranker", "inference.reranker.encoder_only.base", "BaseReranker")


def import_flag_class(name: str, module: str, base: str, *, stub_peft: bool = False) -> tuple[Any, str]:
    """FlagEmbedding's class ``name``, and how it was imported.

    ``from FlagEmbedding import <name>`` imports the whole package, training side included
    (datasets, peft, pyarrow, ...). Where those are missing (a bare GPU machine with only the wheels
    this suite carries), the same class (``base`` in ``FlagEmbedding.<module>``) is loaded from its
    own module without the package's ``__init__`` files: the reranker code itself needs only torch,
    numpy, tqdm and transformers. ``stub_peft``: the LLM rerankers import ``peft`` for ``peft_path``
    (never passed here); where it is missing a stand-in whose ``PeftModel`` raises takes its place.
    """
    try:
        return getattr(importlib.import_module("FlagEmbedding"), name), f"from FlagEmbedding import {name}"
    except (ImportError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    spec = importlib.util.find_spec("FlagEmbedding")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("FlagEmbedding is not installed") from None
    root = next(iter(spec.submodule_search_locations))
    for loaded in [n for n in sys.modules if n == "FlagEmbedding" or n.startswith("FlagEmbedding.")]:
        del sys.modules[loaded]
    parents = module.split(".")[:-1]
    packages = ["", ".abc", ".abc.inference", ".utils"]  # every package above the class, stood in for
    packages += ["." + ".".join(parents[: i + 1]) for i in range(len(parents))]
    packages += [".inference.reranker.encoder_only", ".inference.reranker.decoder_only"]
    for package in packages:
        stand_in = types.ModuleType("FlagEmbedding" + package)
        stand_in.__path__ = [root + package.replace(".", "/")]
        sys.modules["FlagEmbedding" + package] = stand_in
    abs_reranker = importlib.import_module("FlagEmbedding.abc.inference.AbsReranker")
    sys.modules["FlagEmbedding.abc.inference"].AbsReranker = abs_reranker.AbsReranker  # type: ignore[attr-defined]
    if stub_peft and importlib.util.find_spec("peft") is None:
        peft = types.ModuleType("peft")

        class PeftModel:
            @classmethod
            def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
                raise ImportError("peft is a stand-in here: it is not installed")

        peft.PeftModel = PeftModel  # type: ignore[attr-defined]
        sys.modules["peft"] = peft
        reason += "; peft is a stand-in"
    found = getattr(importlib.import_module("FlagEmbedding." + module), base)
    return found, f"FlagEmbedding's {module}.{base}, imported directly ({reason})"


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves empty stand-in modules for the named top-level packages and their submodules."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = tuple(roots)

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def missing(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)

            def unavailable(*_args: Any, **_kwargs: Any) -> None:
                raise ImportError(f"{spec.name}.{name} is a stand-in: {spec.name} is not installed here")

            return type(name, (), {"__init__": unavailable})

        module.__getattr__ = missing  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def stub_missing_modules(roots: Sequence[str]) -> str:
    """Stand in for packages that are imported but never used on the path we time.

    sentence-transformers imports scikit-learn and scipy at import time (similarity helpers,
    evaluators) but ``CrossEncoder.predict`` never calls them. On a machine without them (the bare
    GPU machine; they are too big to carry as wheels) empty stand-ins let it import. Returns a note
    for the report, empty when nothing was stubbed.
    """
    missing = [r for r in roots if r not in sys.modules and importlib.util.find_spec(r) is None]
    if not missing:
        return ""
    sys.meta_path.append(_StubFinder(missing))
    return f"imported with empty stand-ins for {', '.join(missing)} (not installed; not used by predict)"
