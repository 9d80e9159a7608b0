"""Helpers of the remote fault tests: many callers (threads and asyncio tasks) on one ``Reranker`` while
the server misbehaves, and the checks every call must pass whatever the server did.

Each caller cycles through a list of distinct requests from its own offset until told to stop, and
records every call: which request, when it started and ended, its scores or its exception. A call
passes if it returned exactly the scores of *its* request, or raised ``RemoteBackendError`` within
the time its settings allow (:func:`call_budget`); every caller must finish within that time too.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from bge_rerank_integrations import RemoteBackendError, Reranker
from bge_rerank_integrations.backends.remote import RetryPolicy

SLACK_S = 5.0
"""Added to every time bound: thread scheduling on a loaded 2-core CI machine, not the backend."""

Request = tuple[str, list[str]]


@dataclass(frozen=True)
class Call:
    """One call as a caller saw it."""

    caller: str
    request: int
    start: float
    end: float
    scores: list[float] | None
    error: BaseException | None


def call_budget(request_timeout: float, retry: RetryPolicy | None = None) -> float:
    """Seconds a failing call may take at most, with this timeout and retry policy (default: the
    engine's default), plus :data:`SLACK_S`.

    Each attempt connects, sends and reads the reply, each step bounded by ``request_timeout`` (the
    reply in all, not per read); between attempts the backoff waits at most its cap. The requests of
    one call run side by side, so the bound of one request is the bound of the call, provided no
    request waits for a slot (the tests give ``max_concurrent_requests`` enough for every request).
    """
    retry = retry or RetryPolicy()
    return retry.attempts * 3 * request_timeout + retry.longest_wait() + SLACK_S


def assert_distinguishable(expected: Sequence[list[float]], tolerance: float) -> None:
    """Any two requests' scores differ by more than ``2 * tolerance`` somewhere (or in length), so a
    call answered with another call's scores cannot pass the comparison."""
    for (i, a), (j, b) in itertools.combinations(enumerate(expected), 2):
        if len(a) == len(b):
            gap = max(abs(x - y) for x, y in zip(a, b, strict=True))
            assert gap > 2 * tolerance, (
                f"requests {i} and {j} score alike ({gap:.1e}): the test cannot tell them apart"
            )


class Callers:
    """``threads`` threads calling :meth:`Reranker.score` and ``tasks`` asyncio tasks (on one event loop,
    in a thread of its own) calling :meth:`Reranker.ascore`, until :meth:`stop`."""

    def __init__(self, reranker: Reranker, requests: Sequence[Request], *, threads: int, tasks: int) -> None:
        """Start every caller now."""
        self._reranker = reranker
        self._requests = list(requests)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self._threads = [
            threading.Thread(target=self._thread_caller, args=(n,), name=f"caller-thread-{n}", daemon=True)
            for n in range(threads)
        ]
        self._threads.append(
            threading.Thread(target=asyncio.run, args=(self._tasks(tasks),), name="caller-loop", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _thread_caller(self, n: int) -> None:
        for k in itertools.count(n):
            if self._stopping.is_set():
                return
            index = k % len(self._requests)
            query, passages = self._requests[index]
            start = time.monotonic()
            try:
                scores = self._reranker.score(query, passages)
            except BaseException as exc:  # recorded and judged by check()
                self._record(Call(f"thread {n}", index, start, time.monotonic(), None, exc))
            else:
                self._record(Call(f"thread {n}", index, start, time.monotonic(), scores, None))

    async def _task_caller(self, n: int) -> None:
        for k in itertools.count(n * 7):
            if self._stopping.is_set():
                return
            index = k % len(self._requests)
            query, passages = self._requests[index]
            start = time.monotonic()
            try:
                scores = await self._reranker.ascore(query, passages)
            except BaseException as exc:
                self._record(Call(f"task {n}", index, start, time.monotonic(), None, exc))
            else:
                self._record(Call(f"task {n}", index, start, time.monotonic(), scores, None))

    async def _tasks(self, count: int) -> None:
        await asyncio.gather(*(self._task_caller(n) for n in range(count)))

    def stop(self, within: float) -> list[Call]:
        """Ask every caller to stop after its current call; fail if one is still running ``within``
        seconds later (a hung call). Returns every call made."""
        self._stopping.set()
        deadline = time.monotonic() + within
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in self._threads if t.is_alive()]
        assert not hung, f"still in a call {within:.0f} s after being told to stop: {hung}"
        return sorted(self.calls, key=lambda c: c.start)


def check(calls: Sequence[Call], expected: Sequence[list[float]], *, budget: float, tolerance: float) -> None:
    """Every call returned its own request's scores, or raised ``RemoteBackendError`` within ``budget``."""
    assert calls, "no call was made"
    for call in calls:
        if call.error is not None:
            if not isinstance(call.error, RemoteBackendError):
                raise AssertionError(
                    f"{call.caller}: request {call.request} raised {call.error!r}"
                ) from call.error
            took = call.end - call.start
            assert took <= budget, f"{call.caller}: failed after {took:.1f} s, over the {budget:.1f} s bound"
        else:
            assert call.scores == pytest.approx(expected[call.request], abs=tolerance), (
                f"{call.caller}: request {call.request} got scores that are not its own"
            )


def summary(name: str, calls: Sequence[Call], budget: float) -> str:
    """One line for the reliability figures (printed; ``pytest -s`` shows it)."""
    failed = [c for c in calls if c.error is not None]
    longest = max((c.end - c.start for c in failed), default=0.0)
    callers = len({c.caller for c in calls})
    span = max(c.end for c in calls) - min(c.start for c in calls)
    return (
        f"{name}: {len(calls)} calls by {callers} callers over {span:.1f} s: {len(calls) - len(failed)} "
        f"exact, {len(failed)} RemoteBackendError (longest {longest:.1f} s, bound {budget:.1f} s)"
    )
