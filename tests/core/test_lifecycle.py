"""A reranker's lifetime: ``close()`` and ``with`` end its threads, connections and weights, and so does
dropping it; a shared instance stays until its last holder closes it; shutdown never waits on a worker."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bge_rerank_integrations import Reranker, RerankerConfig, RerankError
from bge_rerank_integrations.backends.local import LocalBackend
from tests.resources import memory_bound, rss_bytes, still_running

from .loopback import tei_logit, tei_server
from .texts import PASSAGES, QUERIES

QUERY = QUERIES[0]


def worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("bge-rerank-worker")}


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Reranker:
    return Reranker(model_dir, device="cpu")


def test_close_ends_the_workers_drops_the_weights_and_later_calls_fail(
    model_dir: Path, reference: Reranker
) -> None:
    expected = reference.score(QUERY, PASSAGES[:3])
    before = worker_threads()
    rr = Reranker(model_dir, device="cpu")
    assert rr.score(QUERY, PASSAGES[:3]) == pytest.approx(expected, abs=1e-5)
    started = worker_threads() - before
    assert started
    rr.close()
    assert rr.is_closed
    assert not rr.is_loaded
    assert not any(t.is_alive() for t in started)  # close() returns once they have ended
    with pytest.raises(RerankError, match="is closed; create a new Reranker"):
        rr.score(QUERY, PASSAGES[:1])
    with pytest.raises(RerankError, match="is closed"):
        rr.rank(QUERY, [])
    with pytest.raises(RerankError, match="is closed"):
        rr.load()
    with pytest.raises(RerankError, match="is closed"):
        asyncio.run(rr.ascore(QUERY, PASSAGES[:1]))
    rr.close()  # idempotent
    assert "closed" in repr(rr)


def test_with_and_async_with_close_the_reranker(model_dir: Path, reference: Reranker) -> None:
    with Reranker(model_dir, device="cpu") as rr:
        scores = rr.score(QUERY, PASSAGES[:4])
    assert rr.is_closed
    assert not rr.is_loaded

    async def main() -> tuple[Reranker, list[float]]:
        async with Reranker(model_dir, device="cpu") as arr:
            return arr, await arr.ascore(QUERY, PASSAGES[:4])

    arr, ascores = asyncio.run(main())
    assert arr.is_closed
    assert not arr.is_loaded
    assert scores == pytest.approx(reference.score(QUERY, PASSAGES[:4]), abs=1e-5)
    assert ascores == pytest.approx(scores, abs=1e-5)


def test_calls_racing_close_get_their_scores_or_a_closed_error(model_dir: Path, reference: Reranker) -> None:
    rr = Reranker(model_dir, device="cpu").load()
    calls = [PASSAGES[i % 7 : i % 7 + 5] for i in range(24)]

    def call(passages: list[str]) -> list[float] | RerankError:
        try:
            return rr.score(QUERY, passages)
        except RerankError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(call, p) for p in calls]
        rr.close()
        outcomes = [f.result(timeout=60) for f in futures]
    for passages, outcome in zip(calls, outcomes, strict=True):
        if isinstance(outcome, RerankError):
            assert "closed" in str(outcome)
        else:
            assert outcome == pytest.approx(reference.score(QUERY, passages), abs=1e-5)


def test_close_closes_the_remote_connections() -> None:
    with tei_server() as server:
        rr = Reranker(backend="tei", base_url=server.url)
        assert rr.score("q", ["a", "bb"]) == [tei_logit("q", "a"), tei_logit("q", "bb")]
        assert server.wait_open(1)  # kept alive for the next call
        rr.close()
        assert server.wait_open(0)
        assert not rr.is_loaded


def test_a_shared_reranker_stays_until_its_last_holder_closes_it(own_model_dir: Path) -> None:
    model_dir = own_model_dir  # a folder of its own: no other test's shared reranker uses its engine
    settings = {"device": "cpu", "max_length": 96}
    expected = Reranker(model_dir, **settings).score(QUERY, PASSAGES[:3])
    first = Reranker.shared(model_dir, **settings)
    second = Reranker.shared(model_dir, **settings)
    assert first is second
    first.score(QUERY, PASSAGES[:1])
    first.close()  # gives back the first hold only
    assert not second.is_closed
    assert second.is_loaded
    assert second.score(QUERY, PASSAGES[:3]) == pytest.approx(expected, abs=1e-5)
    with second:  # the second hold, given back on exit
        pass
    assert second.is_closed
    assert not second.is_loaded
    third = Reranker.shared(model_dir, **settings)
    assert third is not second  # a fresh instance, loaded on first use
    assert not third.is_loaded
    assert third.score(QUERY, PASSAGES[:3]) == pytest.approx(expected, abs=1e-5)
    third.close()


# --- without close() ---------------------------------------------------------------------------


def _use_once(model_dir: Path) -> Reranker:
    rr = Reranker(model_dir, device="cpu")
    rr.score(QUERY, PASSAGES[:4])
    return rr


def _folders(model_dir: Path, tmp_path: Path, count: int) -> list[Path]:
    """``count`` names of the test model: rerankers of one folder share its weights, these load their own."""
    folders = [tmp_path / f"model-{i}" for i in range(count)]
    for folder in folders:
        folder.symlink_to(model_dir, target_is_directory=True)
    return folders


def test_thirty_dropped_rerankers_return_their_threads_and_memory(model_dir: Path, tmp_path: Path) -> None:
    del_me = _use_once(model_dir)  # warm-up: imports, allocator pools, progress-bar thread
    del del_me
    gc.collect()
    threads, rss = set(threading.enumerate()), rss_bytes()
    for folder in _folders(model_dir, tmp_path, 30):
        _use_once(folder)  # dropped at once
    gc.collect()
    assert not still_running(set(threading.enumerate()) - threads)
    assert rss_bytes() - rss < memory_bound(model_dir)


def test_thirty_closed_rerankers_still_referenced_return_their_threads_and_memory(
    model_dir: Path, tmp_path: Path
) -> None:
    _use_once(model_dir).close()
    threads, rss = set(threading.enumerate()), rss_bytes()
    kept = []
    for folder in _folders(model_dir, tmp_path, 30):
        rr = _use_once(folder)
        rr.close()
        kept.append(rr)
    gc.collect()
    assert not still_running(set(threading.enumerate()) - threads)
    assert rss_bytes() - rss < memory_bound(model_dir)
    assert not any(rr.is_loaded for rr in kept)


def test_the_memory_bound_is_exceeded_by_thirty_rerankers_kept_loaded(
    model_dir: Path, tmp_path: Path
) -> None:
    # The bound above must be able to fail: 30 live models exceed it.
    gc.collect()
    rss = rss_bytes()
    kept = [_use_once(folder) for folder in _folders(model_dir, tmp_path, 30)]
    assert rss_bytes() - rss > memory_bound(model_dir)
    for rr in kept:
        rr.close()


def test_a_dropped_remote_reranker_closes_its_connections() -> None:
    with tei_server() as server:
        rr = Reranker(backend="tei", base_url=server.url)
        assert rr.score("q", ["a"]) == [tei_logit("q", "a")]
        assert server.wait_open(1)
        del rr
        gc.collect()
        assert server.wait_open(0)


# --- interpreter shutdown ----------------------------------------------------------------------

_SHUTDOWN_PRELUDE = """
import asyncio, socket, sys, threading
from bge_rerank_integrations import Reranker, RerankerConfig
from bge_rerank_integrations.backends.local import LocalBackend

class Announcing:
    '''The local backend, announcing when a batch starts.'''
    def __init__(self, inner):
        self.inner, self.started = inner, threading.Event()
        self.load, self.close = inner.load, inner.close
    is_loaded = property(lambda self: self.inner.is_loaded)
    pass_tokens = property(lambda self: self.inner.pass_tokens)
    def score_pairs(self, pairs, options):
        self.started.set()
        return self.inner.score_pairs(pairs, options)

def local(model):
    config = RerankerConfig(model=model, device="cpu")
    backend = Announcing(LocalBackend(config))
    return Reranker.from_config(config, backends=[backend]), backend.started

def call_forever(rr, passages):
    def run():
        while True:
            rr.score("q", passages)
    for _ in range(3):
        threading.Thread(target=run, daemon=True).start()
"""

_SHUTDOWN_CASES = {
    "idle after use, never closed": """
        rr, _ = local(MODEL)
        rr.score("q", ["a passage"])
    """,
    "threads in the middle of local calls": """
        rr, started = local(MODEL)
        call_forever(rr, [f"passage number {i} " * 30 for i in range(3000)])
        started.wait()
    """,
    "asyncio tasks in the middle of local calls": """
        rr, started = local(MODEL)
        async def main():
            tasks = [asyncio.create_task(rr.ascore("q", ["words " * 200] * 2000)) for _ in range(4)]
            await asyncio.to_thread(started.wait)
        asyncio.run(main())  # cancels the tasks still waiting
    """,
    "threads waiting on a remote engine that never answers": """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        accepted = threading.Semaphore(0)
        held = []
        def accept():
            while True:
                held.append(server.accept()[0])
                accepted.release()
        threading.Thread(target=accept, daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        rr = Reranker(backend="tei", base_url=url, max_texts_per_request=1, request_timeout=600)
        call_forever(rr, [f"passage {i}" for i in range(8)])
        for _ in range(4):  # several requests of one call in flight at once
            accepted.acquire()
    """,
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_SHUTDOWN_CASES))
def test_the_interpreter_exits_without_waiting_for_a_worker(model_dir: Path, case: str) -> None:
    body = textwrap.dedent(_SHUTDOWN_CASES[case])
    script = (
        f"{_SHUTDOWN_PRELUDE}\nMODEL = {str(model_dir)!r}\n{body}\nprint('main thread done', flush=True)\n"
    )
    # A worker that kept the interpreter waiting would hold it for minutes (request_timeout=600, or
    # for ever); a healthy exit takes the time of an import and a load.
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the interpreter did not exit: a thread kept it waiting\n{exc.stderr!r:.3000}")
    assert "main thread done" in done.stdout, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]


def test_load_happens_on_the_worker_thread_that_computes_the_passes(model_dir: Path) -> None:
    """Loading runs parallel torch operations, which give the loading thread a torch (OpenMP) thread
    team; a pass computed beside a second team ran 1.2-1.5x slower on CPU (benchmarks/RESULTS.md),
    so ``load()`` loads on the scoring thread, not the caller's."""
    threads: dict[str, set[str]] = {"load": set(), "score": set()}

    class Recording(LocalBackend):
        def load(self) -> None:
            if not self.is_loaded:
                threads["load"].add(threading.current_thread().name)
            super().load()

        def score_pairs(self, pairs: Any, options: Any) -> list[float]:
            threads["score"].add(threading.current_thread().name)
            return super().score_pairs(pairs, options)

    config = RerankerConfig(model=str(model_dir), device="cpu")
    reranker = Reranker.from_config(config, backends=[Recording(config)]).load()
    try:
        assert reranker.is_loaded
        reranker.score(QUERIES[0], PASSAGES[:3])
        assert threads["load"] == threads["score"]
        assert threading.current_thread().name not in threads["load"]
    finally:
        reranker.close()
