"""The public API: types, ordering, normalization, laziness, sharing and clear errors on bad input."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bge_rerank_integrations import ModelLoadError, Reranker, RerankerConfig, RerankResult
from bge_rerank_integrations.reranker import sigmoid

from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]


@pytest.fixture(scope="module")
def reranker(model_dir: Path) -> Reranker:
    return Reranker(model_dir, device="cpu").load()


def test_construction_is_lazy_and_import_is_light(model_dir: Path) -> None:
    assert not Reranker(model_dir).is_loaded
    heavy = "{'torch', 'transformers', 'llama_index', 'langchain_core'}"
    code = "import sys, bge_rerank_integrations as b; b.Reranker('x'); "
    code += f"print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_score_returns_plain_floats_in_input_order(reranker: Reranker) -> None:
    scores = reranker.score(QUERY, PASSAGES)
    assert len(scores) == len(PASSAGES)
    assert all(type(s) is float for s in scores)
    assert reranker.score(QUERY, PASSAGES[3:4]) == pytest.approx(scores[3:4], abs=1e-5)


def test_normalize_is_the_sigmoid_of_the_logit(model_dir: Path, reranker: Reranker) -> None:
    logits = reranker.score(QUERY, PASSAGES)
    probabilities = reranker.score(QUERY, PASSAGES, normalize=True)
    assert probabilities == pytest.approx([1 / (1 + math.exp(-x)) for x in logits], abs=1e-12)
    assert all(0.0 < p < 1.0 for p in probabilities)
    normalizing = Reranker(model_dir, device="cpu", normalize=True)
    assert normalizing.score(QUERY, PASSAGES) == pytest.approx(probabilities, abs=1e-6)
    assert normalizing.score(QUERY, PASSAGES, normalize=False) == pytest.approx(logits, abs=1e-5)


def test_sigmoid_is_stable_at_the_extremes() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(-1000.0) == 0.0
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-30.0) == pytest.approx(math.exp(-30.0), rel=1e-9)


def test_rank_is_best_first_stable_and_cut_to_top_n(reranker: Reranker) -> None:
    scores = reranker.score(QUERY, PASSAGES)
    ranked = reranker.rank(QUERY, PASSAGES)
    assert [r.index for r in ranked] == sorted(range(len(PASSAGES)), key=lambda i: -scores[i])
    assert [r.score for r in ranked] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)
    assert all(isinstance(r, RerankResult) for r in ranked)
    assert reranker.rank(QUERY, PASSAGES, top_n=3) == ranked[:3]
    assert len(reranker.rank(QUERY, PASSAGES, top_n=1000)) == len(PASSAGES)
    # Identical passages tie exactly; ties keep input order.
    tied = reranker.rank(QUERY, ["same text", "other", "same text", "same text"])
    same = [r.index for r in tied if r.index != 1]
    assert same == [0, 2, 3]


def test_duplicate_passages_are_scored_once_and_tie_exactly(model_dir: Path) -> None:
    reranker = Reranker(model_dir, device="cpu").load()
    before = reranker.stats
    passages = ["same text", "other", "same text", "third", "other"]
    scores = reranker.score(QUERY, passages)
    after = reranker.stats
    assert (after.pairs - before.pairs, after.forward_passes - before.forward_passes) == (3, 1)
    assert scores[0] == scores[2]
    assert scores[1] == scores[4]
    assert scores == pytest.approx(Reranker(model_dir, device="cpu").score(QUERY, passages), abs=1e-5)


def test_pairs_and_query_passages_agree(reranker: Reranker) -> None:
    pairs = [(q, p) for q in QUERIES for p in PASSAGES[:5]]
    by_pairs = reranker.score_pairs(pairs)
    by_query = [s for q in QUERIES for s in reranker.score(q, PASSAGES[:5])]
    assert by_pairs == pytest.approx(by_query, abs=1e-5)


def test_whitespace_is_kept_as_given(reranker: Reranker) -> None:
    # The reference does not strip; the tokenizer alone decides what whitespace means.
    a, b = reranker.score(QUERY, ["Paris is the capital", "Paris is the capital\n\n"])
    assert a == pytest.approx(b, abs=1e-5)  # this tokenizer splits on whitespace...
    tokens = reranker.encode_pairs([(QUERY, " Paris"), (QUERY, "Paris")])
    assert tokens[0] == tokens[1]  # ...and nothing is stripped before it sees the text


def test_empty_passages_return_empty_without_loading(model_dir: Path) -> None:
    lazy = Reranker(model_dir, device="cpu")
    assert lazy.score(QUERY, []) == []
    assert lazy.rank(QUERY, []) == []
    assert lazy.score_pairs([]) == []
    assert not lazy.is_loaded


def test_async_matches_sync_and_leaves_the_loop_free(reranker: Reranker) -> None:
    async def main() -> tuple[list[float], list[RerankResult], list[float], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        scores = await reranker.ascore(QUERY, PASSAGES * 20)
        ranked = await reranker.arank(QUERY, PASSAGES, top_n=2)
        pairs = await reranker.ascore_pairs([(QUERY, p) for p in PASSAGES])
        task.cancel()
        return scores, ranked, pairs, ticks

    scores, ranked, pairs, ticks = asyncio.run(main())
    assert scores == pytest.approx(reranker.score(QUERY, PASSAGES * 20), abs=1e-5)
    assert ranked == reranker.rank(QUERY, PASSAGES, top_n=2)
    assert pairs == pytest.approx(reranker.score(QUERY, PASSAGES), abs=1e-5)
    assert ticks > 3  # the event loop kept running while the model worked


def test_shared_gives_one_instance_per_settings(model_dir: Path) -> None:
    a = Reranker.shared(model_dir, device="cpu")
    assert Reranker.shared(str(model_dir), device="cpu") is a
    assert (
        Reranker.shared_from_config(RerankerConfig(model=str(model_dir), device="cpu", dtype="fp32")) is not a
    )
    assert Reranker.shared(model_dir, device="cpu", max_length=256) is not a


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r.score(None, ["a"]), TypeError, "query must be a str, got NoneType"),
        (lambda r: r.score(QUERY, ["a", 3]), TypeError, r"passages\[1\] must be a str, got int"),
        (lambda r: r.score(QUERY, "a passage"), TypeError, "passages must be a sequence of str"),
        (lambda r: r.score(QUERY, [b"bytes"]), TypeError, r"passages\[0\] must be a str"),
        (
            lambda r: r.score_pairs([("q", "p"), ("q",)]),
            TypeError,
            r"pairs\[1\] must be a \(query, passage\) pair",
        ),
        (lambda r: r.score_pairs([("q", None)]), TypeError, r"pairs\[0\]\[1\] must be a str"),
        (lambda r: r.rank(QUERY, ["a"], top_n=0), ValueError, "top_n must be >= 1, got 0"),
        (lambda r: r.rank(QUERY, ["a"], top_n=-2), ValueError, "top_n must be >= 1, got -2"),
        (lambda r: r.rank(QUERY, ["a"], top_n=1.5), TypeError, "top_n must be an int or None"),
    ],
)
def test_bad_input_gets_a_clear_error(reranker: Reranker, call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call(reranker)
    assert len(reranker.score(QUERY, ["still works"])) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_length": 8}, "max_length must be >= 16, got 8"),
        ({"max_length": 512, "query_max_length": 510}, "query_max_length must leave room"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be >= 1, got 0"),
        ({"dtype": "int4"}, "dtype must be one of"),
        ({"model": ""}, "model must be a non-empty"),
    ],
)
def test_bad_settings_fail_at_construction(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reranker(**settings)  # type: ignore[arg-type]


def test_dtype_aliases_are_canonical() -> None:
    assert RerankerConfig(dtype="bf16").dtype == "bfloat16"  # type: ignore[arg-type]
    assert RerankerConfig(dtype="fp16") == RerankerConfig(dtype="float16")  # type: ignore[arg-type]


def test_derived_lengths_follow_max_length_until_given() -> None:
    # None stays "derived", so overriding max_length (per call too) derives anew, as the reference does
    options = RerankerConfig(max_length=1024).scoring
    assert (options.query_max_length, options.resolved_query_max_length) == (None, 768)
    assert options.replace(max_length=2048).resolved_query_max_length == 1536
    assert options.replace(max_length=2048).resolved_window_overlap == 256
    given = RerankerConfig(max_length=1024, query_max_length=100).scoring
    assert given.replace(max_length=2048).resolved_query_max_length == 100
    with pytest.raises(TypeError, match="unknown setting maxlength"):
        options.replace(maxlength=10)


def test_max_length_beyond_the_model_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_length=9000 exceeds the model's limit of 8192 tokens"):
        Reranker(model_dir, device="cpu", max_length=9000).load()
    assert Reranker(model_dir, device="cpu", max_length=8192).load().is_loaded


def test_missing_model_gets_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder") as info:
        Reranker(tmp_path / "does-not-exist").load()
    assert "does-not-exist" in str(info.value)
    assert info.value.__cause__ is None  # refused before the hub library was called: nothing to chain

    with pytest.raises(ModelLoadError, match="could not load the reranker model 'BAAI/bge-reranker-v2-m3'"):
        Reranker(local_files_only=True, cache_dir=str(tmp_path)).load()


def test_a_folder_that_is_not_a_cross_encoder_is_refused(tmp_path: Path, model_dir: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "three-labels"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config["label2id"] = {"a": 0, "b": 1, "c": 2}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="exactly one relevance logit"):
        Reranker(folder, device="cpu").load()
