"""A soak on the tiny model: thousands of calls of random sizes from threads and asyncio tasks at once,
some cancelled or timed out mid-way, every completed call exact and the queue still serving after.

"Exact" is the batch-invariance bound of test_batching.py: each score within 1e-5 (absolute, or
relative above 1) of the same pair scored alone. The longer soak that reports thread count and
resident memory over time is ``python -m benchmarks.soak`` (see RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker

from .texts import LONG_PASSAGE, PASSAGES, QUERIES

pytestmark = pytest.mark.slow

THREADS = 4
THREAD_CALLS = 400  # each
TASKS = 16
TASK_CALLS = 100  # each: 3200 calls in all
MAX_PASSAGES = 16

Pair = tuple[str, str]


def make_pool(seed: int = 0) -> list[str]:
    """Distinct passages of random lengths, from empty to past ``max_length``."""
    rng = random.Random(seed)
    texts = [*PASSAGES, LONG_PASSAGE]
    return sorted({rng.choice(texts)[: rng.randint(0, 700)] for _ in range(160)})


def random_pairs(rng: random.Random, pool: list[str]) -> list[Pair]:
    """One call's pairs: one query, or (a third of the time) several queries mixed."""
    count = rng.randint(0, MAX_PASSAGES)
    if rng.random() < 1 / 3:
        return [(rng.choice(QUERIES), rng.choice(pool)) for _ in range(count)]
    query = rng.choice(QUERIES)
    return [(query, rng.choice(pool)) for _ in range(count)]


def test_thousands_of_random_calls_with_cancellations_are_exact(model_dir: Path) -> None:
    reranker = Reranker(model_dir, device="cpu", max_length=128, max_batch_tokens=2048).load()
    pool = make_pool()
    reranker.score(QUERIES[0], pool[:8])  # warm-up: the worker thread starts
    threads_after_warm_up = threading.active_count()

    done: list[tuple[list[Pair], list[float]]] = []
    lock = threading.Lock()

    def keep(pairs: list[Pair], scores: list[float]) -> None:
        with lock:
            done.append((pairs, scores))

    def thread_caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(THREAD_CALLS):
            pairs = random_pairs(rng, pool)
            keep(pairs, reranker.score_pairs(pairs))

    outcomes = {"completed": 0, "cancelled": 0, "timed out": 0}

    async def task_caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(TASK_CALLS):
            pairs = random_pairs(rng, pool)
            how = rng.random()
            if how < 0.15:  # cancelled after a random short while: queued, running, or already done
                task = asyncio.ensure_future(reranker.ascore_pairs(pairs))
                await asyncio.sleep(rng.uniform(0, 0.004))
                task.cancel()
                try:
                    scores = await task
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                    continue
            elif how < 0.3:  # a deadline the call may or may not meet
                try:
                    scores = await asyncio.wait_for(reranker.ascore_pairs(pairs), rng.uniform(0, 0.01))
                except TimeoutError:
                    outcomes["timed out"] += 1
                    continue
            else:
                scores = await reranker.ascore_pairs(pairs)
            outcomes["completed"] += 1
            keep(pairs, scores)

    async def tasks() -> None:
        await asyncio.gather(*(task_caller(1000 + n) for n in range(TASKS)))

    callers = [threading.Thread(target=thread_caller, args=(n,)) for n in range(THREADS)]
    callers.append(threading.Thread(target=asyncio.run, args=(tasks(),)))
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()

    assert len(done) == THREADS * THREAD_CALLS + outcomes["completed"]
    assert min(outcomes.values()) > 0, outcomes  # every path was taken
    distinct = sorted({pair for pairs, _ in done for pair in pairs})
    alone = {pair: reranker.score_pairs([pair])[0] for pair in distinct}
    for pairs, scores in done:
        assert scores == pytest.approx([alone[p] for p in pairs], abs=1e-5, rel=1e-5)
    assert len(set(alone.values())) > len(alone) // 2  # the model tells pairs apart: a mix-up would show

    # The queue still serves, and no thread was left behind by the cancelled calls.
    after = [reranker.score_pairs([(QUERIES[1], p)])[0] for p in pool[:3]]
    assert reranker.score(QUERIES[1], pool[:3]) == pytest.approx(after, abs=1e-5, rel=1e-5)
    assert threading.active_count() <= threads_after_warm_up
