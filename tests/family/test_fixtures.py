"""The offline decoder test models: reproducible, Gemma-like tokenizers, remote code as the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from bge_rerank_integrations.llm_layout import detect_llm_kind
from bge_rerank_integrations.testing import (
    DECODER_KINDS,
    TINY_DECODER_SHAPES,
    build_decoder_test_model,
    decoder_model_marker,
)

from .reference import REFERENCE_WARNINGS

pytestmark = REFERENCE_WARNINGS


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_a_second_build_writes_identical_files(
    kind: str, decoder_dirs: dict[str, Path], tmp_path: Path
) -> None:
    first, second = (
        decoder_dirs[kind],
        build_decoder_test_model(tmp_path / kind, shape=TINY_DECODER_SHAPES[kind]),
    )
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= set(files)
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    marker = json.loads((first / "bge_test_model.json").read_text())
    assert marker == decoder_model_marker(TINY_DECODER_SHAPES[kind])


def test_tokenizer_is_a_gemma_byte_fallback_bpe(decoder_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(decoder_dirs["v2-gemma"])
    assert type(tokenizer).__name__ == "GemmaTokenizer"
    assert tokenizer.padding_side == "left"  # GemmaTokenizer's default, which FlagLLMReranker pads on
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    assert tokenizer.convert_tokens_to_ids(special) == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens(tokenizer("Yes", add_special_tokens=False)["input_ids"]) == ["Yes"]
    assert tokenizer("Yes")["input_ids"][0] == 2  # <bos> first, as Gemma's tokenizer adds it
    assert tokenizer("\n", add_special_tokens=False)["input_ids"] == tokenizer.convert_tokens_to_ids(["\n"])
    # Characters outside the vocabulary fall back to their UTF-8 bytes (never <unk>) and decode back.
    for text in ("emoji 😀 here", "தமிழ்", "北京是首都", "Привет"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    assert any(t.startswith("<0x") for t in tokenizer.tokenize("😀"))


@pytest.mark.parametrize("kind", ["v2-minicpm-layerwise", "v2.5-gemma2-lightweight"])
def test_layerwise_kinds_carry_remote_code_like_the_real_repositories(
    kind: str, decoder_dirs: dict[str, Path]
) -> None:
    folder = decoder_dirs[kind]
    spec = json.loads((folder / "config.json").read_text())
    assert set(spec["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    for target in spec["auto_map"].values():
        assert (folder / f"{target.split('.')[0]}.py").is_file()
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == {"v2-minicpm-layerwise": "LayerWiseMiniCPMConfig"}.get(
        kind, "CostWiseGemmaConfig"
    )
    assert config.start_layer == TINY_DECODER_SHAPES[kind].start_layer


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_kind_is_detected_from_the_config(kind: str, decoder_dirs: dict[str, Path]) -> None:
    spec = json.loads((decoder_dirs[kind] / "config.json").read_text())
    detected = detect_llm_kind(spec)
    assert detected is not None
    assert detected.name == kind
    del spec["architectures"]  # model_type alone decides then
    assert detect_llm_kind(spec) is detected
    assert detect_llm_kind({"architectures": ["XLMRobertaForSequenceClassification"]}) is None
