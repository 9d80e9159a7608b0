"""Per-call scoring options: ``rr.score(q, ps, max_length=...)`` scores as a reranker built with them,
on the same model; concurrent calls with different options each get their own scores; a batch only
mixes requests whose options are equal, and none waits behind newer ones."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.scheduler import BatchScheduler

from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]
LONG = [" ".join(PASSAGES) * 3, *PASSAGES[:6]]  # one passage past every max_length below

OPTIONS: dict[str, dict[str, Any]] = {
    "max_length": {"max_length": 64},
    "query_max_length": {"max_length": 96, "query_max_length": 12},
    "window": {"max_length": 64, "long_passages": "window", "window_overlap": 8, "max_windows": 4},
    "max_batch_tokens": {"max_batch_tokens": 200},
}


@pytest.fixture(scope="module")
def reranker(model_dir: Path) -> Reranker:
    return Reranker(model_dir, device="cpu", max_length=128)


@pytest.fixture(scope="module")
def built(model_dir: Path) -> dict[str, list[float]]:
    """The scores of rerankers built with each set of options."""
    scores = {}
    for name, options in OPTIONS.items():
        with Reranker(model_dir, device="cpu", **{"max_length": 128, **options}) as rr:
            scores[name] = rr.score(QUERY, LONG)
    return scores


@pytest.mark.parametrize("name", list(OPTIONS))
def test_per_call_options_score_as_a_reranker_built_with_them(
    reranker: Reranker, built: dict[str, list[float]], name: str
) -> None:
    default = reranker.score(QUERY, LONG)
    assert reranker.score(QUERY, LONG, **OPTIONS[name]) == built[name]
    assert reranker.score_pairs([(QUERY, p) for p in LONG], **OPTIONS[name]) == built[name]
    ranked = reranker.rank(QUERY, LONG, top_n=3, **OPTIONS[name])
    assert [r.score for r in ranked] == sorted(built[name], reverse=True)[:3]
    if name != "max_batch_tokens":  # the budget changes only how pairs are batched
        assert built[name] != pytest.approx(default, abs=1e-4)  # the option really scores differently
    assert reranker.score(QUERY, LONG) == default  # the call's options were its own


@pytest.mark.asyncio
async def test_async_calls_take_options_too(reranker: Reranker, built: dict[str, list[float]]) -> None:
    options = OPTIONS["window"]
    assert await reranker.ascore(QUERY, LONG, **options) == built["window"]
    assert await reranker.ascore_pairs([(QUERY, p) for p in LONG], **options) == built["window"]
    ranked = await reranker.arank(QUERY, LONG, **options)
    assert sorted(r.score for r in ranked) == sorted(built["window"])


def test_concurrent_calls_with_different_options_each_get_their_own_scores(
    reranker: Reranker, built: dict[str, list[float]]
) -> None:
    names = [*OPTIONS, None] * 6

    def call(name: str | None) -> list[float]:
        return reranker.score(QUERY, LONG, **(OPTIONS[name] if name else {}))

    default = reranker.score(QUERY, LONG)
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(call, names))
    for name, got in zip(names, results, strict=True):
        assert got == pytest.approx(built[name] if name else default, abs=1e-5)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_length": 8}, ValueError, "max_length must be >= 16, got 8"),
        ({"long_passages": "chunk"}, ValueError, "long_passages must be 'truncate' or 'window'"),
        ({"max_batch_tokens": "many"}, TypeError, "max_batch_tokens must be an int, got str"),
        ({"query_max_length": 200}, ValueError, "query_max_length must leave room"),
        ({"maxlength": 64}, TypeError, "unknown setting maxlength"),
        ({"model": "other"}, TypeError, "unknown setting model"),
    ],
)
def test_a_bad_option_is_a_clear_error_before_anything_is_queued(
    model_dir: Path, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    rr = Reranker(model_dir, device="cpu", max_length=128)
    with pytest.raises(error, match=message):
        rr.score(QUERY, PASSAGES[:2], **options)
    with pytest.raises(error, match=message):
        rr.rank(QUERY, PASSAGES[:2], **options)
    assert not rr.is_loaded  # refused before the call reached the queue (which would load the model)


def test_a_max_length_beyond_the_model_per_call_fails_only_that_call(reranker: Reranker) -> None:
    with pytest.raises(ValueError, match="max_length=9000 exceeds the model's limit of 8192 tokens"):
        reranker.score(QUERY, PASSAGES[:2], max_length=9000)
    assert len(reranker.score(QUERY, PASSAGES[:2])) == 2


def test_a_remote_reranker_refuses_windows_per_call_as_at_construction() -> None:
    rr = Reranker(backend="tei", base_url="http://127.0.0.1:9")  # never contacted
    with pytest.raises(ValueError, match="long_passages='window' needs backend='local'"):
        rr.score(QUERY, PASSAGES[:2], long_passages="window")
    assert not rr.is_loaded


# --- the queue: batches of equal options, oldest first --------------------------------------------


class Recording:
    """A replica that records each batch's pairs and options, and waits at a gate on the first."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[tuple[str, str]]]] = []
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, pairs: list[tuple[str, str]], options: Hashable) -> list[float]:
        self.batches.append((options, list(pairs)))
        self.started.set()
        assert self.gate.wait(30)
        return [float(len(p)) + (1000.0 if options == "b" else 0.0) for _, p in pairs]


def test_a_batch_mixes_only_equal_options_and_the_oldest_request_leads() -> None:
    replica = Recording()
    scheduler: BatchScheduler[str] = BatchScheduler([replica])
    blocker = scheduler.submit([("q", "warm up")], "a")
    assert replica.started.wait(30)
    order = ["b", "a", "b", "c", "a", "b"]
    futures = [scheduler.submit([("q", f"{name} {i}"), ("q", "same")], name) for i, name in enumerate(order)]
    replica.gate.set()
    for i, (name, future) in enumerate(zip(order, futures, strict=True)):
        offset = 1000.0 if name == "b" else 0.0
        assert future.result(timeout=30) == [len(f"{name} {i}") + offset, len("same") + offset]
    blocker.result(timeout=30)
    batches = replica.batches[1:]
    # one batch per options, in the order of each one's oldest request, each holding all of its own
    assert [options for options, _ in batches] == ["b", "a", "c"]
    for options, pairs in batches:
        mine = [i for i, name in enumerate(order) if name == options]
        assert pairs == [*(("q", f"{options} {i}") for i in mine[:1]), ("q", "same")] + [
            ("q", f"{options} {i}") for i in mine[1:]
        ]
