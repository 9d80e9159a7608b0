"""The queued engine: one request queue (:class:`~.scheduler.BatchScheduler`) over model replicas.

Every call becomes a request on the queue, so concurrent callers share forward passes; with several
replicas (one per device) each replica's worker takes the next batch when it is free. A batch only
mixes requests of equal scoring options. The replicas refer to their backend, never to the engine's
owner, so the worker threads keep no reranker alive.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from bge_rerank_integrations.errors import RerankError
from bge_rerank_integrations.scheduler import BatchScheduler

if TYPE_CHECKING:
    from bge_rerank_integrations.backends.base import Backend
    from bge_rerank_integrations.config import ScoringOptions

__all__ = ["QueuedEngine"]

# A shared batch is closed once it holds about one forward pass of pairs (the backend's
# ``pass_tokens``, at most the call's batch budget): small requests share passes, while a request
# that fills a pass on its own runs alone and answers without waiting for the requests behind it.
_TYPICAL_PAIR_TOKENS = 128


class QueuedEngine:
    """An :class:`~.base.Engine` feeding ``backends`` from one queue; it owns them (``close`` closes them).

    Args:
        backends: One per worker: a model replica per device, or one backend listed several times to
            run that many calls side by side on it (each is loaded and closed once).
        batch_wait_ms: How long a batch waits for more concurrent requests (0: only those waiting).
        dtype: The configured dtype, named in the error for NaN logits.
    """

    def __init__(
        self, backends: Sequence[Backend], *, batch_wait_ms: float = 0.0, dtype: str = "auto"
    ) -> None:
        """Store the backends; the worker threads start on the first call."""
        if not backends:
            raise ValueError("backends must hold at least one backend")
        self._workers = list(backends)
        self._backends = tuple(dict.fromkeys(backends))  # each once, in order
        self._batch_wait_ms = batch_wait_ms
        self._dtype = dtype
        self._scheduler: BatchScheduler[ScoringOptions] = BatchScheduler(
            [functools.partial(_checked_logits, backend, dtype) for backend in self._workers],
            max_wait=batch_wait_ms / 1000,
            max_pairs=[functools.partial(_pass_pairs, backend) for backend in self._workers],
        )
        self._close_lock = threading.Lock()
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy is a new engine (no queue or threads yet) over copies of the backends, the same
        backend listed as often as here."""
        rebuild = functools.partial(type(self), batch_wait_ms=self._batch_wait_ms, dtype=self._dtype)
        return (rebuild, (self._workers,))

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The backends behind the queue, each once (a local engine: one replica per device)."""
        return self._backends

    @property
    def is_loaded(self) -> bool:
        """Whether every backend is loaded."""
        return all(backend.is_loaded for backend in self._backends)

    def load(self) -> None:
        """Load every backend, each on the worker thread that will run its passes; idempotent.

        Loading runs parallel torch operations, which give the loading thread an OpenMP thread team
        of its own; a pass computed on another thread, beside that team, ran 1.2-1.5x slower on CPU
        (benchmarks/RESULTS.md). A closed engine loads on the calling thread, as it serves no more.
        """
        loads: dict[Backend, Future[None]] = {}
        try:
            for number, backend in enumerate(self._workers):
                if backend not in loads and not backend.is_loaded:
                    loads[backend] = self._scheduler.run_on(number, backend.load)
        except RerankError:  # closed
            for backend in self._backends:
                backend.load()
            return
        for future in loads.values():
            future.result()

    def check(self, options: ScoringOptions) -> None:
        """Raise ``ValueError`` if the loaded backends cannot score under ``options`` (a ``max_length``
        past the model's positions), for backends that can tell up front (``check(options)``, as
        :meth:`~.local.LocalBackend.check`); others refuse when called."""
        for backend in self._backends:
            check = getattr(backend, "check", None)
            if check is not None:
                check(options)

    def score(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """Raw logits of ``pairs`` under ``options``, in input order, through the queue."""
        future = self._scheduler.submit(list(pairs), options)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted while waiting (Ctrl-C): drop the request if it has not started
            raise

    async def ascore(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """:meth:`score` without blocking the event loop; cancelling it drops a request not yet started."""
        return await asyncio.wrap_future(self._scheduler.submit(list(pairs), options))

    def close(self) -> None:
        """Serve the queued calls, end the workers, then close the backends; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._scheduler.close()
        for backend in self._backends:
            backend.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop (it waits for the queued calls)."""
        await asyncio.to_thread(self.close)


def _pass_pairs(backend: Backend, options: ScoringOptions) -> int:
    return min(backend.pass_tokens, options.max_batch_tokens) // _TYPICAL_PAIR_TOKENS


def _checked_logits(
    backend: Backend, dtype: str, pairs: list[tuple[str, str]], options: ScoringOptions
) -> list[float]:
    """One scheduler replica: raw logits from ``backend``, refused if any is NaN."""
    logits = backend.score_pairs(pairs, options)
    broken = sum(1 for x in logits if math.isnan(x))
    if broken:
        raise RerankError(
            f"the model returned NaN for {broken} of {len(logits)} pairs; its weights or dtype are "
            f"broken for this input (dtype={dtype!r}: try 'bfloat16' or 'float32')"
        )
    return logits
