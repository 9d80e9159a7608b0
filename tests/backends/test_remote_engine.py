"""The remote engine's own machinery, through its public seams (``transport=``, ``async_transport=``):
native async without a thread per call, one bound on requests in flight across sync and async callers,
clients kept across calls (and event loops) until ``close()``, closing, cancelling, and the scoring
options a serving engine refuses."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bge_rerank_integrations import RemoteBackendError, Reranker, RerankerConfig, RerankError
from bge_rerank_integrations.backends.remote import RemoteEngine, RetryPolicy
from bge_rerank_integrations.config import ScoringOptions
from tests.core.loopback import tei_logit, tei_server

BASE_URL = "http://127.0.0.1:9"  # never contacted: the mock transports answer


def engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("bge-rerank-remote")}


def ended(threads: set[threading.Thread]) -> bool:
    """Whether every one of ``threads`` has ended (waiting a little for those told to end)."""
    for thread in threads:
        thread.join(10)
    return not any(t.is_alive() for t in threads)


def tei_reply(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(
        200, json=[{"index": i, "score": tei_logit(body["query"], t)} for i, t in enumerate(body["texts"])]
    )


class InFlight:
    """Counts the requests in flight at once, sync and async together, and the most of each seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = {"sync": 0, "async": 0}
        self.most = 0
        self.most_mixed = 0  # most in flight at a moment when both kinds were
        self.requests = 0

    def enter(self, kind: str) -> None:
        with self.lock:
            self.now[kind] += 1
            self.requests += 1
            total = sum(self.now.values())
            self.most = max(self.most, total)
            if all(self.now.values()):
                self.most_mixed = max(self.most_mixed, total)

    def leave(self, kind: str) -> None:
        with self.lock:
            self.now[kind] -= 1


def counting_transports(counter: InFlight, delay: float) -> tuple[httpx.MockTransport, httpx.MockTransport]:
    """A sync and an async fake TEI that hold each request ``delay`` seconds, counted in ``counter``."""

    def sync_handler(request: httpx.Request) -> httpx.Response:
        counter.enter("sync")
        try:
            time.sleep(delay)
            return tei_reply(request)
        finally:
            counter.leave("sync")

    async def async_handler(request: httpx.Request) -> httpx.Response:
        counter.enter("async")
        try:
            await asyncio.sleep(delay)
            return tei_reply(request)
        finally:
            counter.leave("async")

    return httpx.MockTransport(sync_handler), httpx.MockTransport(async_handler)


def tei_config(**settings: Any) -> RerankerConfig:
    settings.setdefault("base_url", BASE_URL)
    return RerankerConfig(model="m", backend="tei", **settings)


def expected(query: str, passages: list[str]) -> list[float]:
    return [tei_logit(query, p) for p in passages]


def test_many_concurrent_async_calls_are_in_flight_at_once_on_one_thread() -> None:
    calls = 64
    arrived: list[int] = []  # thread of each request
    all_in: asyncio.Event | None = None
    threads_at_peak: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal all_in
        all_in = all_in or asyncio.Event()
        arrived.append(threading.get_ident())
        if len(arrived) == calls:
            threads_at_peak.append(threading.active_count())
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 30)  # every call's request is in flight before any answer
        return tei_reply(request)

    config = tei_config(max_concurrent_requests=calls)
    engine = RemoteEngine(config, async_transport=httpx.MockTransport(handler))
    rr = Reranker.from_config(config, engine=engine)
    before = threading.active_count()
    others = engine_threads()  # of other tests' engines, not yet collected

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(rr.ascore(f"query {n}", ["a", "bb"]) for n in range(calls)))

    assert asyncio.run(main()) == [expected(f"query {n}", ["a", "bb"]) for n in range(calls)]
    assert len(arrived) == calls
    assert len(set(arrived)) == 1  # every request sent from one thread: the engine's event loop
    assert threads_at_peak == [before + 1]  # that thread is the only one the calls added
    (loop_thread,) = engine_threads() - others
    rr.close()
    assert ended({loop_thread})


def test_requests_in_flight_stay_bounded_across_sync_and_async_callers() -> None:
    counter = InFlight()
    sync_transport, async_transport = counting_transports(counter, delay=0.02)
    config = tei_config(max_concurrent_requests=3, max_texts_per_request=2)
    rr = Reranker.from_config(
        config, engine=RemoteEngine(config, transport=sync_transport, async_transport=async_transport)
    )
    passages = [f"passage {i}" for i in range(6)]  # three requests a call

    def thread_caller(n: int) -> list[list[float]]:
        return [rr.score(f"thread {n} call {k}", passages) for k in range(4)]

    async def task_caller(n: int) -> list[list[float]]:
        return [await rr.ascore(f"task {n} call {k}", passages) for k in range(4)]

    async def tasks() -> list[list[list[float]]]:
        return await asyncio.gather(*(task_caller(n) for n in range(6)))

    with ThreadPoolExecutor(max_workers=7) as pool:
        threads = [pool.submit(thread_caller, n) for n in range(6)]
        from_tasks = pool.submit(asyncio.run, tasks()).result(timeout=120)
        from_threads = [f.result(timeout=120) for f in threads]
    assert from_threads == [[expected(f"thread {n} call {k}", passages) for k in range(4)] for n in range(6)]
    assert from_tasks == [[expected(f"task {n} call {k}", passages) for k in range(4)] for n in range(6)]
    assert counter.requests == 2 * 6 * 4 * 3
    assert counter.most == 3  # the bound, reached, never passed
    assert counter.most_mixed >= 2  # sync and async requests were in flight together under it
    rr.close()


def test_one_connection_serves_every_call_sync_and_async_across_event_loops() -> None:
    with tei_server() as server:
        config = tei_config(base_url=server.url)
        engine = RemoteEngine(config)
        for n in range(5):
            assert engine.score([(f"q{n}", "a"), (f"q{n}", "bb")]) == expected(f"q{n}", ["a", "bb"])
        for n in range(5):  # each asyncio.run is a new event loop; the async client outlives them
            scores = asyncio.run(engine.ascore([(f"q{n}", "a")]))
            assert scores == expected(f"q{n}", ["a"])
        assert server.connections == 2  # one kept-alive connection per client, reused by every call
        assert server.wait_open(2)
        engine.close()
        assert server.wait_open(0)


def test_transport_calls_go_through_the_given_transports() -> None:
    seen: list[str] = []

    def sync_handler(request: httpx.Request) -> httpx.Response:
        seen.append("sync")
        return tei_reply(request)

    async def async_handler(request: httpx.Request) -> httpx.Response:
        seen.append("async")
        return tei_reply(request)

    engine = RemoteEngine(
        tei_config(),
        transport=httpx.MockTransport(sync_handler),
        async_transport=httpx.MockTransport(async_handler),
    )
    assert engine.score([("q", "a")]) == expected("q", ["a"])
    assert asyncio.run(engine.ascore([("q", "a"), ("q", "bb")])) == expected("q", ["a", "bb"])
    assert seen == ["sync", "async"]
    engine.close()


def test_a_closed_engine_refuses_every_call_and_ends_its_threads() -> None:
    config = tei_config(max_texts_per_request=1)
    transport = httpx.MockTransport(tei_reply)
    engine = RemoteEngine(config, transport=transport, async_transport=transport)
    others = engine_threads()
    assert engine.score([("q", "a"), ("q", "bb")]) == expected("q", ["a", "bb"])  # worker threads
    assert asyncio.run(engine.ascore([("q", "a")])) == expected("q", ["a"])  # the event-loop thread
    started = engine_threads() - others
    assert {t.name.rsplit("-", 1)[1] for t in started} == {"0", "1", "loop"}
    engine.close()
    assert ended(started)
    assert engine.is_closed
    assert not engine.is_loaded
    with pytest.raises(
        RerankError, match=re.escape("tei at http://127.0.0.1:9/rerank: the engine is closed")
    ):
        engine.score([("q", "a")])
    with pytest.raises(RerankError, match="the engine is closed"):
        asyncio.run(engine.ascore([("q", "a")]))
    with pytest.raises(RerankError, match="the engine is closed"):
        engine.load()
    engine.close()  # idempotent
    asyncio.run(engine.aclose())
    assert engine_threads() - others == set()  # nothing was started again


def test_aclose_closes_the_async_client_from_an_event_loop() -> None:
    others = engine_threads()
    started: set[threading.Thread] = set()
    with tei_server() as server:
        config = tei_config(base_url=server.url)

        async def main() -> list[float]:
            engine = RemoteEngine(config)
            async with Reranker.from_config(config, engine=engine) as rr:
                scores = await rr.ascore("q", ["a"])
                started.update(engine_threads() - others)
                return scores

        assert asyncio.run(main()) == expected("q", ["a"])
        assert server.wait_open(0)
    assert len(started) == 1  # the event-loop thread
    assert ended(started)


def test_close_ends_calls_in_flight_with_a_closed_error() -> None:
    # The engine never answers: close() must end the waiting calls, sync and async, not leave them hung.
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def sync_handler(request: httpx.Request) -> httpx.Response:
        arrived.release()
        release.wait(30)
        return tei_reply(request)

    async def async_handler(request: httpx.Request) -> httpx.Response:
        arrived.release()
        await asyncio.sleep(30)
        return tei_reply(request)

    config = tei_config(max_concurrent_requests=4, max_texts_per_request=1)
    engine = RemoteEngine(
        config,
        transport=httpx.MockTransport(sync_handler),
        async_transport=httpx.MockTransport(async_handler),
    )

    async def tasks() -> list[BaseException | list[float]]:
        return await asyncio.gather(
            *(engine.ascore([(f"q{n}", "a")]) for n in range(2)), return_exceptions=True
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        from_tasks = pool.submit(asyncio.run, tasks())
        from_thread = pool.submit(engine.score, [("q", "a"), ("q", "bb")])
        for _ in range(4):
            assert arrived.acquire(timeout=30)  # every request is in flight
        engine.close()
        outcomes = from_tasks.result(timeout=30)
        release.set()  # the sync requests cannot be interrupted inside the transport: let them end
        with pytest.raises(RerankError, match="the engine is closed"):
            from_thread.result(timeout=30)
    assert [type(o) for o in outcomes] == [RerankError, RerankError]
    assert all("the engine is closed" in str(o) for o in outcomes)


def test_a_cancelled_call_gives_its_slot_back() -> None:
    arrived = threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["query"] == "hangs":
            arrived.set()
            await asyncio.sleep(3600)
        return tei_reply(request)

    config = tei_config(max_concurrent_requests=1)
    engine = RemoteEngine(
        config, transport=httpx.MockTransport(tei_reply), async_transport=httpx.MockTransport(handler)
    )

    async def main() -> list[float]:
        stuck = asyncio.create_task(engine.ascore([("hangs", "a")]))
        assert await asyncio.to_thread(arrived.wait, 30)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        # The only slot was the cancelled request's: the next call gets it back.
        return await asyncio.wait_for(engine.ascore([("next", "a")]), 30)

    assert asyncio.run(main()) == expected("next", ["a"])
    assert engine.score([("sync", "a")]) == expected("sync", ["a"])  # and so do sync callers
    engine.close()


def test_a_failed_async_request_cancels_the_others_of_its_call() -> None:
    started: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        query = json.loads(request.content)["query"]
        started.append(query)
        if query == "bad":
            return httpx.Response(400, json={"error": "bad request"})
        await asyncio.sleep(3600)  # would hold the call for an hour
        return tei_reply(request)

    engine = RemoteEngine(tei_config(), async_transport=httpx.MockTransport(handler))
    with pytest.raises(RemoteBackendError, match="HTTP 400"):
        asyncio.run(asyncio.wait_for(engine.ascore([("slow", "a"), ("bad", "b")]), 30))
    assert sorted(started) == ["bad", "slow"]
    engine.close()


def test_a_dropped_engine_closes_its_async_connections_and_ends_its_loop() -> None:
    others = engine_threads()
    with tei_server() as server:
        engine = RemoteEngine(tei_config(base_url=server.url))
        assert asyncio.run(engine.ascore([("q", "a")])) == expected("q", ["a"])
        assert server.wait_open(1)
        (loop_thread,) = engine_threads() - others
        del engine
        gc.collect()
        assert server.wait_open(0)
        loop_thread.join(10)
        assert not loop_thread.is_alive()


def test_a_copy_of_a_reranker_on_a_given_engine_has_an_engine_of_its_own() -> None:
    transport = httpx.MockTransport(tei_reply)
    config = tei_config()
    rr = Reranker.from_config(config, engine=RemoteEngine(config, transport=transport))
    copied = copy.deepcopy(rr)
    rr.close()
    assert copied.score("q", ["a", "bb"]) == expected("q", ["a", "bb"])
    copied.close()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"long_passages": "window"}, "long_passages='window' needs backend='local'"),
        ({"prompt": "Is it relevant?"}, "prompt: a serving engine's /rerank takes no such option"),
        ({"cutoff_layers": (28,)}, "cutoff_layers: a serving engine"),
        ({"compress_ratio": 2}, "compress_ratio: a serving engine"),
        ({"compress_layers": (24, 40), "prompt": "p"}, "compress_layers, prompt: a serving engine"),
    ],
)
def test_options_a_serving_engine_cannot_honour_are_refused(override: dict[str, Any], message: str) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return tei_reply(request)

    transport = httpx.MockTransport(handler)
    engine = RemoteEngine(tei_config(), transport=transport, async_transport=transport)
    options = ScoringOptions().replace(**override)
    with pytest.raises(ValueError, match=message):
        engine.score([("q", "a")], options)
    with pytest.raises(ValueError, match=message):
        asyncio.run(engine.ascore([("q", "a")], options))
    assert not sent
    # Options it can honour (the engine truncates itself) are accepted.
    accepted = ScoringOptions(max_length=1024, query_max_length=100, max_batch_tokens=1000)
    assert engine.score([("q", "a")], accepted) == expected("q", ["a"])
    assert asyncio.run(engine.ascore([("q", "a")], accepted)) == expected("q", ["a"])
    engine.close()


def test_retry_policy_checks_its_values() -> None:
    with pytest.raises(ValueError, match="attempts must be an int >= 1, got 0"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="base_delay <= max_delay"):
        RetryPolicy(base_delay=5, max_delay=1)
    assert RetryPolicy(attempts=3, base_delay=1, max_delay=1.5).longest_wait() == 2.5


def test_async_retries_wait_on_the_event_loop_and_honour_retry_after() -> None:
    sleeps: list[float] = []
    script: list[Callable[[httpx.Request], httpx.Response]] = [
        lambda r: httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "7"}),
        lambda r: httpx.Response(503, json={"error": "overloaded"}),
    ]

    async def handler(request: httpx.Request) -> httpx.Response:
        return script.pop(0)(request) if script else tei_reply(request)

    engine = RemoteEngine(
        tei_config(), async_transport=httpx.MockTransport(handler), retry=RetryPolicy(sleep=sleeps.append)
    )
    assert asyncio.run(engine.ascore([("q", "a")])) == expected("q", ["a"])
    assert sleeps[0] == 7.0
    assert 0.5 <= sleeps[1] <= 1.0
    engine.close()


_EXIT_SCRIPT = """
import asyncio, socket, threading
from bge_rerank_integrations import Reranker

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
rr = Reranker(
    backend="tei", base_url=url, max_texts_per_request=1, max_concurrent_requests=16, request_timeout=600
)

async def forever():
    await asyncio.gather(*(rr.ascore(f"q{n}", ["a", "b"]) for n in range(4)))
threading.Thread(target=asyncio.run, args=(forever(),), daemon=True).start()
threading.Thread(target=rr.score, args=("sync", ["a", "b"]), daemon=True).start()
for _ in range(10):  # every request in flight: 8 async, 2 sync
    accepted.acquire()
print("main thread done", flush=True)
"""


@pytest.mark.slow
def test_the_interpreter_exits_with_async_and_sync_calls_in_flight() -> None:
    # A thread of the engine that kept the interpreter waiting would hold it for request_timeout=600 s.
    try:
        done = subprocess.run(
            [sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the interpreter did not exit: a thread kept it waiting\n{exc.stderr!r:.3000}")
    assert "main thread done" in done.stdout, done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
