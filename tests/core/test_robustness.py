"""Whatever text a retriever finds gets a defined result or a clear error, and the core keeps serving."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bge_rerank_integrations import Reranker, RerankError

from .seams import cross_encoder
from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]


@pytest.fixture(scope="module")
def reranker(model_dir: Path) -> Reranker:
    return Reranker(model_dir, device="cpu", max_length=128).load()


# Any code point, lone surrogates and control characters included.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=any_text, passages=st.lists(any_text, max_size=8))
def test_any_unicode_gets_finite_scores_in_input_order(
    reranker: Reranker, query: str, passages: list[str]
) -> None:
    scores = reranker.score(query, passages)
    assert len(scores) == len(passages)
    assert all(type(s) is float and math.isfinite(s) for s in scores)
    for passage, score in zip(passages, scores, strict=True):
        assert reranker.score(query, [passage])[0] == pytest.approx(score, abs=1e-5, rel=1e-5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\t\n\r",
        "emoji 😀👍🏽 family 👨‍👩‍👧",
        "مرحبا بالعالم، هذا نص من اليمين إلى اليسار",
        "שלום עולם",
        "中文文本和日本語のテキストと한국어 텍스트",
        "control \x00 NUL \x01\x02\x1b[31m escape \x7f",
        "lone \ud800 surrogate \udfff here",
        "\u202e\u200f\u200b bidi and zero-width",
    ],
)
def test_awkward_text_is_scored(reranker: Reranker, text: str) -> None:
    (alone,) = reranker.score(text, [text])
    assert math.isfinite(alone)
    scores = reranker.score(QUERY, [text, *PASSAGES[:3]])
    assert scores[0] == pytest.approx(reranker.score(QUERY, [text])[0], abs=1e-5, rel=1e-5)


def test_lone_surrogates_score_like_the_replacement_character(reranker: Reranker) -> None:
    assert reranker.score(QUERY, ["a\ud800b"]) == reranker.score(QUERY, ["a\ufffdb"])


def test_a_one_megabyte_passage_is_truncated_like_any_other(reranker: Reranker) -> None:
    head = PASSAGES[0] + " "
    huge = head * (1_000_000 // len(head))
    assert len(huge) > 900_000
    (long_score,) = reranker.score(QUERY, [huge])
    assert long_score == pytest.approx(reranker.score(QUERY, [head * 40])[0], abs=1e-5, rel=1e-5)


def test_ten_thousand_passages_in_one_call(reranker: Reranker) -> None:
    passages = [f"{PASSAGES[i % len(PASSAGES)]} #{i}" for i in range(10_000)]
    scores = reranker.score(QUERY, passages)
    assert len(scores) == 10_000
    for i in (0, 4321, 9999):
        assert scores[i] == pytest.approx(reranker.score(QUERY, [passages[i]])[0], abs=1e-5, rel=1e-5)


def test_duplicates_keep_their_places(reranker: Reranker) -> None:
    passages = [PASSAGES[0], PASSAGES[1], PASSAGES[0], PASSAGES[0], PASSAGES[1]]
    scores = reranker.score(QUERY, passages)
    assert scores[0] == scores[2] == scores[3]
    assert scores[1] == scores[4]
    assert [r.index for r in reranker.rank(QUERY, passages) if passages[r.index] == PASSAGES[0]] == [0, 2, 3]


def test_nan_from_a_broken_model_is_a_clear_error_and_the_core_recovers(model_dir: Path) -> None:
    reranker = Reranker(model_dir, device="cpu").load()
    healthy = reranker.score(QUERY, PASSAGES[:3])
    classifier = cross_encoder(reranker).module.classifier.out_proj
    saved = classifier.bias.detach().clone()
    with torch.no_grad():
        classifier.bias.fill_(float("nan"))
    try:
        with pytest.raises(RerankError, match="returned NaN for 3 of 3 pairs"):
            reranker.score(QUERY, PASSAGES[:3])
    finally:
        with torch.no_grad():
            classifier.bias.copy_(saved)
    assert reranker.score(QUERY, PASSAGES[:3]) == healthy


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_does_not_grow_across_a_thousand_calls(model_dir: Path, dtype: str) -> None:
    reranker = Reranker(model_dir, device="cpu", max_length=128, dtype=dtype).load()
    for _ in range(100):  # warm up allocator pools and caches
        reranker.score(QUERY, PASSAGES)
    gc.collect()
    before = _rss_bytes()
    for i in range(1000):
        reranker.score(QUERIES[i % len(QUERIES)], PASSAGES[i % 7 :])
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 32 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 1000 calls"
