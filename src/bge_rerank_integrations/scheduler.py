"""Cross-request batching: concurrent callers share forward passes, each gets back its own scores.

A reranker inside a RAG service is called by many requests at once. Scoring each call alone
leaves the device idle between small batches; here every call becomes a request on one queue, and
a worker thread per model replica takes *all* requests waiting when it becomes free (up to a cap),
scores their pairs together under the token budget and hands each caller its own slice, in its own
order. A caller that finds the worker idle starts at once, so a single caller pays only a thread
hand-off; ``max_wait`` (off by default) holds a batch open a little longer to gather bursts.

Each request carries its options (for a reranker, its :class:`~.config.ScoringOptions`), and a batch
only mixes requests whose options are equal: a worker takes the oldest waiting request and, with
it, the waiting requests of equal options, leaving the others queued in their order. So no request
waits behind newer ones: whatever options it has, it leads a batch once the older ones are served.

Failures stay with their owner: if a shared batch raises, its requests are retried one by one, so
only the request that breaks the model fails, with its original exception (a ``BaseException`` such
as ``KeyboardInterrupt`` too: it reaches that request's caller, and the worker lives on). A caller
whose future is cancelled before its batch starts is dropped from it; one cancelled later just
discards its result. Identical pairs across the requests of a batch are scored once.

:meth:`BatchScheduler.run_on` runs other work on a replica's own worker thread: a reranker loads
its model there, so that the thread computing its forward passes is the only one of torch's
OpenMP thread teams it creates (a second team in the process made CPU passes 1.2-1.5x slower).

Lifetime: the worker threads hold the queue, and the scheduler only while they run a batch, so a
scheduler nobody references is collected, and its workers end (no thread keeps its model alive).
:meth:`BatchScheduler.close` ends them explicitly, after the requests already queued.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bge_rerank_integrations.errors import RerankError

__all__ = ["BatchScheduler"]

logger = logging.getLogger(__name__)

_O = TypeVar("_O", bound=Hashable)
ScoreFn = Callable[[list[tuple[str, str]], _O], list[float]]
"""One replica: the raw logits of distinct pairs scored under the batch's options, in input order."""


@dataclass(eq=False)
class _Request(Generic[_O]):
    pairs: list[tuple[str, str]]
    options: _O
    future: Future[list[float]] = field(default_factory=Future)


class _Queue:
    """The requests waiting for a worker, and whether new ones are still taken.

    Shared by a scheduler and its worker threads: it refers to neither, so a waiting worker keeps
    nothing of its scheduler alive.
    """

    def __init__(self, workers: int) -> None:
        self.requests: deque[_Request[Hashable]] = deque()
        self.tasks: list[deque[_Task]] = [deque() for _ in range(workers)]
        """Per worker, work only that worker runs (:meth:`BatchScheduler.run_on`), before requests."""
        self.ready = threading.Condition()
        self.closed = False

    def wait(self, worker: int) -> bool:
        """Block until a request or a task of ``worker`` waits (``True``), or the queue is closed and
        has nothing for it (``False``)."""
        with self.ready:
            while not self.requests and not self.tasks[worker] and not self.closed:
                self.ready.wait()
            return bool(self.requests or self.tasks[worker])

    def next_task(self, worker: int) -> _Task | None:
        with self.ready:
            return self.tasks[worker].popleft() if self.tasks[worker] else None

    def close(self) -> None:
        """Take no new requests; the workers serve the waiting ones, then end."""
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def abandon(self) -> None:
        """Close, and fail the waiting requests: their scheduler is gone, nobody can serve them."""
        with self.ready:
            self.closed = True
            waiting: list[Future[Any]] = [request.future for request in self.requests]
            waiting += [task.future for tasks in self.tasks for task in tasks]
            self.requests.clear()
            for tasks in self.tasks:
                tasks.clear()
            self.ready.notify_all()
        for future in waiting:
            if future.set_running_or_notify_cancel():
                future.set_exception(RerankError("the reranker was garbage-collected before this call ran"))


@dataclass(eq=False)
class _Task:
    run: Callable[[], None]
    future: Future[None] = field(default_factory=Future)

    def __call__(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.run()
        except BaseException as exc:  # the caller gets it; the worker lives on
            self.future.set_exception(exc)
        else:
            self.future.set_result(None)


def _work(queue: _Queue, scheduler: weakref.ref[BatchScheduler[_O]], replica: int) -> None:
    """A worker thread: waits holding only the queue, takes the scheduler for one batch at a time."""
    while queue.wait(replica):
        task = queue.next_task(replica)
        if task is not None:
            task()
            continue
        owner = scheduler()
        if owner is None:  # collected: its finalizer abandons the queue
            return
        owner._serve_one(replica)
        del owner  # wait without it, so a scheduler nobody else references can be collected


class BatchScheduler(Generic[_O]):
    """A queue of scoring requests served by one worker thread per replica.

    Args:
        replicas: One scoring function per model replica: raw logits of pairs, in input order, under
            the options of the batch's requests (all equal).
        max_wait: Seconds a worker keeps gathering requests after the first one arrives.
        max_pairs: Requests are added to a batch until it holds at least this many pairs (a batch
            always takes one request, however large): bigger batches use the device better, smaller
            ones answer the first requests sooner. One number for every replica, or per replica a
            function of the batch's options read before each batch (a backend may learn its device
            only when it loads, and a batch budget is one of the options).
    """

    def __init__(
        self,
        replicas: Sequence[ScoreFn[_O]],
        *,
        max_wait: float = 0.0,
        max_pairs: int | Sequence[Callable[[_O], int]] = 2048,
    ) -> None:
        """Store the replicas; worker threads start on the first request."""
        if not replicas:
            raise ValueError("BatchScheduler needs at least one replica")
        if isinstance(max_pairs, int) and not isinstance(max_pairs, bool):
            if max_pairs < 1:
                raise ValueError(f"max_pairs must be positive, got {max_pairs}")
            caps: list[Callable[[_O], int]] = [lambda _: max_pairs] * len(replicas)
        elif isinstance(max_pairs, Sequence) and all(callable(cap) for cap in max_pairs):
            caps = list(max_pairs)
        else:
            raise TypeError(f"max_pairs must be an int or one function per replica, got {max_pairs!r}")
        if len(caps) != len(replicas):
            raise ValueError(f"max_pairs has {len(caps)} entries for {len(replicas)} replicas")
        self._replicas = list(zip(replicas, caps, strict=True))
        self._max_wait = max_wait
        self._queue = _Queue(len(self._replicas))
        self._workers: list[threading.Thread] = []
        # Collected without close(): end the workers (they hold the queue, never the scheduler).
        weakref.finalize(self, self._queue.abandon).atexit = False

    def submit(self, pairs: list[tuple[str, str]], options: _O) -> Future[list[float]]:
        """Queue ``pairs`` to be scored under ``options``; the future resolves to their raw logits in
        input order.

        Raises:
            RerankError: the scheduler is closed.
        """
        request = _Request(pairs, options)
        if not pairs:
            request.future.set_result([])
            return request.future
        with self._open_queue() as queue:
            queue.requests.append(request)  # type: ignore[arg-type]  # the queue holds only _O options
            queue.ready.notify()
        return request.future

    def run_on(self, replica: int, work: Callable[[], None]) -> Future[None]:
        """Run ``work()`` on ``replica``'s worker thread, before the requests it has not yet taken; the
        future resolves when it has run (to its exception, if it raised).

        Raises:
            RerankError: the scheduler is closed.
        """
        task = _Task(work)
        with self._open_queue() as queue:
            queue.tasks[replica].append(task)
            queue.ready.notify_all()  # the one worker it is for may not be the one notify() wakes
        return task.future

    @contextlib.contextmanager
    def _open_queue(self) -> Iterator[_Queue]:
        """The queue, its lock held, once it is known to take work: refuses a closed one, starts the
        workers on first use."""
        queue = self._queue
        with queue.ready:
            if queue.closed:
                raise RerankError("this reranker is closed; create a new one to score again")
            if not self._workers:
                self._start_workers()
            yield queue

    def close(self) -> None:
        """Take no new requests, let the workers serve the queued ones, and wait until they end.

        Idempotent; called from a worker thread, it waits for the others only.
        """
        self._queue.close()
        with self._queue.ready:
            workers = list(self._workers)
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join()

    def _start_workers(self) -> None:
        me = weakref.ref(self)
        for number in range(len(self._replicas)):
            worker = threading.Thread(
                target=_work, args=(self._queue, me, number), name=f"bge-rerank-worker-{number}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def _serve_one(self, replica: int) -> None:
        """Take the next batch for ``replica`` (if another replica has not) and score it."""
        score, max_pairs = self._replicas[replica]
        with self._queue.ready:
            if not self._queue.requests:
                return
            options: _O = self._queue.requests[0].options  # type: ignore[assignment]  # the oldest leads
        # read outside the lock (a backend may resolve its device, importing torch, the first time)
        try:
            cap = max(1, max_pairs(options))
        except BaseException:  # the worker must outlive a broken hint, or every caller would hang
            logger.exception("could not size the next batch; taking one request")
            cap = 1
        batch = self._take(options, cap)
        if batch:
            self._execute(score, options, batch)

    def _take(self, options: _O, max_pairs: int) -> list[_Request[_O]]:
        """Take waiting, uncancelled requests of ``options``, oldest first, up to ``max_pairs``.

        Requests of other options stay queued in their order (none if another replica took them all).
        """
        queue = self._queue
        with queue.ready:
            if self._max_wait > 0 and queue.requests:
                deadline = time.monotonic() + self._max_wait
                while (
                    not queue.closed
                    and self._pending_pairs(options) < max_pairs
                    and (left := deadline - time.monotonic()) > 0
                ):
                    queue.ready.wait(left)
            taken: list[_Request[_O]] = []
            kept: deque[_Request[Hashable]] = deque()
            size = 0
            while queue.requests and size < max_pairs:
                request = queue.requests.popleft()
                if request.options != options:
                    kept.append(request)
                elif request.future.set_running_or_notify_cancel():
                    taken.append(request)  # type: ignore[arg-type]  # its options are ``options``
                    size += len(request.pairs)
            kept.extend(queue.requests)
            queue.requests = kept
            return taken

    def _pending_pairs(self, options: _O) -> int:
        return sum(len(r.pairs) for r in self._queue.requests if r.options == options)

    def _execute(self, score: ScoreFn[_O], options: _O, batch: list[_Request[_O]]) -> None:
        slots: dict[tuple[str, str], int] = {}
        positions = [[slots.setdefault(pair, len(slots)) for pair in r.pairs] for r in batch]
        try:
            scores = score(list(slots), options)
            if len(scores) != len(slots):
                raise RuntimeError(f"backend returned {len(scores)} scores for {len(slots)} pairs")
        except BaseException as exc:  # KeyboardInterrupt or a Rust panic too: the worker must live on
            if len(batch) > 1:
                logger.warning(
                    "a batch of %d requests failed (%r); retrying them one by one", len(batch), exc
                )
                for request in batch:
                    self._execute(score, options, [request])
            else:
                batch[0].future.set_exception(exc)
            return
        for request, where in zip(batch, positions, strict=True):
            request.future.set_result([scores[i] for i in where])
