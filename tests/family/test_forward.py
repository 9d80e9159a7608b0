"""Scores of the decoder kinds equal FlagEmbedding's (fp32, CPU) and do not depend on batch neighbours."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.llm_forward import YesLogitForward, right_pad
from bge_rerank_integrations.llm_layerwise import check_layers, compress_passages, load_layerwise_model
from bge_rerank_integrations.llm_layout import LLM_KINDS, LLMPairEncoder

from .pairs import all_pairs, workload
from .reference import REFERENCE_WARNINGS, flag_reranker

pytestmark = REFERENCE_WARNINGS

PARITY = 1e-4  # this forward against FlagEmbedding's: different kernels, padding and summation order
INVARIANCE = {"abs": 1e-5, "rel": 1e-5}  # the core's bound for the same code in different batches

Scorer = Callable[[Sequence[tuple[str, str]]], list[float]]


def load(kind: str, folder: Path) -> Any:
    if kind == "v2-gemma":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = json.loads((folder / "config.json").read_text())
    return load_layerwise_model(str(folder), kind, config=config, dtype=torch.float32)


@pytest.fixture(scope="module")
def models(decoder_dirs: dict[str, Path]) -> dict[str, Any]:
    return {kind: load(kind, folder) for kind, folder in decoder_dirs.items()}


def scorer(kind: str, folder: Path, model: Any, *, layout: dict[str, Any], **options: Any) -> Scorer:
    """This package's layout and forward for ``kind``, as one function of pairs (one batch)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = LLMPairEncoder.from_transformers(tokenizer, LLM_KINDS[kind], **layout)

    def score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        encoded = encoder.encode(pairs)
        if kind == "v2-gemma":
            forward = YesLogitForward(model, yes_id=encoder.yes_id, pad_id=tokenizer.pad_token_id)
            return forward(encoded.ids).tolist()  # type: ignore[no-any-return]
        if kind == "v2-minicpm-layerwise":
            (scores,) = model.scores(encoded.ids, **options)
        else:
            lengths = {"query_lengths": encoded.query_lengths, "prompt_lengths": encoded.prompt_lengths}
            (scores,) = model.scores(encoded.ids, **lengths, **options)
        return scores.tolist()  # type: ignore[no-any-return]

    return score


# Ids at the default lengths are checked in test_layout; scores use shorter pairs, since the
# reference computes the logits of the whole vocabulary at every position (and runs it all twice).
SHORT = {"max_length": 96}
PROMPT = {"max_length": 48, "query_max_length": 16, "prompt": "Does B answer A? Yes or No."}
CASES = [
    pytest.param("v2-gemma", SHORT, {}, id="gemma"),
    pytest.param("v2-gemma", PROMPT, {}, id="gemma-own-prompt"),
    pytest.param("v2-minicpm-layerwise", SHORT, {}, id="minicpm-last-layer"),
    pytest.param("v2-minicpm-layerwise", PROMPT, {"cutoff_layers": [2]}, id="minicpm-layer-2"),
    pytest.param("v2.5-gemma2-lightweight", SHORT, {}, id="lightweight-last-layer"),
    pytest.param(
        "v2.5-gemma2-lightweight",
        SHORT,
        {"cutoff_layers": [4], "compress_ratio": 2, "compress_layers": [1, 3]},
        id="lightweight-compress-2",
    ),
    pytest.param(
        "v2.5-gemma2-lightweight",
        PROMPT,
        {"cutoff_layers": [3], "compress_ratio": 4, "compress_layers": [2]},
        id="lightweight-compress-4",
    ),
]


@pytest.mark.parametrize(("kind", "layout", "options"), CASES)
def test_scores_match_flagembedding(
    kind: str,
    layout: dict[str, Any],
    options: dict[str, Any],
    decoder_dirs: dict[str, Path],
    models: dict[str, Any],
) -> None:
    pairs = all_pairs()
    reference = flag_reranker(kind, decoder_dirs[kind], **layout)
    expected = reference.compute_score(pairs, **options)
    ours = scorer(kind, decoder_dirs[kind], models[kind], layout=layout, **options)(pairs)
    assert ours == pytest.approx(expected, abs=PARITY)
    assert len({round(s, 3) for s in ours}) > len(pairs) // 2  # distinct scores: a mix-up would show


@pytest.mark.parametrize("kind", ["v2-minicpm-layerwise", "v2.5-gemma2-lightweight"])
def test_several_cutoff_layers_score_like_flagembedding(
    kind: str, decoder_dirs: dict[str, Path], models: dict[str, Any]
) -> None:
    pairs = all_pairs()[:20]
    encoded = LLMPairEncoder.from_transformers(
        AutoTokenizer.from_pretrained(decoder_dirs[kind]), LLM_KINDS[kind], **SHORT
    ).encode(pairs)
    lengths = {"query_lengths": encoded.query_lengths, "prompt_lengths": encoded.prompt_lengths}
    extra = lengths if kind == "v2.5-gemma2-lightweight" else {}
    ours = models[kind].scores(encoded.ids, cutoff_layers=[2, 3, 4], **extra)
    expected = flag_reranker(kind, decoder_dirs[kind], **SHORT).compute_score(pairs, cutoff_layers=[2, 3, 4])
    assert ours.shape == (3, len(pairs))
    for layer_scores, layer_expected in zip(ours.tolist(), expected, strict=True):
        assert layer_scores == pytest.approx(layer_expected, abs=PARITY)


def test_yes_row_equals_the_full_vocabulary_logit(
    decoder_dirs: dict[str, Path], models: dict[str, Any]
) -> None:
    model = models["v2-gemma"]
    tokenizer = AutoTokenizer.from_pretrained(decoder_dirs["v2-gemma"])
    encoder = LLMPairEncoder.from_transformers(tokenizer, LLM_KINDS["v2-gemma"])
    ids = encoder.encode(all_pairs()[:24]).ids
    ours = YesLogitForward(model, yes_id=encoder.yes_id, pad_id=0)(ids)
    full = []
    with torch.inference_mode():
        for pair in ids:  # each alone: no padding at all, the whole vocabulary at every position
            logits = model(input_ids=torch.tensor([pair])).logits
            full.append(float(logits[0, -1, encoder.yes_id]))
    assert ours.dtype == torch.float32
    assert ours.tolist() == pytest.approx(full, **INVARIANCE)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("v2-gemma", {}),
        ("v2-minicpm-layerwise", {"cutoff_layers": [3]}),
        ("v2.5-gemma2-lightweight", {"cutoff_layers": [4], "compress_ratio": 2, "compress_layers": [1, 2]}),
    ],
)
def test_a_score_does_not_depend_on_its_batch(
    kind: str, options: dict[str, Any], decoder_dirs: dict[str, Path], models: dict[str, Any]
) -> None:
    score = scorer(kind, decoder_dirs[kind], models[kind], layout={}, **options)
    pairs = workload(201)
    alone = [score([pair])[0] for pair in pairs]
    assert score(pairs) == pytest.approx(alone, **INVARIANCE)
    order = list(range(len(pairs)))
    random.Random(1).shuffle(order)
    chunked = [
        s for start in range(0, len(order), 17) for s in score([pairs[i] for i in order[start : start + 17]])
    ]
    assert [chunked[order.index(i)] for i in range(len(pairs))] == pytest.approx(alone, **INVARIANCE)


def test_compression_averages_runs_of_passage_tokens() -> None:
    hidden = torch.arange(2 * 9 * 2, dtype=torch.float32).view(2, 9, 2)
    # Row 0: 2 query, 5 passage, 2 prompt tokens. Row 1: 1 query, 2 passage, 1 prompt, 5 padding.
    out, lengths = compress_passages(hidden, torch.tensor([9, 4]), [2, 1], [2, 1], ratio=2)
    assert lengths.tolist() == [7, 3]
    row = hidden[0]
    expected = [row[0], row[1], row[2:4].mean(0), row[4:6].mean(0), row[6], row[7], row[8]]
    assert torch.equal(out[0], torch.stack(expected))
    assert torch.equal(out[1, :3], torch.stack([hidden[1, 0], hidden[1, 1:3].mean(0), hidden[1, 3]]))
    assert torch.equal(out[1, 3:], torch.zeros(4, 2))
    with pytest.raises(ValueError, match="fewer than"):
        compress_passages(hidden, torch.tensor([3, 4]), [2, 1], [2, 1], ratio=2)


def test_bad_options_are_refused(models: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="increasing order"):
        check_layers([3, 2], allowed=[2, 3, 4], default=4)
    with pytest.raises(ValueError, match="increasing order"):
        check_layers([2, 2], allowed=[2, 3, 4], default=4)
    with pytest.raises(ValueError, match=r"\[1\] have no score head.*\[2, 3, 4\]"):
        models["v2-minicpm-layerwise"].scores([[2, 5, 6]], cutoff_layers=[1])
    lightweight = models["v2.5-gemma2-lightweight"]
    with pytest.raises(ValueError, match="compress_ratio"):
        lightweight.scores([[2, 5, 6]], query_lengths=[1], prompt_lengths=[1], compress_ratio=0)
    with pytest.raises(ValueError, match="at least one token"):
        right_pad([[2, 5], []], 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="not a layer-wise"):
        load_layerwise_model("unused", "v2-gemma", config={}, dtype=torch.float32)


def test_a_checkpoint_without_some_weights_is_refused(decoder_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = decoder_dirs["v2.5-gemma2-lightweight"]
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.1.linear_head.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"lacks lm_head\.1\.linear_head\.weight"):
        load_layerwise_model(str(tmp_path), "v2.5-gemma2-lightweight", config=config, dtype=torch.float32)
