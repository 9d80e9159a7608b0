"""Score pairs through a serving engine's ``/rerank``: TEI, vLLM, Infinity or a Cohere v2 compatible API.

Each engine's dialect is one small class that builds the request body and reads the reply; the
:class:`RemoteEngine` does the rest, the same for every engine: it groups pairs by query, splits each
group into requests of at most ``max_texts_per_request`` passages, keeps at most
``max_concurrent_requests`` of them in flight (across every sync and async call at once), retries 429,
5xx, timeouts and connection errors with exponential backoff (honouring ``Retry-After``), maps each
result back by its ``index`` and returns raw logits, the scale the local backend gives. It takes no
part in the local batching queue: serving engines batch across connections themselves.

Raw logits: TEI and Infinity are asked for raw scores (``raw_scores: true``). vLLM and Cohere only
return probabilities; they are turned back into logits with ``log(p / (1 - p))``, so the ``Reranker``'s
sigmoid gives the engine's probability back (within 1e-12). Precision caveat: a server computes the
probability in float32, so the recovered logit is exact only to about ``6e-8 / (p * (1 - p))``; for
``|logit|`` above about 16 the probability rounds to 0 or 1 and such passages tie. Probabilities of
exactly 0 or 1 are clamped to ``1e-12`` and ``1 - 1e-12`` (logits of about -27.6 and 27.6).

Truncation is the engine's: ``max_length`` and ``query_max_length`` are not sent (no API takes them),
so a pair longer than 512 tokens is scored up to the engine's own limit (8192 tokens for
bge-reranker-v2-m3 on TEI and Infinity; vLLM refuses longer inputs) and can score differently from
the local backend, which cuts it at ``max_length``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import functools
import logging
import math
import os
import queue
import random
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx

from bge_rerank_integrations.config import RerankerConfig, ScoringOptions, check_remote_scoring
from bge_rerank_integrations.errors import RemoteBackendError, RerankError

__all__ = [
    "CohereDialect",
    "Dialect",
    "InfinityDialect",
    "RemoteEngine",
    "RetryPolicy",
    "TEIDialect",
    "VLLMDialect",
]

logger = logging.getLogger(__name__)

_P_CLAMP = 1e-12
"""Probabilities are clamped to [_P_CLAMP, 1 - _P_CLAMP] before the logit, so 0 and 1 stay finite."""

_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_LENGTH_WORDS = re.compile(r"token|too long|context length|max_length|sequence length", re.IGNORECASE)


class _MalformedReplyError(Exception):
    """A reply that does not have the dialect's shape; turned into a RemoteBackendError by the caller."""


@dataclass(frozen=True)
class Dialect:
    """How one engine's ``/rerank`` is asked and answered; subclasses fill in the details."""

    engine: ClassVar[str]
    """The ``backend`` setting that selects this dialect."""
    path: ClassVar[str] = "/rerank"
    """Appended to ``base_url``."""
    default_base_url: ClassVar[str | None] = None
    """Used when ``base_url`` is not given (only a public API has one)."""
    default_max_texts: ClassVar[int | None] = 256
    """Passages per request when ``max_texts_per_request`` is ``None``."""
    returns_probabilities: ClassVar[bool] = False
    """Whether scores come back through a sigmoid (then they are turned back into logits)."""
    results_key: ClassVar[str | None] = "results"
    """Key of the result list in the reply; ``None`` when the reply is the list itself."""
    score_key: ClassVar[str] = "relevance_score"
    """Key of the score in each result."""

    model: str
    """Model name sent where the API takes one."""

    def request_body(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        """The JSON body asking for the scores of ``texts`` against ``query``."""
        return {"model": self.model, "query": query, "documents": list(texts)}

    def parse(self, payload: Any, count: int) -> list[float]:
        """Scores of the ``count`` texts of the request, in request order (placed by ``index``).

        Raises:
            _MalformedReplyError: the reply is not of this dialect's shape, or an index is missing,
                repeated or out of range, or a score is not a finite number.
        """
        items = payload
        if self.results_key is not None:
            if not isinstance(payload, dict) or self.results_key not in payload:
                raise _MalformedReplyError(f"expected an object with a {self.results_key!r} list")
            items = payload[self.results_key]
        if not isinstance(items, list):
            raise _MalformedReplyError("expected a list of results")
        scores: list[float | None] = [None] * count
        for n, item in enumerate(items):
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, bool) or not isinstance(index, int):
                raise _MalformedReplyError(f"result {n} has no integer 'index'")
            if not 0 <= index < count:
                raise _MalformedReplyError(f"result {n} has index {index}, outside 0..{count - 1}")
            if scores[index] is not None:
                raise _MalformedReplyError(f"index {index} appears twice")
            value = item.get(self.score_key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _MalformedReplyError(f"result {n} has no finite number {self.score_key!r}")
            scores[index] = float(value)
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            raise _MalformedReplyError(
                f"{len(missing)} of {count} texts have no result (first: {missing[0]})"
            )
        return [s for s in scores if s is not None]


@dataclass(frozen=True)
class TEIDialect(Dialect):
    """Hugging Face text-embeddings-inference: raw scores, server-side truncation, 32 texts a request."""

    engine: ClassVar[str] = "tei"
    default_max_texts: ClassVar[int | None] = 32  # TEI's --max-client-batch-size default (HTTP 413 above)
    results_key: ClassVar[str | None] = None
    score_key: ClassVar[str] = "score"

    def request_body(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        """TEI's body: ``texts``, truncated server-side like the local backend, raw logits, no text back."""
        return {
            "query": query,
            "texts": list(texts),
            "truncate": True,
            "raw_scores": True,
            "return_text": False,
        }


@dataclass(frozen=True)
class InfinityDialect(Dialect):
    """Infinity (infinity-emb): raw scores on request; it truncates over-long pairs itself."""

    engine: ClassVar[str] = "infinity"

    def request_body(self, query: str, texts: Sequence[str]) -> dict[str, Any]:
        """Infinity's body: raw logits, no documents echoed back."""
        return {**super().request_body(query, texts), "raw_scores": True, "return_documents": False}


@dataclass(frozen=True)
class VLLMDialect(Dialect):
    """vLLM's ``/rerank``: scores come through the model's activation (a sigmoid), so probabilities."""

    engine: ClassVar[str] = "vllm"
    returns_probabilities: ClassVar[bool] = True


@dataclass(frozen=True)
class CohereDialect(Dialect):
    """Cohere v2 ``/v2/rerank`` (and compatible APIs): ``relevance_score`` in 0..1, up to 1000 documents."""

    engine: ClassVar[str] = "cohere"
    path: ClassVar[str] = "/v2/rerank"
    default_base_url: ClassVar[str | None] = "https://api.cohere.com"
    default_max_texts: ClassVar[int | None] = 1000
    returns_probabilities: ClassVar[bool] = True


_DIALECTS: dict[str, type[Dialect]] = {
    d.engine: d for d in (TEIDialect, InfinityDialect, VLLMDialect, CohereDialect)
}


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Attempts per request and the exponential backoff between them (jittered, capped).

    Retried: 408, 425, 429, 500, 502, 503 and 504 replies (waiting what ``Retry-After`` asks, capped at
    ``max_delay``), timeouts and connection errors. Pass one as ``RemoteEngine(config, retry=...)``.
    """

    attempts: int = 4
    """Tries per request, the first included."""
    base_delay: float = 0.5
    """Seconds after the first failed try; doubled after each further one."""
    max_delay: float = 30.0
    """The longest wait between tries, ``Retry-After`` included."""
    sleep: Callable[[float], None] | None = None
    """Called with each wait instead of waiting (a test records the delays and does not wait)."""

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError(
                f"need 0 <= base_delay <= max_delay, got base_delay={self.base_delay}, "
                f"max_delay={self.max_delay}"
            )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) when the server gave no hint."""
        return random.uniform(0.5, 1.0) * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))

    def longest_wait(self) -> float:
        """The most a request can spend waiting between its attempts (without ``Retry-After``)."""
        return sum(min(self.max_delay, self.base_delay * 2.0 ** (a - 1)) for a in range(1, self.attempts))

    def pause(self, delay: float, failed: threading.Event | None) -> bool:
        """Wait ``delay`` seconds; ``False`` if the call failed meanwhile (then stop retrying)."""
        if self.sleep is not None:
            self.sleep(delay)
        elif failed is not None:
            return not failed.wait(delay)
        else:
            time.sleep(delay)
        return failed is None or not failed.is_set()

    async def apause(self, delay: float) -> None:
        """:meth:`pause` on the event loop (a failed call cancels its other requests instead)."""
        if self.sleep is not None:
            self.sleep(delay)
        else:
            await asyncio.sleep(delay)


class _Waiter:
    """A caller waiting for a slot: a thread (an event) or a task on an event loop (a future)."""

    __slots__ = ("event", "future", "loop")

    def __init__(
        self,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.event, self.loop, self.future = event, loop, future


class _Slots:
    """The one bound on requests in flight, taken by threads and by tasks alike, first come first served.

    A counting semaphore under a ``threading.Lock``: a thread waits on an event of its own, a task on a
    future of its own that a release completes through ``call_soon_threadsafe``, so a task never blocks
    its event loop while it waits.
    """

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._free = count
        self._waiters: collections.deque[_Waiter] = collections.deque()

    def acquire(self) -> None:
        """Take a slot, blocking this thread until one is free."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            waiter = _Waiter(event=threading.Event())
            self._waiters.append(waiter)
        assert waiter.event is not None
        try:
            waiter.event.wait()
        except BaseException:  # interrupted: give the slot back if it came meanwhile
            with self._lock:
                granted = waiter not in self._waiters
                if not granted:
                    self._waiters.remove(waiter)
            if granted:
                self.release()
            raise

    async def aacquire(self) -> None:
        """Take a slot, waiting without blocking the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            future: asyncio.Future[None] = loop.create_future()
            waiter = _Waiter(loop=loop, future=future)
            self._waiters.append(waiter)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                waiting = waiter in self._waiters
                if waiting:
                    self._waiters.remove(waiter)
            if not waiting and future.done() and not future.cancelled():
                self.release()  # granted just before the cancel: pass it on
            # else granted but not yet delivered: _deliver sees the cancelled future and passes it on
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, or to the pool."""
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            waiter = self._waiters.popleft()
        if waiter.event is not None:
            waiter.event.set()
        else:
            assert waiter.loop is not None
            assert waiter.future is not None
            try:
                waiter.loop.call_soon_threadsafe(self._deliver, waiter.future)
            except RuntimeError:  # its loop is closed: nobody waits there any more
                self.release()

    def _deliver(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            self.release()
        else:
            future.set_result(None)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @contextlib.asynccontextmanager
    async def aheld(self) -> AsyncIterator[None]:
        await self.aacquire()
        try:
            yield
        finally:
            self.release()


_T = TypeVar("_T")


class _Workers:
    """Daemon threads that send the requests of sync calls side by side; made on demand, kept until closed.

    At most ``limit`` threads (more could only wait for a slot). Daemon threads, because the interpreter
    would wait at exit for a ``ThreadPoolExecutor``'s, held by an engine that never answers.
    """

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # submitted jobs not yet finished

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        future: Future[_T] = Future()
        with self._lock:
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self._limit:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put((future, fn, args))
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            del job  # hold nothing of the engine while idle, so a dropped engine can be collected
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # the caller gets it, as from an executor
                    future.set_exception(exc)
            del future, fn, args
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """Let the threads end once the jobs already queued are done (not waiting for them)."""
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)


class _Resources:
    """What a :class:`RemoteEngine` makes on first use and :meth:`close` ends: the sync client, the worker
    threads, and the event-loop thread with its async client. Holds nothing of the engine, so it can
    close them from the engine's finalizer."""

    def __init__(self, name: str, shown: str) -> None:
        self.name = name
        self.shown = shown
        self.closed = False
        self.lock = threading.Lock()
        self.client: httpx.Client | None = None
        self.workers: _Workers | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.aclient: httpx.AsyncClient | None = None  # only touched on the loop's thread

    def closed_error(self) -> RerankError:
        return RerankError(f"{self.shown}: the engine is closed; create a new one to score again")

    def sync_client(self, make: Callable[[], httpx.Client]) -> httpx.Client:
        with self.lock:
            if self.closed:
                raise self.closed_error()
            if self.client is None:
                self.client = make()
            return self.client

    def worker_pool(self, limit: int) -> _Workers:
        with self.lock:
            if self.closed:
                raise self.closed_error()
            if self.workers is None:
                self.workers = _Workers(limit, self.name)
            return self.workers

    def event_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.closed:
                raise self.closed_error()
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                self.thread = threading.Thread(
                    target=_run_loop, args=(self.loop,), name=f"{self.name}-loop", daemon=True
                )
                self.thread.start()
            return self.loop

    def begin_close(self) -> Future[None] | None:
        """Close the sync side now; ask the loop to cancel its tasks, close its client and stop.

        Returns the loop's shutdown (done once its client is closed), ``None`` if there is no loop.
        """
        with self.lock:
            self.closed = True
            client, workers, loop = self.client, self.workers, self.loop
            self.client, self.workers, self.loop = None, None, None
        if workers is not None:
            workers.close()
        if client is not None:
            client.close()
        if loop is None:
            return None
        shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        shutdown.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
        return shutdown

    async def _shutdown(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        aclient, self.aclient = self.aclient, None
        if aclient is not None:
            await aclient.aclose()

    def close(self) -> None:
        """Close everything and wait for the loop thread to end (unless called on it)."""
        thread = self.thread
        shutdown = self.begin_close()
        if shutdown is None or thread is None or thread is threading.current_thread():
            return
        shutdown.result()
        thread.join()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The engine's event-loop thread: runs until stopped, then closes the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


@dataclass(frozen=True)
class _Request:
    """One ``/rerank`` call: a query, some of its passages, and where their scores go."""

    query: str
    positions: tuple[int, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class _RetryIn:
    """An attempt failed in a way a later one may not: try again after ``delay`` seconds."""

    delay: float


class RemoteEngine:
    """Scores pairs with a serving engine's ``/rerank`` and returns raw logits, like the local backend.

    No queue: the engine batches across connections itself, so every call goes out at once, split into
    requests of at most ``max_texts_per_request`` passages (one query each), sent side by side.

    One bound on the requests in flight, ``max_concurrent_requests``, across every sync and async caller
    of this engine: a slot counter under one lock (``_Slots``), which threads wait for on an event and
    tasks on a future, so an async caller never blocks its loop. One counter, because two (a thread
    semaphore and an asyncio one) would let each side fill the bound. The sync path sends on the
    caller's thread (a call of several requests on engine-owned worker threads) with an
    ``httpx.Client``; the async path sends with an ``httpx.AsyncClient`` as tasks on an event loop the
    engine owns (one thread, whatever the number of calls), so the client outlives any caller's loop
    (each ``asyncio.run`` and each pytest-asyncio test has its own) and :meth:`close` can close it from
    any thread. Both paths share the request plan, the body, the reply parsing, the retry decisions and
    the error messages; they differ only in the waiting.

    Clients and threads are made on first use and kept until :meth:`close` (or :meth:`aclose`, or the
    engine being garbage-collected). After ``close`` every call raises :class:`RerankError`, as a closed
    ``httpx`` client does; calls in flight then end with it too.

    Example:
        >>> engine = RemoteEngine(RerankerConfig(backend="tei", base_url="http://127.0.0.1:8080"))
        >>> rr = Reranker.from_config(engine.config, engine=engine)
        >>> rr.score("what is a panda?", ["The giant panda is a bear.", "hi"])
    """

    def __init__(
        self,
        config: RerankerConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Check the settings and pick the dialect; clients are made on first use.

        Args:
            config: the settings (``backend``, ``base_url``, ``api_key_env``, ``request_timeout``,
                ``max_concurrent_requests``, ``max_texts_per_request``, ``verify_tls``, ``model``).
            transport: the ``httpx`` transport of the sync calls (``httpx.MockTransport`` in a test, a
                proxy or custom TLS set-up); ``None`` is httpx's own.
            async_transport: the same for :meth:`ascore`.
            retry: attempts and backoff; ``None`` is :class:`RetryPolicy`'s defaults.

        Raises:
            ValueError: ``backend`` is not a remote engine, or ``base_url`` is missing or not http(s).
        """
        dialect = _DIALECTS.get(config.backend)
        if dialect is None:
            raise ValueError(
                f"backend must be one of {', '.join(_DIALECTS)} for RemoteEngine; got {config.backend!r}"
            )
        base_url = config.base_url or dialect.default_base_url
        if not base_url:
            raise ValueError(f"backend={config.backend!r} needs base_url, the serving engine's root URL")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.config = config
        self._dialect = dialect(model=config.model)
        self._url = base_url.rstrip("/") + dialect.path
        # Shown in errors, logs and repr: without any user:password@ part of base_url.
        self._shown_url = str(httpx.URL(self._url).copy_with(username=None, password=None))
        self._max_texts = config.max_texts_per_request or dialect.default_max_texts
        self._transport = transport
        self._async_transport = async_transport
        self._retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._headers: dict[str, str] | None = None
        self._closed = False
        self._slots = _Slots(config.max_concurrent_requests)
        self._resources = _Resources(
            f"bge-rerank-remote-{dialect.engine}", f"{dialect.engine} at {self._shown_url}"
        )
        # An engine collected without close() still closes its connections and ends its threads.
        self._finalizer = weakref.finalize(self, self._resources.close)
        self._finalizer.atexit = False

    def __repr__(self) -> str:
        engine, url = self._dialect.engine, self._shown_url
        state = "closed" if self._closed else f"loaded={self.is_loaded}"
        return f"{type(self).__name__}(engine={engine!r}, url={url!r}, {state})"

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy is a new, unloaded engine with the same settings, transports and retry policy."""
        rebuild = functools.partial(
            type(self), transport=self._transport, async_transport=self._async_transport, retry=self._retry
        )
        return (rebuild, (self.config,))

    @property
    def retry(self) -> RetryPolicy:
        """The attempts and backoff of every request."""
        return self._retry

    @property
    def is_loaded(self) -> bool:
        """Whether the credentials are read and the engine is open (nothing is sent to the server)."""
        return self._headers is not None and not self._closed

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` or :meth:`aclose` has closed this engine."""
        return self._closed

    def load(self) -> None:
        """Read the API key from ``api_key_env`` once; thread-safe. Clients are made on first use.

        Raises:
            RemoteBackendError: ``api_key_env`` names an environment variable that is unset or empty.
            RerankError: the engine is closed.
        """
        self._check_open()
        if self._headers is not None:
            return
        with self._lock:
            if self._headers is None:
                self._headers = self._make_headers()

    def close(self) -> None:
        """Close the connections and end the engine's threads; idempotent. Later calls raise."""
        self._closed = True
        self._finalizer()  # closes, once

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop while the async client closes."""
        self._closed = True
        if self._finalizer.detach() is None:
            return  # already closed
        shutdown = self._resources.begin_close()
        if shutdown is not None:
            await asyncio.wrap_future(shutdown)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> RerankError:
        return self._resources.closed_error()

    def check_options(self, options: ScoringOptions | None) -> None:
        """Refuse scoring options a serving engine cannot honour (the same check as the settings').

        ``max_length`` and ``query_max_length`` are accepted and not sent: the engine truncates itself.

        Raises:
            ValueError: ``long_passages="window"``, or an option of LLM rerankers (``prompt``,
                ``cutoff_layers``, ``compress_ratio``, ``compress_layers``) that is not ``None``.
        """
        if options is not None:
            check_remote_scoring(options)

    # --- sync -----------------------------------------------------------------------------------

    def score(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions | None = None) -> list[float]:
        """Raw logits of ``pairs`` in input order: one request per query and chunk of passages.

        ``options`` (``None``: the defaults) are checked, not sent: see :meth:`check_options`.

        Raises:
            ValueError: ``options`` the engine cannot honour (see :meth:`check_options`).
            RemoteBackendError: a request failed for good (after retries where they make sense) or a
                reply was malformed.
            RerankError: the engine is closed.
        """
        self.check_options(options)
        if not pairs:
            return []
        self.load()
        client = self._resources.sync_client(self._make_client)
        requests = self._plan(pairs)
        if len(requests) == 1:
            return self._assemble(len(pairs), requests, [self._send(client, requests[0], None)])
        workers = self._resources.worker_pool(self.config.max_concurrent_requests)
        failed = threading.Event()  # once one request fails for good, the others stop retrying
        futures = [workers.submit(self._send, client, r, failed) for r in requests]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = (f.exception() for f in futures if f in done)
            first_error = next((e for e in errors if e is not None), None)
            if first_error is not None:
                raise first_error
        except BaseException:  # a failed request, or an interrupt while waiting
            failed.set()
            for future in futures:
                future.cancel()
            raise
        return self._assemble(len(pairs), requests, [f.result() for f in futures])

    def _send(self, client: httpx.Client, request: _Request, failed: threading.Event | None) -> list[float]:
        """POST one request, retrying what may pass on a later try; returns its raw logits."""
        body = self._dialect.request_body(request.query, request.texts)
        for attempt in range(1, self._retry.attempts + 1):
            with self._slots.held():
                if failed is not None and failed.is_set():
                    raise self._error("abandoned: another request of the same call failed")
                self._check_open()
                try:
                    response, error = self._post(client, body), None
                except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: closed meanwhile
                    response, error = None, exc
            outcome = self._judge(request, attempt, response, error)
            if not isinstance(outcome, _RetryIn):
                return outcome
            if not self._retry.pause(outcome.delay, failed):
                raise self._error("abandoned: another request of the same call failed")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _post(self, client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
        """POST ``body`` and read the whole reply, abandoned once it has taken ``request_timeout``.

        httpx's timeout bounds each network operation, not the request (encode/httpx#1450): a reply
        whose bytes trickle in, each within the timeout, would hold the call for ever without this.
        """
        deadline = time.monotonic() + self.config.request_timeout
        with client.stream("POST", self._url, json=body) as response:
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _Deadline(response.stream, deadline, response.request)
            response.read()
        return response

    # --- async ----------------------------------------------------------------------------------

    async def ascore(
        self, pairs: Sequence[tuple[str, str]], options: ScoringOptions | None = None
    ) -> list[float]:
        """:meth:`score` as a coroutine: the requests run as tasks on the engine's event loop.

        Cancelling the awaiting task cancels its requests.
        """
        self.check_options(options)
        if not pairs:
            return []
        self.load()
        loop = self._resources.event_loop()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._ascore(list(pairs)), loop))

    async def _ascore(self, pairs: list[tuple[str, str]]) -> list[float]:
        """:meth:`ascore` on the engine's loop: the call's requests side by side, cancelled together."""
        try:
            self._check_open()
            client = self._async_client()
            requests = self._plan(pairs)
            tasks = [asyncio.ensure_future(self._asend(client, r)) for r in requests]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                errors = (t.exception() for t in tasks if t in done)
                first_error = next((e for e in errors if e is not None), None)
                if first_error is not None:
                    raise first_error
            except BaseException:  # a failed request, or the caller cancelled: stop the others
                for task in tasks:
                    task.add_done_callback(_retrieve)
                    task.cancel()
                raise
            return self._assemble(len(pairs), requests, [t.result() for t in tasks])
        except asyncio.CancelledError:
            if self._closed:  # cancelled by close(), not by the caller
                raise self._closed_error() from None
            raise

    def _async_client(self) -> httpx.AsyncClient:
        resources = self._resources
        if resources.aclient is None:
            resources.aclient = httpx.AsyncClient(transport=self._async_transport, **self._client_settings())
        return resources.aclient

    async def _asend(self, client: httpx.AsyncClient, request: _Request) -> list[float]:
        """:meth:`_send` on the event loop."""
        body = self._dialect.request_body(request.query, request.texts)
        for attempt in range(1, self._retry.attempts + 1):
            async with self._slots.aheld():
                self._check_open()
                try:
                    response, error = await self._apost(client, body), None
                except (httpx.HTTPError, RuntimeError) as exc:
                    response, error = None, exc
            outcome = self._judge(request, attempt, response, error)
            if not isinstance(outcome, _RetryIn):
                return outcome
            await self._retry.apause(outcome.delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _apost(self, client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
        """:meth:`_post` on the event loop: the reply is abandoned past ``request_timeout`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout
        async with client.stream("POST", self._url, json=body) as response:
            try:
                async with asyncio.timeout_at(deadline):
                    await response.aread()
            except TimeoutError:
                raise httpx.ReadTimeout(
                    "the reply took longer than request_timeout", request=response.request
                ) from None
        return response

    # --- shared by both paths -------------------------------------------------------------------

    def _make_headers(self) -> dict[str, str]:
        from bge_rerank_integrations import __version__

        cfg = self.config
        headers = {"Accept": "application/json", "User-Agent": f"bge-rerank-integrations/{__version__}"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "").strip()
            if not key:
                raise self._error(
                    f"the environment variable {cfg.api_key_env} (api_key_env) is not set or empty; "
                    "export the API key in it"
                )
            headers["Authorization"] = f"Bearer {key}"  # httpx shows it as [secure] in any repr
        return headers

    def _client_settings(self) -> dict[str, Any]:
        """The keywords of both clients (headers from :meth:`load`)."""
        cfg = self.config
        assert self._headers is not None
        return {
            "headers": self._headers,
            "timeout": httpx.Timeout(cfg.request_timeout),
            "verify": cfg.verify_tls,
            # Requests in flight are bounded by self._slots; the pool only keeps connections.
            "limits": httpx.Limits(
                max_connections=None, max_keepalive_connections=cfg.max_concurrent_requests
            ),
        }

    def _make_client(self) -> httpx.Client:
        return httpx.Client(transport=self._transport, **self._client_settings())

    def _plan(self, pairs: Sequence[tuple[str, str]]) -> list[_Request]:
        """Group pairs by query (first-seen order), then split each group into near-equal chunks."""
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(i)
        requests: list[_Request] = []
        for query, positions in groups.items():
            limit = self._max_texts or len(positions)
            chunks = -(-len(positions) // limit)
            size, extra = divmod(len(positions), chunks)
            start = 0
            for c in range(chunks):
                end = start + size + (1 if c < extra else 0)
                chunk = tuple(positions[start:end])
                start = end
                if chunk:  # never send an empty request (Infinity refuses one with 422)
                    requests.append(_Request(query, chunk, tuple(pairs[i][1] for i in chunk)))
        return requests

    @staticmethod
    def _assemble(count: int, requests: Sequence[_Request], values: Sequence[list[float]]) -> list[float]:
        """The scores of every request, placed back at their pairs' positions."""
        scores = [math.nan] * count
        for request, request_values in zip(requests, values, strict=True):
            for position, value in zip(request.positions, request_values, strict=True):
                scores[position] = value
        return scores

    def _judge(
        self,
        request: _Request,
        attempt: int,
        response: httpx.Response | None,
        error: httpx.HTTPError | RuntimeError | None,
    ) -> list[float] | _RetryIn:
        """What one attempt came to: its raw logits, or a retry after a wait; raises if it failed for good."""
        attempts = self._retry.attempts
        if self._closed:
            raise self._closed_error() from error
        if isinstance(error, RuntimeError):
            raise error
        if isinstance(error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
            if attempt == attempts:
                raise self._transport_error(error, attempts) from error
            delay = self._retry.backoff(attempt)
            self._log_retry(type(error).__name__, attempt, delay)
            return _RetryIn(delay)
        if error is not None:  # unsupported protocol, proxy errors: retrying will not help
            raise self._error(f"request failed: {type(error).__name__}: {error}") from error
        assert response is not None
        if response.is_success:
            return self._parse(response, len(request.texts))
        if response.status_code in _RETRY_STATUSES and attempt < attempts:
            retry_after = self._retry_after(response)
            delay = self._retry.backoff(attempt) if retry_after is None else retry_after
            self._log_retry(f"HTTP {response.status_code}", attempt, delay)
            return _RetryIn(delay)
        raise self._status_error(response, len(request.texts), attempt)

    def _log_retry(self, what: str, attempt: int, delay: float) -> None:
        logger.warning(
            "%s at %s: %s; retry %d of %d in %.1f s",
            self._dialect.engine,
            self._shown_url,
            what,
            attempt,
            self._retry.attempts - 1,
            delay,
        )

    def _retry_after(self, response: httpx.Response) -> float | None:
        """Seconds asked for by ``Retry-After`` (seconds or an HTTP date), capped; ``None`` if absent."""
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        if not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), self._retry.max_delay)

    def _parse(self, response: httpx.Response, count: int) -> list[float]:
        """Scores of one reply as raw logits, in request order."""
        try:
            values = self._dialect.parse(response.json(), count)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise self._error("the reply is not JSON", response) from exc
        except _MalformedReplyError as exc:
            raise self._error(f"malformed reply: {exc}", response) from None
        if not self._dialect.returns_probabilities:
            return values
        bad = [p for p in values if not 0.0 <= p <= 1.0]
        if bad:
            raise self._error(
                f"malformed reply: relevance_score {bad[0]} is outside 0..1 (this engine is expected to "
                "return probabilities)",
                response,
            )
        return [_logit(p) for p in values]

    def _status_error(self, response: httpx.Response, count: int, attempts: int) -> RemoteBackendError:
        """An error for a non-2xx reply that says what to change."""
        status = response.status_code
        body = response.text
        cfg = self.config
        if status in (401, 403):
            if cfg.api_key_env:
                hint = f"the server refused the credentials: check the API key in ${cfg.api_key_env}"
            else:
                hint = "the server wants credentials: set api_key_env to the variable holding the API key"
        elif status == 404:
            hint = (
                f"nothing serves {self._dialect.path} here: base_url must be the engine's root URL "
                f"(got {cfg.base_url!r})"
            )
        elif "batch size" in body.lower() or (status == 413 and not _LENGTH_WORDS.search(body)):
            hint = (
                f"the request of {count} texts is too large for the server: lower max_texts_per_request "
                f"(now {self._max_texts}) or raise the server's limit (TEI: --max-client-batch-size)"
            )
        elif status in (400, 413, 422) and _LENGTH_WORDS.search(body):
            hint = (
                "an input is longer than the server accepts: truncate the passages, or start the engine "
                "with a larger maximum input length"
            )
        elif status == 429 or status >= 500:
            hint = f"still failing after {attempts} attempts"
            if status == 429:
                hint += f": lower max_concurrent_requests (now {cfg.max_concurrent_requests}) or try later"
        elif status in (400, 422):
            hint = f"the server refused the request (model {cfg.model!r}, {count} texts); see its reply"
        elif 300 <= status < 400:
            hint = f"redirected to {response.headers.get('Location', '?')}: set base_url to the final URL"
        else:
            hint = "unexpected reply"
        return self._error(hint, response)

    def _transport_error(self, exc: httpx.HTTPError, attempts: int) -> RemoteBackendError:
        if isinstance(exc, httpx.TimeoutException):
            message = (
                f"no reply within request_timeout={self.config.request_timeout:g} s "
                f"({type(exc).__name__}) after {attempts} attempts: raise request_timeout or lower "
                f"max_texts_per_request (now {self._max_texts})"
            )
        else:
            message = (
                f"cannot reach the server ({type(exc).__name__}: {exc}) after {attempts} attempts: "
                "check base_url and that the engine is running"
            )
        return self._error(message)

    def _error(self, message: str, response: httpx.Response | None = None) -> RemoteBackendError:
        return RemoteBackendError(
            message,
            engine=self._dialect.engine,
            url=self._shown_url,
            status=response.status_code if response is not None else None,
            body=response.text if response is not None else "",
        )


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a cancelled sibling's outcome as seen (asyncio logs exceptions nobody retrieved)."""
    if not task.cancelled():
        task.exception()


class _Deadline(httpx.SyncByteStream):
    """A reply's body that raises ``httpx.ReadTimeout`` (retried like any timeout) past a deadline."""

    def __init__(self, stream: httpx.SyncByteStream, deadline: float, request: httpx.Request) -> None:
        self._stream = stream
        self._deadline = deadline
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout("the reply took longer than request_timeout", request=self._request)
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _logit(p: float) -> float:
    """Inverse of the sigmoid, with ``p`` clamped so that 0 and 1 give finite logits."""
    p = min(max(p, _P_CLAMP), 1.0 - _P_CLAMP)
    return math.log(p) - math.log1p(-p)
