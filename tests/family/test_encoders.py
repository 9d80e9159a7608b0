"""The older encoder rerankers (bge-reranker-base, bge-reranker-large): the cross-encoder kind, with
the v2-m3 pair layout and 514 positions, so pairs of at most 512 tokens."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.testing import ModelShape, build_test_model
from tests.core.texts import LONG_PASSAGE, LONG_QUERY, PASSAGES, QUERIES

BASE_LIKE = ModelShape(max_position_embeddings=514)
"""bge-reranker-base/-large's position table (XLM-RoBERTa: 2 slots reserved), on the tiny shape."""


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("encoders") / "base-like", shape=BASE_LIKE)


def test_pairs_of_512_tokens_fit_and_longer_ones_are_refused(base_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_length=513 exceeds the model's limit of 512 tokens"):
        Reranker(base_dir, device="cpu", max_length=513).load()
    reranker = Reranker(base_dir, device="cpu")  # the default max_length, 512, is the limit
    ids = reranker.encode_pairs([(LONG_QUERY, LONG_PASSAGE)])
    assert len(ids[0]) == 512
    with pytest.raises(ValueError, match="exceeds the model's limit of 512 tokens"):
        reranker.score(QUERIES[0], PASSAGES[:2], max_length=1024)  # per call, as at construction
    assert len(reranker.score(QUERIES[0], [LONG_PASSAGE])) == 1


def test_scores_equal_flagrerankers(base_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from FlagEmbedding import FlagReranker

    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    def round_trips(text: str, limit: int) -> bool:  # FlagReranker re-tokenizes decoded ids
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]
        return bool(ids) and tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids

    candidates = [(q, p) for q in [*QUERIES, LONG_QUERY] for p in [*PASSAGES, LONG_PASSAGE]]
    pairs = [(q, p) for q, p in candidates if round_trips(q, 384) and round_trips(p, 512)]
    assert len(pairs) >= 20
    assert any(len(tokenizer(p)["input_ids"]) > 512 for _, p in pairs)  # cut at the model's limit
    reference = FlagReranker(str(base_dir), use_fp16=False, devices="cpu", batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [float(x) for x in reference.compute_score(pairs, max_length=512)]
    got = Reranker(base_dir, device="cpu").score_pairs(pairs)
    assert got == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 0.5  # the model really separates the pairs
