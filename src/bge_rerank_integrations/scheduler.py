"""Cross-request batching: concurrent callers share forward passes, each gets back its own scores.

A reranker inside a RAG service is called by many requests at once. Scoring each call alone
leaves the device idle between small batches; here every call becomes a request on one queue, and
a worker thread per model replica takes *all* requests waiting when it becomes free (up to a cap),
scores their pairs together under the token budget and hands each caller its own slice, in its own
order. A caller that finds the worker idle starts at once, so a single caller pays only a thread
hand-off; ``max_wait`` (off by default) holds a batch open a little longer to gather bursts.

Failures stay with their owner: if a shared batch raises, its requests are retried one by one, so
only the request that breaks the model fails, with its original exception. A caller whose future
is cancelled before its batch starts is dropped from it; one cancelled later just discards its
result. Identical pairs across the requests of a batch are scored once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

__all__ = ["BatchScheduler"]

logger = logging.getLogger(__name__)

ScoreFn = Callable[[list[tuple[str, str]]], list[float]]


@dataclass(eq=False)
class _Request:
    pairs: list[tuple[str, str]]
    future: Future[list[float]] = field(default_factory=Future)


class BatchScheduler:
    """A queue of scoring requests served by one worker thread per replica.

    Args:
        replicas: One scoring function per model replica (raw logits of pairs, in input order).
        max_wait: Seconds a worker keeps gathering requests after the first one arrives.
        max_pairs: Requests are added to a batch until it holds at least this many pairs (a batch
            always takes one request, however large): bigger batches use the device better, smaller
            ones answer the first requests sooner. One number for every replica, or per replica a
            function read before each batch (a backend may learn its device only when it loads).
    """

    def __init__(
        self,
        replicas: Sequence[ScoreFn],
        *,
        max_wait: float = 0.0,
        max_pairs: int | Sequence[Callable[[], int]] = 2048,
    ) -> None:
        """Store the replicas; worker threads start on the first request."""
        if not replicas:
            raise ValueError("BatchScheduler needs at least one replica")
        if isinstance(max_pairs, int) and not isinstance(max_pairs, bool):
            if max_pairs < 1:
                raise ValueError(f"max_pairs must be positive, got {max_pairs}")
            caps: list[Callable[[], int]] = [lambda: max_pairs] * len(replicas)
        elif isinstance(max_pairs, Sequence) and all(callable(cap) for cap in max_pairs):
            caps = list(max_pairs)
        else:
            raise TypeError(f"max_pairs must be an int or one function per replica, got {max_pairs!r}")
        if len(caps) != len(replicas):
            raise ValueError(f"max_pairs has {len(caps)} entries for {len(replicas)} replicas")
        self._replicas = list(zip(replicas, caps, strict=True))
        self._max_wait = max_wait
        self._queue: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._workers: list[threading.Thread] = []

    def submit(self, pairs: list[tuple[str, str]]) -> Future[list[float]]:
        """Queue ``pairs``; the future resolves to their raw logits in input order."""
        request = _Request(pairs)
        if not pairs:
            request.future.set_result([])
            return request.future
        with self._ready:
            if not self._workers:
                self._start_workers()
            self._queue.append(request)
            self._ready.notify()
        return request.future

    def _start_workers(self) -> None:
        for number, (score, max_pairs) in enumerate(self._replicas):
            worker = threading.Thread(
                target=self._serve, args=(score, max_pairs), name=f"bge-rerank-worker-{number}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def _serve(self, score: ScoreFn, max_pairs: Callable[[], int]) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
            # read outside the lock (a backend may resolve its device, importing torch, the first time)
            try:
                cap = max(1, max_pairs())
            except Exception:  # the worker must outlive a broken hint, or every caller would hang
                logger.exception("could not size the next batch; taking one request")
                cap = 1
            batch = self._take(cap)
            if batch:
                self._execute(score, batch)

    def _take(self, max_pairs: int) -> list[_Request]:
        """Wait for work, then take waiting requests until ``max_pairs``; drop cancelled ones."""
        with self._ready:
            while not self._queue:  # another replica may have taken what was waiting
                self._ready.wait()
            if self._max_wait > 0:
                deadline = time.monotonic() + self._max_wait
                while self._pending_pairs() < max_pairs and (left := deadline - time.monotonic()) > 0:
                    self._ready.wait(left)
            taken: list[_Request] = []
            size = 0
            while self._queue and size < max_pairs:
                request = self._queue.popleft()
                if request.future.set_running_or_notify_cancel():
                    taken.append(request)
                    size += len(request.pairs)
            return taken

    def _pending_pairs(self) -> int:
        return sum(len(r.pairs) for r in self._queue)

    def _execute(self, score: ScoreFn, batch: list[_Request]) -> None:
        slots: dict[tuple[str, str], int] = {}
        positions = [[slots.setdefault(pair, len(slots)) for pair in r.pairs] for r in batch]
        try:
            scores = score(list(slots))
            if len(scores) != len(slots):
                raise RuntimeError(f"backend returned {len(scores)} scores for {len(slots)} pairs")
        except Exception as exc:
            if len(batch) > 1:
                logger.warning(
                    "a batch of %d requests failed (%r); retrying them one by one", len(batch), exc
                )
                for request in batch:
                    self._execute(score, [request])
            else:
                batch[0].future.set_exception(exc)
            return
        for request, where in zip(batch, positions, strict=True):
            request.future.set_result([scores[i] for i in where])
