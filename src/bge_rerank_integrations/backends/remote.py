"""Score pairs through a serving engine's ``/rerank``: TEI, vLLM, Infinity or a Cohere v2 compatible API.

Each engine's dialect is one small class that builds the request body and reads the reply; the
:class:`RemoteBackend` does the rest, the same for every engine: it groups pairs by query, splits each
group into requests of at most ``max_texts_per_request`` passages, keeps at most
``max_concurrent_requests`` of them in flight (across every call at once), retries 429, 5xx,
timeouts and connection errors with exponential backoff (honouring ``Retry-After``), maps each
result back by its ``index`` and returns raw logits, the scale the local backend gives.

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

import email.utils
import logging
import math
import os
import queue
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import httpx

from bge_rerank_integrations.config import RerankerConfig
from bge_rerank_integrations.errors import RemoteBackendError

__all__ = ["CohereDialect", "Dialect", "InfinityDialect", "RemoteBackend", "TEIDialect", "VLLMDialect"]

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
class _RetryPolicy:
    """Attempts per request and the exponential backoff between them (jittered, capped)."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] | None = None
    """Replaces the real wait (tests record the delays instead of waiting)."""

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) when the server gave no hint."""
        return random.uniform(0.5, 1.0) * min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))

    def pause(self, delay: float, failed: threading.Event | None) -> bool:
        """Wait ``delay`` seconds; ``False`` if the call failed meanwhile (then stop retrying)."""
        if self.sleep is not None:
            self.sleep(delay)
        elif failed is not None:
            return not failed.wait(delay)
        else:
            time.sleep(delay)
        return failed is None or not failed.is_set()


_T = TypeVar("_T")


class _DaemonPool:
    """The ``submit`` and ``with`` of a ``ThreadPoolExecutor``, on daemon threads.

    The interpreter waits for a ``ThreadPoolExecutor``'s threads at exit, so requests stuck on an
    engine that never answers would hold up shutdown for their timeouts and retries; daemon threads
    do not. Leaving the ``with`` block waits for the submitted calls, as the executor does.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        future: Future[_T] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # the caller gets it, as from an executor
                    future.set_exception(exc)

    def __enter__(self) -> _DaemonPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


@dataclass(frozen=True)
class _Request:
    """One ``/rerank`` call: a query, some of its passages, and where their scores go."""

    query: str
    positions: tuple[int, ...]
    texts: tuple[str, ...]


class RemoteBackend:
    """Scores pairs with a serving engine's ``/rerank`` and returns raw logits, like the local backend.

    Example:
        >>> rr = Reranker(backend="tei", base_url="http://127.0.0.1:8080")
        >>> rr.score("what is a panda?", ["The giant panda is a bear.", "hi"])
    """

    def __init__(
        self,
        config: RerankerConfig,
        *,
        _transport: httpx.BaseTransport | None = None,
        _retry: _RetryPolicy | None = None,
    ) -> None:
        """Check the settings and pick the dialect; the HTTP client is made in :meth:`load`.

        Raises:
            ValueError: ``backend`` is not a remote engine, or ``base_url`` is missing or not http(s).
        """
        dialect = _DIALECTS.get(config.backend)
        if dialect is None:
            raise ValueError(
                f"backend must be one of {', '.join(_DIALECTS)} for RemoteBackend; got {config.backend!r}"
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
        self._transport = _transport
        self._retry = _retry or _RetryPolicy()
        self._client: httpx.Client | None = None
        self._closer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()
        # One bound for every call at once: the queue runs several calls side by side (see pass_tokens).
        self._slots = threading.BoundedSemaphore(config.max_concurrent_requests)

    def __repr__(self) -> str:
        engine, url = self._dialect.engine, self._shown_url
        return f"{type(self).__name__}(engine={engine!r}, url={url!r}, loaded={self.is_loaded})"

    @property
    def is_loaded(self) -> bool:
        """Whether the HTTP client is ready (nothing is sent to the server to check)."""
        return self._client is not None

    @property
    def pass_tokens(self) -> int:
        """1: every caller's request goes alone, on its own worker (the ``Reranker`` runs several).

        The engine batches across connections itself, and pairs of different queries become separate
        HTTP requests anyway, so grouping callers would only make each wait for the others' replies.
        """
        return 1

    def load(self) -> None:
        """Make the HTTP client once, reading the API key from ``api_key_env``; thread-safe.

        Raises:
            RemoteBackendError: ``api_key_env`` names an environment variable that is unset or empty.
        """
        if self._client is not None:
            return
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
                # A backend collected without close() still closes its connections.
                self._closer = weakref.finalize(self, self._client.close)
                self._closer.atexit = False

    def close(self) -> None:
        """Close the HTTP connections; a later call makes a new client."""
        with self._lock:
            closer, self._closer, self._client = self._closer, None, None
        if closer is not None:
            closer()  # closes the client, once

    def _make_client(self) -> httpx.Client:
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
        return httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(cfg.request_timeout),
            verify=cfg.verify_tls,
            transport=self._transport,
            # Requests in flight are bounded by self._slots; the pool only keeps connections.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=cfg.max_concurrent_requests),
        )

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw logits of ``pairs`` in input order: one request per query and chunk of passages.

        Raises:
            RemoteBackendError: a request failed for good (after retries where they make sense) or a
                reply was malformed.
        """
        if not pairs:
            return []
        self.load()
        requests = self._plan(pairs)
        scores = [math.nan] * len(pairs)
        workers = min(self.config.max_concurrent_requests, len(requests))
        if workers <= 1:
            for request in requests:
                self._place(scores, request, self._send(request, None))
            return scores
        failed = threading.Event()  # once one request fails for good, the others stop retrying
        with _DaemonPool(workers, "bge-rerank-remote") as pool:
            futures: list[Future[list[float]]] = [pool.submit(self._send, r, failed) for r in requests]
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
        for request, future in zip(requests, futures, strict=True):
            self._place(scores, request, future.result())
        return scores

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
    def _place(scores: list[float], request: _Request, values: list[float]) -> None:
        for position, value in zip(request.positions, values, strict=True):
            scores[position] = value

    def _send(self, request: _Request, failed: threading.Event | None) -> list[float]:
        """POST one request, retrying what may pass on a later try; returns its raw logits."""
        client = self._client
        assert client is not None
        body = self._dialect.request_body(request.query, request.texts)
        attempts = self._retry.attempts
        delay = 0.0
        for attempt in range(1, attempts + 1):
            if attempt > 1 and not self._retry.pause(delay, failed):
                raise self._error("abandoned: another request of the same call failed")
            try:
                with self._slots:
                    if failed is not None and failed.is_set():
                        raise self._error("abandoned: another request of the same call failed")
                    response = self._post(client, body)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if attempt == attempts:
                    raise self._transport_error(exc, attempts) from exc
                delay = self._retry.backoff(attempt)
                logger.warning(
                    "%s at %s: %s; retry %d of %d in %.1f s",
                    self._dialect.engine,
                    self._shown_url,
                    type(exc).__name__,
                    attempt,
                    attempts - 1,
                    delay,
                )
                continue
            except httpx.HTTPError as exc:  # unsupported protocol, proxy errors: retrying will not help
                raise self._error(f"request failed: {type(exc).__name__}: {exc}") from exc
            if response.is_success:
                return self._parse(response, len(request.texts))
            if response.status_code in _RETRY_STATUSES and attempt < attempts:
                retry_after = self._retry_after(response)
                delay = self._retry.backoff(attempt) if retry_after is None else retry_after
                logger.warning(
                    "%s at %s: HTTP %d; retry %d of %d in %.1f s",
                    self._dialect.engine,
                    self._shown_url,
                    response.status_code,
                    attempt,
                    attempts - 1,
                    delay,
                )
                continue
            raise self._status_error(response, len(request.texts), attempt)
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
