"""The model-kind boundary: the kind is chosen from a model's raw config.json by its declared
architecture (never its name), and a model no kind serves is refused with the supported ones listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bge_rerank_integrations import ModelLoadError, Reranker
from bge_rerank_integrations.kinds import KINDS, kind_for, supported_architectures
from bge_rerank_integrations.kinds.cross_encoder import CrossEncoderKind, CrossEncoderModel

from .seams import cross_encoder
from .texts import PASSAGES, QUERIES


def test_the_cross_encoder_kind_serves_xlm_roberta_classifiers(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert kind_for(config) is CrossEncoderKind
    assert kind_for({"model_type": "xlm-roberta"}) is CrossEncoderKind  # no architectures listed
    assert CrossEncoderKind in KINDS
    assert "XLMRobertaForSequenceClassification" in supported_architectures()
    rr = Reranker(model_dir, device="cpu")
    assert isinstance(cross_encoder(rr), CrossEncoderModel)
    assert len(rr.score(QUERIES[0], PASSAGES[:3])) == 3


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["BertForSequenceClassification"], "model_type": "bert"},
        # a name that looks like a reranker decides nothing; the declared architecture does
        {"architectures": ["XLMRobertaForMaskedLM"], "model_type": "xlm-roberta", "_name": "bge-reranker"},
        {"model_type": "bert"},
        {},
    ],
)
def test_a_model_no_kind_serves_is_refused_naming_the_supported_architectures(config: dict[str, Any]) -> None:
    with pytest.raises(ModelLoadError, match="supported architectures: XLMRobertaForSequenceClassification"):
        kind_for(config, "some/bge-reranker")


def test_a_bert_folder_is_refused_before_any_weights_load(
    model_dir: Path, tmp_path: Path, loads: list[str]
) -> None:
    folder = tmp_path / "bge-reranker-bert"  # the name says reranker; the config says BERT
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"], config["model_type"] = ["BertForSequenceClassification"], "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError, match="BertForSequenceClassification model, which this package cannot"
    ):
        Reranker(folder, device="cpu").load()
    assert loads == []


def test_padding_free_switch_per_backend(model_dir: Path) -> None:
    from bge_rerank_integrations import RerankerConfig
    from bge_rerank_integrations.backends.local import LocalBackend

    config = RerankerConfig(model=str(model_dir), device="cpu", max_length=128)
    pairs = [(QUERIES[0], p) for p in PASSAGES[:8]]
    scores = {}
    for switch in (None, True, False):
        backend = LocalBackend(config, padding_free=switch)
        assert backend.model.padding_free is (switch is not False)
        scores[switch] = Reranker.from_config(config, backends=[backend]).score_pairs(pairs)
    assert scores[True] == scores[None]
    assert scores[False] == pytest.approx(scores[None], abs=1e-4)  # the padded transformers forward


def test_auto_dtype_is_each_kinds_gpu_dtype_on_cuda_and_float32_elsewhere() -> None:
    # Gemma-2's activations overflow float16: the LLM kinds default to bfloat16 on a GPU
    import torch

    from bge_rerank_integrations.backends.local import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device name needs no GPU
    llm_kinds = [kind for kind in KINDS if kind is not CrossEncoderKind]
    assert llm_kinds
    assert resolve_dtype("auto", cuda, CrossEncoderKind) == "float16"
    for kind in llm_kinds:
        assert resolve_dtype("auto", cuda, kind) == "bfloat16"
    for kind in KINDS:
        assert resolve_dtype("auto", cpu, kind) == "float32"
        assert resolve_dtype("float16", cuda, kind) == "float16"  # a dtype asked for is kept
