"""Scores and ids identical to the reference (FlagEmbedding's FlagReranker) in fp32.

Three proofs: the exact ids of hand-written pairs; a one-pair-at-a-time ``transformers`` forward
without padding on the id-level construction for every kind of pair; and FlagEmbedding itself on the
pairs whose ids survive its decode-and-re-tokenize round trip under transformers 5.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.tokenization import PairEncoder

from .texts import LONG_ALIGNED_PASSAGE, LONG_PASSAGE, LONG_QUERY, PASSAGES, QUERIES

ATOL = 1e-4


def reference_ids(tokenizer, query: str, passage: str, max_length: int, query_max_length: int) -> list[int]:
    """FlagReranker's construction (transformers 4 path), written out from its source.

    Query and passage tokenized alone without special tokens, cut to query_max_length and
    max_length, then ``prepare_for_model(q, p, truncation="only_second", max_length=max_length)``.
    """
    q = tokenizer(query, add_special_tokens=False, truncation=True, max_length=query_max_length)["input_ids"]
    p = tokenizer(passage, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    overflow = len(q) + len(p) + 4 - max_length
    if overflow > 0:
        p = p[: len(p) - overflow]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    return [cls, *q, sep, sep, *p, sep]


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def hf_model(model_dir: Path):
    return AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()


def all_pairs() -> list[tuple[str, str]]:
    pairs = list(itertools.product(QUERIES, PASSAGES))
    pairs += [(LONG_QUERY, p) for p in PASSAGES[:4]]
    pairs += [(q, LONG_PASSAGE) for q in QUERIES]
    pairs.append((LONG_QUERY, LONG_PASSAGE))
    return pairs


def test_exact_ids_of_hand_written_pairs(tokenizer) -> None:
    encoder = PairEncoder.from_transformers(tokenizer, max_length=16, query_max_length=6)

    def tokens(query: str, passage: str) -> list[str]:
        (ids,) = encoder.encode([(query, passage)])
        return tokenizer.convert_ids_to_tokens(ids)

    assert tokens("the capital", "Paris") == [
        "<s>",
        "▁",
        "the",
        "▁capital",
        "</s>",
        "</s>",
        "▁P",
        "ar",
        "is",
        "</s>",
    ]
    # An empty passage keeps its separators: <s> Q </s></s></s>, as prepare_for_model builds it.
    assert tokens("the capital", "") == ["<s>", "▁", "the", "▁capital", "</s>", "</s>", "</s>"]
    # The query is cut to query_max_length (6); the passage fills the rest of max_length (16).
    assert tokens("a b c a b c a b c", "Paris Paris Paris") == (
        ["<s>", *["▁a", "▁b", "▁c"] * 2, "</s>", "</s>", *["▁P", "ar", "is"] * 2, "</s>"]
    )
    # Characters outside the training alphabets become <unk>, like rare symbols with the real vocab.
    assert tokens("x😀y", "北京") == ["<s>", "▁", "x", "<unk>", "y", "</s>", "</s>", "▁", "北", "京", "</s>"]


@pytest.mark.parametrize(
    ("max_length", "query_max_length"), [(512, None), (64, None), (128, 100), (1024, None)]
)
def test_ids_match_reference_construction(tokenizer, max_length: int, query_max_length: int | None) -> None:
    qml = query_max_length or max_length * 3 // 4
    encoder = PairEncoder.from_transformers(tokenizer, max_length=max_length, query_max_length=qml)
    pairs = all_pairs()
    expected = [reference_ids(tokenizer, q, p, max_length, qml) for q, p in pairs]
    assert encoder.encode(pairs) == expected
    assert max(len(ids) for ids in expected) == max_length  # the long cases really were truncated


def test_scores_match_unpadded_single_pair_forward(model_dir: Path, tokenizer, hf_model) -> None:
    pairs = all_pairs()
    with torch.inference_mode():
        expected = [
            hf_model(input_ids=torch.tensor([reference_ids(tokenizer, q, p, 512, 384)])).logits[0, 0].item()
            for q, p in pairs
        ]
    got = Reranker(model_dir, device="cpu").score_pairs(pairs)
    assert all(type(s) is float for s in got)
    assert got == pytest.approx(expected, abs=ATOL)
    assert max(expected) - min(expected) > 0.5  # the model really separates pairs


def test_scores_match_flagembedding_on_round_tripping_pairs(model_dir: Path, tokenizer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from FlagEmbedding import FlagReranker

    def round_trips(text: str, limit: int) -> bool:
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
        return bool(ids) and tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids

    candidates = [*all_pairs(), *((q, LONG_ALIGNED_PASSAGE) for q in [*QUERIES, LONG_QUERY])]
    pairs = [(q, p) for q, p in candidates if round_trips(q, 384) and round_trips(p, 512)]
    assert len(pairs) >= 40  # long queries and passages included, not a vacuous subset
    assert any(len(q) > 1000 for q, _ in pairs)
    assert any(len(p) > 1000 for _, p in pairs)

    reference = FlagReranker(str(model_dir), use_fp16=False, devices="cpu", batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [float(x) for x in reference.compute_score(pairs)]
        expected_normalized = [float(x) for x in reference.compute_score(pairs, normalize=True)]
    reranker = Reranker(model_dir, device="cpu")
    assert reranker.score_pairs(pairs) == pytest.approx(expected, abs=ATOL)
    assert reranker.score_pairs(pairs, normalize=True) == pytest.approx(expected_normalized, abs=ATOL)
