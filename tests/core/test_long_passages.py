"""Opt-in windowed scoring of passages longer than max_length; the default stays the reference's cut."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.tokenization import PairEncoder

from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]
FILLER = "Water boils at one hundred degrees Celsius at sea level. " * 40
NEEDLE = "Paris is the capital of France and its most populous city."


def test_short_passages_score_the_same_in_both_modes(model_dir: Path) -> None:
    truncating = Reranker(model_dir, device="cpu", max_length=128)
    windowing = Reranker(model_dir, device="cpu", max_length=128, long_passages="window")
    assert windowing.score(QUERY, PASSAGES) == pytest.approx(truncating.score(QUERY, PASSAGES), abs=1e-5)


def test_windows_cover_the_whole_passage_with_the_given_overlap(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = PairEncoder.from_transformers(tokenizer, max_length=64, query_max_length=16)
    passage_ids = tokenizer(FILLER + NEEDLE, add_special_tokens=False)["input_ids"]
    query_ids = tokenizer(QUERY, add_special_tokens=False)["input_ids"][:16]
    room = 64 - 4 - len(query_ids)
    windows, owners = encoder.encode_windows(
        [(QUERY, FILLER + NEEDLE), (QUERY, "short")], overlap=8, max_windows=1000
    )
    assert owners.count(1) == 1
    pieces = [w[len(query_ids) + 3 : -1] for w, o in zip(windows, owners, strict=True) if o == 0]
    assert all(len(w) <= 64 for w in windows)
    assert pieces[0] == passage_ids[:room]
    assert pieces[-1][-1] == passage_ids[-1]  # the end of the passage is scored
    for a, b in itertools.pairwise(pieces):
        assert a[-8:] == b[:8]  # consecutive windows share `overlap` tokens
    rebuilt = pieces[0] + [t for piece in pieces[1:] for t in piece[8:]]
    assert rebuilt == passage_ids

    capped, _ = encoder.encode_windows([(QUERY, FILLER + NEEDLE)], overlap=8, max_windows=3)
    assert len(capped) == 3
    assert capped == windows[:3]


def test_a_passage_scores_as_its_best_window(model_dir: Path) -> None:
    long_passage = FILLER + NEEDLE
    reranker = Reranker(model_dir, device="cpu", max_length=64, long_passages="window", window_overlap=8)
    (windowed,) = reranker.score(QUERY, [long_passage])

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoder = PairEncoder.from_transformers(tokenizer, max_length=64, query_max_length=48)
    windows, _ = encoder.encode_windows([(QUERY, long_passage)], overlap=8, max_windows=16)
    with torch.inference_mode():
        per_window = [model(input_ids=torch.tensor([w])).logits[0, 0].item() for w in windows]
    assert len(windows) > 3
    assert windowed == pytest.approx(max(per_window), abs=1e-4)

    (truncated,) = Reranker(model_dir, device="cpu", max_length=64).score(QUERY, [long_passage])
    assert truncated == pytest.approx(per_window[0], abs=1e-4)  # the default only sees the start


def test_window_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="window_overlap"):
        Reranker(max_length=64, long_passages="window", window_overlap=12)
    with pytest.raises(ValueError, match="long_passages must be 'truncate' or 'window'"):
        Reranker(long_passages="chunk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs backend='local'"):
        Reranker(long_passages="window", backend="tei", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="max_windows must be >= 1"):
        Reranker(long_passages="window", max_windows=0)
