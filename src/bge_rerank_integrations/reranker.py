"""``Reranker``: score passages against a query with bge-reranker-v2-m3, in input order.

One class with a clear split: construction stores settings (cheap), :meth:`Reranker.load` or the
first call loads the model, :meth:`Reranker.score` returns one float per passage in input order and
:meth:`Reranker.rank` sorts them. :meth:`Reranker.shared` gives one instance per process per settings,
which is how the framework adapters share one queue; local rerankers whose settings load the same
weights share one loaded model whatever their scoring options. :meth:`Reranker.close` (or ``with``)
ends its threads and drops its weights and connections; a reranker nobody references does so too.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from bge_rerank_integrations.backends.base import Backend, Engine
from bge_rerank_integrations.config import DEFAULT_MODEL, BackendName, DType, LongPassages, RerankerConfig
from bge_rerank_integrations.errors import RerankError
from bge_rerank_integrations.scheduler import BatchScheduler

__all__ = ["RerankResult", "Reranker", "check_top", "rank_scores", "sigmoid"]


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One ranked passage: its position in the caller's input and its score."""

    index: int
    score: float


def sigmoid(logit: float) -> float:
    """Logistic function in float64, without overflow for large negative logits."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


# A shared batch is closed once it holds about one forward pass of pairs (the backend's
# ``pass_tokens``): small requests share passes, while a request that fills a pass on its own runs
# alone and answers without waiting for the requests queued behind it.
_TYPICAL_PAIR_TOKENS = 128


def _pass_pairs(backend: Backend) -> int:
    return backend.pass_tokens // _TYPICAL_PAIR_TOKENS


class Reranker:
    """A cross-encoder reranker (bge-reranker-v2-m3 by default) with a framework-free API.

    Example:
        >>> rr = Reranker("BAAI/bge-reranker-v2-m3")             # nothing loaded yet
        >>> rr.score("what is a panda?", ["The giant panda is a bear.", "hi"])
        [5.26, -8.19]
        >>> rr.rank("what is a panda?", ["hi", "The giant panda is a bear."], top_n=1)
        [RerankResult(index=1, score=5.26)]
        >>> with Reranker("BAAI/bge-reranker-v2-m3") as rr:  # closed (threads, weights) on exit
        ...     rr.score("what is a panda?", ["hi"])

    Copies (``copy``, ``pickle``) carry the settings, never the model: a copy of a shared reranker is
    the receiving process's shared one for those settings, a copy of an unshared one a new unshared
    one; nothing loads until the copy is used.
    """

    _shared: ClassVar[dict[RerankerConfig, Reranker]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | Sequence[str] | None = None,
        dtype: DType | str = "auto",
        max_length: int = 512,
        query_max_length: int | None = None,
        max_batch_tokens: int = 16384,
        long_passages: LongPassages = "truncate",
        window_overlap: int | None = None,
        max_windows: int = 16,
        normalize: bool = False,
        batch_wait_ms: float = 0.0,
        revision: str | None = None,
        token: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        backend: BackendName = "local",
        base_url: str | None = None,
        api_key_env: str | None = None,
        request_timeout: float = 60.0,
        max_concurrent_requests: int = 4,
        max_texts_per_request: int | None = None,
        verify_tls: bool = True,
    ) -> None:
        """Store the settings (see :class:`RerankerConfig`); the model loads on first use."""
        config = RerankerConfig(
            model=os.fspath(model),
            device=device if device is None or isinstance(device, str) else tuple(device),
            dtype=dtype,  # type: ignore[arg-type]  # aliases are validated and canonicalised
            max_length=max_length,
            query_max_length=query_max_length,
            max_batch_tokens=max_batch_tokens,
            long_passages=long_passages,
            window_overlap=window_overlap,
            max_windows=max_windows,
            normalize=normalize,
            batch_wait_ms=batch_wait_ms,
            revision=revision,
            token=token,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            backend=backend,
            base_url=base_url,
            api_key_env=api_key_env,
            request_timeout=request_timeout,
            max_concurrent_requests=max_concurrent_requests,
            max_texts_per_request=max_texts_per_request,
            verify_tls=verify_tls,
        )
        self._init_from_config(config)

    def _init_from_config(
        self,
        config: RerankerConfig,
        backends: Sequence[Backend] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.config = config
        self._backends: list[Backend] = []
        self._given_backends = backends is not None
        self._given_engine = engine is not None
        if engine is None and backends is None and config.backend != "local":
            from bge_rerank_integrations.backends.remote import RemoteEngine

            engine = RemoteEngine(config)  # not through the queue: the serving engine batches itself
        # A remote engine is called directly: no queue, the serving engine batches across connections.
        self._engine = engine
        self._scheduler: BatchScheduler | None = None
        self._closed = False
        self._is_shared = False  # made by shared_from_config, which counts its holders in _holds
        self._holds = 0
        if engine is not None:
            return
        if backends is not None:
            if not backends:
                raise ValueError("backends must hold at least one backend")
            self._backends = list(backends)
        elif config.backend == "local":
            from bge_rerank_integrations.backends.local import LocalBackend

            self._backends = [LocalBackend(config, device) for device in config.devices]
        # Given backends under a remote setting get several calls in flight side by side.
        workers = (
            self._backends if config.backend == "local" else self._backends * config.max_concurrent_requests
        )
        # Every call goes through one queue, so concurrent callers share forward passes; with several
        # devices each replica's worker takes the next batch when it is free. The replicas refer to
        # their backend, never to this reranker, so the worker threads do not keep it alive.
        self._scheduler = BatchScheduler(
            [functools.partial(_checked_logits, backend, config.dtype) for backend in workers],
            max_wait=config.batch_wait_ms / 1000,
            max_pairs=[functools.partial(_pass_pairs, backend) for backend in workers],
        )

    @property
    def _backend(self) -> Backend:
        """The first (usually the only) replica."""
        return self._backends[0]

    @classmethod
    def from_config(
        cls,
        config: RerankerConfig,
        backends: Sequence[Backend] | None = None,
        engine: Engine | None = None,
    ) -> Reranker:
        """A new (unshared) reranker with these settings.

        Args:
            config: the settings.
            backends: ready objects that compute the logits (see :class:`~.backends.base.Backend`),
                one per model replica, instead of the ones ``config`` describes: a seam for a custom
                engine, or for a test that injects faults. ``config`` still sets the rest (``normalize``,
                ``batch_wait_ms``, and with a remote ``backend`` setting, the calls in flight per
                backend). The reranker owns them: :meth:`close` closes them, and a copy of the
                reranker copies them.
            engine: a ready engine (see :class:`~.backends.base.Engine`; say a
                :class:`~.backends.remote.RemoteEngine` with an httpx ``transport=``) to call instead of
                the one ``config`` describes, directly (no queue); owned the same way.
        """
        if backends is not None and engine is not None:
            raise ValueError("give backends or engine, not both")
        self = cls.__new__(cls)
        self._init_from_config(config, backends, engine)
        return self

    @classmethod
    def shared(cls, model: str | os.PathLike[str] = DEFAULT_MODEL, **settings: Any) -> Reranker:
        """The process-wide instance for these settings, created on first request.

        Every adapter built with the same settings gets the same instance (one queue, so concurrent
        calls share forward passes). Settings are compared as given: ``device=None`` and
        ``device="cpu"`` are two instances. The weights are in memory once either way: every local
        reranker whose settings load the same weights (model, revision, token, cache, local-files-only,
        trust-remote-code, the device and dtype they resolve to) shares one loaded copy, whatever its
        scoring options (lengths, windows, batch budget, normalization).

        The instance stays (loaded) until closed: each call takes a hold on it and each :meth:`close`
        gives one back; the last one given back closes it, and the next call makes a new one.
        """
        return cls.shared_from_config(RerankerConfig(model=os.fspath(model), **settings))

    @classmethod
    def shared_from_config(cls, config: RerankerConfig) -> Reranker:
        """The process-wide instance for ``config``, with a hold taken on it (see :meth:`shared`)."""
        with cls._shared_lock:
            instance = cls._shared.get(config)
            if instance is None:
                instance = cls._shared[config] = cls.from_config(config)
                instance._is_shared = True
            instance._holds += 1
            return instance

    def __reduce__(self) -> tuple[Any, ...]:
        """Copy and pickle the settings, never the model or threads (see the class docstring)."""
        if self._given_engine:
            return (type(self).from_config, (self.config, None, self._engine))
        if self._given_backends:
            return (type(self).from_config, (self.config, self._backends))
        if self._is_shared:
            return (type(self).shared_from_config, (self.config,))
        return (type(self).from_config, (self.config,))

    def close(self) -> None:
        """End the worker threads, close the HTTP connections and drop the weights; idempotent.

        Calls already queued are served first (a remote engine's calls in flight end with a
        :class:`RerankError`); a call after ``close()`` raises :class:`RerankError`,
        as a closed ``httpx`` client does (make a new reranker to score again). On a shared instance
        (see :meth:`shared`) this gives back one hold: it closes when the last one is given back.
        """
        if not self._release():
            return
        if self._engine is not None:
            self._engine.close()
            return
        assert self._scheduler is not None
        self._scheduler.close()
        for backend in self._backends:
            backend.close()

    def _release(self) -> bool:
        """Give back one hold; ``True`` if this reranker is now closed and must release what it holds."""
        with Reranker._shared_lock:
            if self._closed:
                return False
            if self._is_shared:
                self._holds -= 1
                if self._holds > 0:
                    return False
                if Reranker._shared.get(self.config) is self:
                    del Reranker._shared[self.config]
            self._closed = True
            return True

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop (it waits for the queued calls)."""
        if self._engine is None:
            await asyncio.to_thread(self.close)
        elif self._release():
            await self._engine.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` has closed this reranker (a shared one: given back its last hold)."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"loaded={self.is_loaded}"
        return f"{type(self).__name__}({self.config.model!r}, {state})"

    @property
    def is_loaded(self) -> bool:
        """Whether the model is in memory."""
        if self._engine is not None:
            return self._engine.is_loaded
        return all(backend.is_loaded for backend in self._backends)

    def load(self) -> Reranker:
        """Load the model now (a warm-up); idempotent. Returns ``self``.

        Raises:
            ModelLoadError: the model cannot be found or is not a one-label cross-encoder.
            RerankError: the reranker is closed.
        """
        self._check_open()
        if self._engine is not None:
            self._engine.load()
        for backend in self._backends:
            backend.load()
        return self

    def score(self, query: str, passages: Sequence[str], *, normalize: bool | None = None) -> list[float]:
        """One score per passage, in input order: the raw logit, or its sigmoid if ``normalize``.

        ``normalize=None`` uses the instance default. An empty ``passages`` returns ``[]`` without
        loading the model.

        Raises:
            TypeError: ``query`` or a passage is not a ``str`` (the message names the index).
        """
        return self._score(_query_pairs(query, passages), normalize)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, normalize: bool | None = None) -> list[float]:
        """One score per ``(query, passage)`` pair, in input order."""
        return self._score(_check_pairs(pairs), normalize)

    def rank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool | None = None,
    ) -> list[RerankResult]:
        """Passages as ``(index, score)``, best first; ties keep input order; at most ``top_n``.

        Raises:
            ValueError: ``top_n`` is not ``None`` and below 1.
        """
        check_top("top_n", top_n)
        return rank_scores(self.score(query, passages, normalize=normalize), top_n)

    async def ascore(
        self, query: str, passages: Sequence[str], *, normalize: bool | None = None
    ) -> list[float]:
        """:meth:`score` without blocking the event loop: the work runs on the scoring thread."""
        return await self._ascore(_query_pairs(query, passages), normalize)

    async def ascore_pairs(
        self, pairs: Sequence[tuple[str, str]], *, normalize: bool | None = None
    ) -> list[float]:
        """:meth:`score_pairs` without blocking the event loop."""
        return await self._ascore(_check_pairs(pairs), normalize)

    async def arank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool | None = None,
    ) -> list[RerankResult]:
        """:meth:`rank` without blocking the event loop."""
        check_top("top_n", top_n)
        return rank_scores(await self.ascore(query, passages, normalize=normalize), top_n)

    def _check_open(self) -> None:
        if self._closed:
            model = self.config.model
            raise RerankError(f"Reranker({model!r}) is closed; create a new Reranker to score again")

    def _score(self, pairs: list[tuple[str, str]], normalize: bool | None) -> list[float]:
        self._check_open()
        if not pairs:
            return []
        if self._engine is not None:
            return self._finish(self._engine.score(pairs, self.config.scoring), normalize)
        assert self._scheduler is not None
        future = self._scheduler.submit(pairs)
        try:
            logits = future.result()
        except BaseException:
            future.cancel()  # interrupted while waiting (Ctrl-C): drop the request if it has not started
            raise
        return self._finish(logits, normalize)

    async def _ascore(self, pairs: list[tuple[str, str]], normalize: bool | None) -> list[float]:
        self._check_open()
        if not pairs:
            return []
        if self._engine is not None:
            return self._finish(await self._engine.ascore(pairs, self.config.scoring), normalize)
        assert self._scheduler is not None
        # Cancelling the awaiting task cancels the request if its batch has not started yet.
        return self._finish(await asyncio.wrap_future(self._scheduler.submit(pairs)), normalize)

    def _finish(self, logits: list[float], normalize: bool | None) -> list[float]:
        if self.config.normalize if normalize is None else normalize:
            return [sigmoid(x) for x in logits]
        return logits


def _checked_logits(backend: Backend, dtype: str, pairs: list[tuple[str, str]]) -> list[float]:
    """One scheduler replica: raw logits from ``backend``, refused if any is NaN."""
    logits = backend.score_pairs(pairs)
    broken = sum(1 for x in logits if math.isnan(x))
    if broken:
        raise RerankError(
            f"the model returned NaN for {broken} of {len(logits)} pairs; its weights or dtype are "
            f"broken for this input (dtype={dtype!r}: try 'bfloat16' or 'float32')"
        )
    return logits


def rank_scores(scores: Sequence[float], top_n: int | None = None) -> list[RerankResult]:
    """Sort scores best first (stable on ties) and keep ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [RerankResult(i, scores[i]) for i in order[:top_n]]


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _query_pairs(query: object, passages: object) -> list[tuple[str, str]]:
    """Validated ``(query, passage)`` pairs of one query's passages."""
    text = _check_text("query", query)
    return [(text, p) for p in _check_passages(passages)]


def _check_pairs(pairs: object) -> list[tuple[str, str]]:
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a sequence of (query, passage) tuples, got {type(pairs).__name__}")
    checked: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"pairs[{i}] must be a (query, passage) pair, got {pair!r:.80}")
        _check_text(f"pairs[{i}][0]", pair[0])
        _check_text(f"pairs[{i}][1]", pair[1])
        checked.append((pair[0], pair[1]))
    return checked


def _check_passages(passages: object) -> list[str]:
    if isinstance(passages, str | bytes) or not isinstance(passages, Sequence):
        raise TypeError(f"passages must be a sequence of str, got {type(passages).__name__}")
    for i, passage in enumerate(passages):
        _check_text(f"passages[{i}]", passage)
    return list(passages)


def check_top(name: str, value: object) -> int | None:
    """Validate a ``top_n``/``top_k`` argument: ``None`` or an int >= 1 (adapters use it too)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value
