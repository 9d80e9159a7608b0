"""Cross-request batching: shared forward passes, each caller gets exactly its own scores back."""

from __future__ import annotations

import asyncio
import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker, RerankError
from bge_rerank_integrations.backends.queued import QueuedEngine
from bge_rerank_integrations.scheduler import BatchScheduler

from .texts import PASSAGES, QUERIES


class SlowFakeModel:
    """Scores a pair as a function of its text, slowly, recording every batch it is given."""

    def __init__(self, delay: float = 0.02, fail_on: str | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[tuple[str, str]]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()

    def __call__(self, pairs: list[tuple[str, str]], options: object = None) -> list[float]:
        with self.lock:
            self.batches.append(list(pairs))
        self.started.set()
        threading.Event().wait(self.delay)
        if self.fail_on is not None and any(self.fail_on in p for _, p in pairs):
            raise RuntimeError(f"model broke on {self.fail_on!r}")
        return [float(len(q) * 1000 + len(p)) for q, p in pairs]


def expected(pairs: list[tuple[str, str]]) -> list[float]:
    return [float(len(q) * 1000 + len(p)) for q, p in pairs]


def requests(n: int) -> list[list[tuple[str, str]]]:
    return [[(f"query {i}", "x" * j) for j in range(i % 7 + 1)] for i in range(n)]


def test_concurrent_requests_share_batches_and_get_their_own_scores() -> None:
    model = SlowFakeModel()
    scheduler = BatchScheduler([model])
    reqs = requests(32)
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda r: scheduler.submit(r, None).result(timeout=30), reqs))
    assert results == [expected(r) for r in reqs]
    assert len(model.batches) < len(reqs) / 2  # coalesced into a few shared forward passes
    assert sorted(p for b in model.batches for p in b) == sorted(p for r in reqs for p in r)


def test_identical_pairs_across_requests_are_scored_once() -> None:
    model = SlowFakeModel(delay=0.05)
    scheduler = BatchScheduler([model])
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    futures = [scheduler.submit([("q", "same"), ("q", f"own {i}")], None) for i in range(5)]
    assert [f.result(timeout=30) for f in futures] == [
        expected([("q", "same"), ("q", f"own {i}")]) for i in range(5)
    ]
    blocker.result(timeout=30)
    assert model.batches[1].count(("q", "same")) == 1


def test_a_failing_request_fails_alone_with_its_own_error() -> None:
    model = SlowFakeModel(delay=0.05, fail_on="poison")
    scheduler = BatchScheduler([model])
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    good = [scheduler.submit([("q", f"fine {i}")], None) for i in range(4)]
    bad = scheduler.submit([("q", "poison pill")], None)
    with pytest.raises(RuntimeError, match="model broke on 'poison'"):
        bad.result(timeout=30)
    assert [f.result(timeout=30) for f in good] == [expected([("q", f"fine {i}")]) for i in range(4)]
    blocker.result(timeout=30)
    assert scheduler.submit([("q", "after")], None).result(timeout=30) == expected([("q", "after")])


def test_a_request_cancelled_before_its_batch_is_never_scored() -> None:
    model = SlowFakeModel(delay=0.1)
    scheduler = BatchScheduler([model])
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    cancelled = scheduler.submit([("q", "cancelled")], None)
    kept = scheduler.submit([("q", "kept")], None)
    assert cancelled.cancel()
    assert kept.result(timeout=30) == expected([("q", "kept")])
    blocker.result(timeout=30)
    assert all(("q", "cancelled") not in batch for batch in model.batches)


def test_max_wait_gathers_a_burst_into_one_batch() -> None:
    model = SlowFakeModel(delay=0.0)
    scheduler = BatchScheduler([model], max_wait=0.2, max_pairs=10**6)
    futures = [scheduler.submit([("q", str(i))], None) for i in range(10)]
    assert [f.result(timeout=30) for f in futures] == [expected([("q", str(i))]) for i in range(10)]
    assert len(model.batches) == 1


def test_a_replica_with_a_cap_of_one_pair_takes_one_request_at_a_time() -> None:
    model = SlowFakeModel(delay=0.05)
    scheduler = BatchScheduler([model], max_pairs=[lambda _: 1])
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    reqs = requests(6)
    futures = [scheduler.submit(r, None) for r in reqs]  # all queued while the first pass runs
    assert [f.result(timeout=30) for f in futures] == [expected(r) for r in reqs]
    blocker.result(timeout=30)
    assert model.batches[1:] == reqs  # one request per pass, in arrival order


def test_the_cap_is_read_again_for_every_batch() -> None:
    model = SlowFakeModel(delay=0.05)
    caps = iter([1, 1, 10**6])
    scheduler = BatchScheduler([model], max_pairs=[lambda _: next(caps, 10**6)])
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    reqs = [[("q", f"request {i}")] for i in range(5)]
    futures = [scheduler.submit(r, None) for r in reqs]  # all queued while the first pass runs
    assert [f.result(timeout=30) for f in futures] == [expected(r) for r in reqs]
    blocker.result(timeout=30)
    assert model.batches[1:] == [reqs[0], [p for r in reqs[1:] for p in r]]  # cap 1, then unbounded


def test_max_pairs_must_fit_the_replicas() -> None:
    with pytest.raises(ValueError, match="1 entries for 2 replicas"):
        BatchScheduler([SlowFakeModel(), SlowFakeModel()], max_pairs=[lambda _: 8])
    with pytest.raises(ValueError, match="positive"):
        BatchScheduler([SlowFakeModel()], max_pairs=0)
    with pytest.raises(TypeError, match="one function per replica"):
        BatchScheduler([SlowFakeModel()], max_pairs=[8])  # type: ignore[list-item]


def test_several_replicas_share_one_queue() -> None:
    models = [SlowFakeModel(delay=0.02), SlowFakeModel(delay=0.02)]
    scheduler = BatchScheduler(models, max_pairs=3)
    reqs = requests(40)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda r: scheduler.submit(r, None).result(timeout=30), reqs))
    assert results == [expected(r) for r in reqs]
    assert all(m.batches for m in models)  # both replicas did work


# --- on the real model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workload() -> list[tuple[str, list[str]]]:
    return [(QUERIES[i % len(QUERIES)], PASSAGES[i % 5 : i % 5 + 1 + i % 9]) for i in range(50)]


def test_threads_hammering_one_shared_core_match_serial_calls(model_dir: Path, workload) -> None:
    reranker = Reranker(model_dir, device="cpu", max_length=128)
    serial = [reranker.score(q, p) for q, p in workload]
    calls = [workload[(t * 7 + k) % len(workload)] for t in range(16) for k in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda c: reranker.score(*c), calls))
    by_request = {id(c): s for c, s in zip(workload, serial, strict=True)}
    for call, got in zip(calls, results, strict=True):
        assert got == pytest.approx(by_request[id(call)], abs=1e-5, rel=1e-5)


def test_two_hundred_asyncio_tasks_match_serial_calls(model_dir: Path, workload) -> None:
    reranker = Reranker(model_dir, device="cpu", max_length=128)
    serial = [reranker.score(q, p, normalize=True) for q, p in workload]
    calls = [workload[i % len(workload)] for i in range(200)]

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(reranker.ascore(q, p, normalize=True) for q, p in calls))

    results = asyncio.run(main())
    for i, got in enumerate(results):
        assert got == pytest.approx(serial[i % len(workload)], abs=1e-5)


def test_cancelled_and_timed_out_tasks_do_not_poison_others(model_dir: Path, workload) -> None:
    reranker = Reranker(model_dir, device="cpu", max_length=128).load()
    serial = [reranker.score(q, p) for q, p in workload]

    async def main() -> list[object]:
        tasks = [asyncio.create_task(reranker.ascore(q, p)) for q, p in workload]
        for task in tasks[::3]:
            task.cancel()
        timed = asyncio.wait_for(reranker.ascore(QUERIES[0], PASSAGES * 50), timeout=0.001)
        return await asyncio.gather(*tasks, timed, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[-1], TimeoutError)
    for i, got in enumerate(results[:-1]):
        if i % 3 == 0:
            assert isinstance(got, asyncio.CancelledError)
        else:
            assert got == pytest.approx(serial[i], abs=1e-5, rel=1e-5)
    assert reranker.score(*workload[0]) == pytest.approx(serial[0], abs=1e-5, rel=1e-5)


def test_on_cpu_queued_requests_share_a_pass_only_up_to_one_cpu_chunk(model_dir: Path, workload) -> None:
    # Two cores are saturated by about 2k tokens: grouping more small requests into one pass would
    # only make the first of them wait for the last (benchmarks/RESULTS.md, cross-request batching).
    reranker = Reranker(model_dir, device="cpu", max_length=128).load()
    calls = [(QUERIES[0], [f"{PASSAGES[i % 5]} {i} {j}" for j in range(10)]) for i in range(8)]
    before = reranker.stats.forward_passes
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: reranker.score(*c), calls))
    assert reranker.stats.forward_passes - before >= 4  # at most two 10-pair requests per pass
    for call, got in zip(calls, results, strict=True):
        assert got == pytest.approx(reranker.score(*call), abs=1e-5, rel=1e-5)


def test_a_list_of_devices_runs_one_replica_per_device(model_dir: Path, workload) -> None:
    single = Reranker(model_dir, device="cpu", max_length=128)
    replicated = Reranker(model_dir, device=["cpu", "cpu"], max_length=128, max_batch_tokens=512)
    assert replicated.config.device == ("cpu", "cpu")
    assert not replicated.is_loaded
    calls = [workload[i % len(workload)] for i in range(60)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda c: replicated.score(*c), calls))
    assert isinstance(replicated.engine, QueuedEngine)
    assert len(replicated.engine.backends) == 2
    assert replicated.is_loaded  # each replica loads on its first batch: both took work
    for call, got in zip(calls, results, strict=True):
        assert got == pytest.approx(single.score(*call), abs=1e-5, rel=1e-5)


# --- lifetime and faults that are not exceptions -----------------------------------------------


class Panic(BaseException):
    """Like pyo3's ``PanicException`` (a Rust panic in the tokenizer): not an ``Exception``."""


def _workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("bge-rerank-worker")}


def test_a_base_exception_in_a_shared_batch_reaches_only_its_caller_and_the_worker_lives_on() -> None:
    def score(pairs: list[tuple[str, str]], options: None) -> list[float]:
        batches.append(len(pairs))
        for _, passage in pairs:
            if passage == "interrupt":
                raise KeyboardInterrupt
            if passage == "panic":
                raise Panic("tokenizer panicked")
        return model(pairs)

    batches: list[int] = []
    model = SlowFakeModel(delay=0.05)
    scheduler = BatchScheduler([score])
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    good = [scheduler.submit([("q", f"fine {i}")], None) for i in range(3)]
    interrupted = scheduler.submit([("q", "interrupt")], None)
    panicked = scheduler.submit([("q", "panic")], None)
    with pytest.raises(KeyboardInterrupt):
        interrupted.result(timeout=30)
    with pytest.raises(Panic, match="tokenizer panicked"):
        panicked.result(timeout=30)
    assert [f.result(timeout=30) for f in good] == [expected([("q", f"fine {i}")]) for i in range(3)]
    blocker.result(timeout=30)
    assert batches[1] == 5  # the five requests queued behind the blocker shared one batch
    assert scheduler.submit([("q", "after")], None).result(timeout=30) == expected([("q", "after")])


def test_a_scheduler_nobody_references_ends_its_workers() -> None:
    before = _workers()
    scheduler = BatchScheduler([SlowFakeModel(delay=0.0), SlowFakeModel(delay=0.0)])
    assert scheduler.submit([("q", "a")], None).result(timeout=30) == expected([("q", "a")])
    started = _workers() - before
    assert len(started) == 2
    del scheduler
    gc.collect()
    for worker in started:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in started)


def test_close_serves_the_queued_requests_then_refuses_new_ones() -> None:
    model = SlowFakeModel(delay=0.05)
    scheduler = BatchScheduler([model])
    before = _workers()
    blocker = scheduler.submit([("warm", "up")], None)
    model.started.wait(5)
    queued = [scheduler.submit([("q", f"queued {i}")], None) for i in range(3)]
    started = _workers() - before
    scheduler.close()  # returns once the workers have ended
    assert all(f.done() for f in [blocker, *queued])
    assert [f.result() for f in queued] == [expected([("q", f"queued {i}")]) for i in range(3)]
    assert started
    assert not any(worker.is_alive() for worker in started)
    with pytest.raises(RerankError, match="closed"):
        scheduler.submit([("q", "late")], None)
    scheduler.close()  # idempotent


def test_run_on_runs_work_on_that_replicas_worker_before_its_waiting_requests() -> None:
    """``run_on`` is how a reranker loads its model on the thread that will compute its passes."""
    threads: dict[str, str] = {}
    order: list[str] = []

    def score(pairs: list[tuple[str, str]], options: object = None) -> list[float]:
        order.append("scored")
        return [0.0] * len(pairs)

    def work(name: str) -> None:
        threads[name] = threading.current_thread().name
        order.append(name)

    two = BatchScheduler([score, score])  # type: ignore[list-item]
    try:
        two.run_on(1, lambda: work("second")).result(timeout=5)
        two.run_on(0, lambda: work("first")).result(timeout=5)
        assert threads["second"] != threads["first"]  # each replica's own worker
        assert threading.current_thread().name not in (threads["first"], threads["second"])

        def broken() -> None:
            raise ValueError("no such model")

        with pytest.raises(ValueError, match="no such model"):
            two.run_on(0, broken).result(timeout=5)  # its own error; the worker lives on
        assert two.submit([("q", "p")], None).result(timeout=5) == [0.0]
    finally:
        two.close()
    with pytest.raises(RerankError, match="closed"):
        two.run_on(0, lambda: None)

    one = BatchScheduler([score])  # type: ignore[list-item]
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(5)

    try:
        one.run_on(0, hold)
        assert busy.wait(5)
        order.clear()
        waiting = one.submit([("q", "p")], None)  # queued while the worker is held
        loaded = one.run_on(0, lambda: work("loaded"))
        release.set()
        loaded.result(timeout=5)
        waiting.result(timeout=5)
        assert order == ["loaded", "scored"]
    finally:
        release.set()
        one.close()
