"""``Reranker``: score passages against a query with bge-reranker-v2-m3, in input order.

One class with a clear split: construction stores settings (cheap), :meth:`Reranker.load` or the
first call loads the model, :meth:`Reranker.score` returns one float per passage in input order and
:meth:`Reranker.rank` sorts them. :meth:`Reranker.shared` gives one instance per process per settings,
which is how the framework adapters share one queue; local rerankers whose settings load the same
weights share one loaded model whatever their scoring options. :meth:`Reranker.close` (or ``with``)
ends its threads and drops its weights and connections; a reranker nobody references does so too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from bge_rerank_integrations.backends.base import Backend, Engine
from bge_rerank_integrations.backends.queued import QueuedEngine
from bge_rerank_integrations.config import (
    DEFAULT_MODEL,
    BackendName,
    DType,
    LongPassages,
    RerankerConfig,
    ScoringOptions,
    check_remote_scoring,
)
from bge_rerank_integrations.errors import RerankError

if TYPE_CHECKING:
    from bge_rerank_integrations.backends.local import ForwardStats, LocalBackend

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
    _engines: ClassVar[dict[RerankerConfig, _EngineHold]] = {}  # shared engines by _engine_key
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
        self._scoring = config.scoring
        if backends is not None and engine is not None:
            raise ValueError("pass backends or engine, not both")
        self._given: tuple[Sequence[Backend] | None, Engine | None] | None = None
        if backends is not None or engine is not None:
            self._given = (list(backends) if backends is not None else None, engine)
        self._engine: Engine = engine if engine is not None else _make_engine(config, backends)
        self._closed = False
        self._shared_key: RerankerConfig | None = None  # set by shared_from_config (holds in _holds)
        self._holds = 0

    @classmethod
    def from_config(
        cls,
        config: RerankerConfig,
        backends: Sequence[Backend] | None = None,
        *,
        engine: Engine | None = None,
    ) -> Reranker:
        """A new (unshared) reranker with these settings.

        Args:
            config: the settings.
            backends: ready objects that compute the logits (see :class:`~.backends.base.Backend`),
                one per model replica, put behind this reranker's queue instead of the ones ``config``
                describes: a seam for a custom local model, or for a test that injects faults.
            engine: a ready :class:`~.backends.base.Engine` to score with instead (no queue of this
                reranker's own: the engine batches as it sees fit), such as a remote engine.

        ``config`` still sets the rest (the default scoring options of each call, ``normalize``,
        ``batch_wait_ms`` of the queue). The reranker owns what it is given: :meth:`close` closes it,
        and a deep copy or a pickle of the reranker copies it (unloaded); a shallow ``copy.copy``
        shares it, so closing either closes it for both.

        Raises:
            ValueError: both ``backends`` and ``engine`` are given, or ``backends`` is empty.
        """
        self = cls.__new__(cls)
        self._init_from_config(config, backends, engine)
        return self

    @classmethod
    def shared(cls, model: str | os.PathLike[str] = DEFAULT_MODEL, **settings: Any) -> Reranker:
        """The process-wide instance for these settings, created on first request.

        Every adapter built with the same settings gets the same instance. Instances whose settings
        differ only in scoring options (lengths, windows, batch budget, the kinds' options) or
        ``normalize`` share one engine: one queue, so concurrent calls share forward passes, and one
        loaded model; each call carries its instance's options. Settings are compared as given:
        ``device=None`` and ``device="cpu"`` are two queues, but the weights are in memory once either
        way (every local reranker whose settings load the same weights shares one loaded copy).

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
                key = _engine_key(config)
                hold = cls._engines.get(key)
                if hold is None:
                    hold = cls._engines[key] = _EngineHold(_make_engine(key))
                hold.users += 1
                instance = cls._shared[config] = cls.from_config(config, engine=hold.engine)
                instance._given = None
                instance._shared_key = key
            instance._holds += 1
            return instance

    @classmethod
    def clear_shared(cls) -> None:
        """Close every shared instance now, whatever holds remain, and forget them; idempotent.

        For tests and for a process that reconfigures: the next :meth:`shared` call makes a new
        instance (an adapter holding a closed one takes the new one on its next call).
        """
        with cls._shared_lock:
            instances = list(cls._shared.values())
            holds = list(cls._engines.values())
            cls._shared.clear()
            cls._engines.clear()
            for instance in instances:
                instance._closed = True
        for hold in holds:
            hold.engine.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Copy and pickle the settings, never the model or threads (see the class docstring)."""
        if self._given is not None:
            return (_rebuild, (type(self), self.config, *self._given))
        if self._shared_key is not None:
            return (type(self).shared_from_config, (self.config,))
        return (type(self).from_config, (self.config,))

    def close(self) -> None:
        """End the worker threads, close the HTTP connections and drop the weights; idempotent.

        Calls already queued are served first (a remote engine's calls in flight end with a
        :class:`RerankError`); a call after ``close()`` raises :class:`RerankError`, as a closed
        ``httpx`` client does (make a new reranker to score again). On a shared instance (see
        :meth:`shared`) this gives back one hold: it closes when the last one is given back, and its
        engine once no other shared instance uses it.
        """
        engine = self._release()
        if engine is not None:
            engine.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop (a local queue's calls are waited for on a
        thread; a remote engine closes its clients natively)."""
        engine = self._release()
        if engine is not None:
            await engine.aclose()

    def _release(self) -> Engine | None:
        """Mark this reranker closed (a shared one: give back one hold); the engine to close, if any."""
        engine: Engine | None = self._engine
        with Reranker._shared_lock:
            if self._closed:
                return None
            key = self._shared_key
            if key is not None:
                self._holds -= 1
                if self._holds > 0:
                    return None
                if Reranker._shared.get(self.config) is self:
                    del Reranker._shared[self.config]
                hold = Reranker._engines.get(key)
                engine = None
                if hold is not None and hold.engine is self._engine:
                    hold.users -= 1
                    if not hold.users:
                        del Reranker._engines[key]
                        engine = hold.engine
            self._closed = True
        return engine

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
        """Whether the model is in memory for this reranker (never once it is closed)."""
        return not self._closed and self._engine.is_loaded

    @property
    def engine(self) -> Engine:
        """What this reranker scores through: a queue over local replicas, or a serving engine."""
        return self._engine

    @property
    def stats(self) -> ForwardStats:
        """Totals of the forward passes so far, over every local replica (a copy: read-only).

        Raises:
            RerankError: this reranker does not score through local replicas (a remote engine).
        """
        from bge_rerank_integrations.backends.local import ForwardStats

        total = ForwardStats()
        for backend in self._local_backends():
            for f in dataclasses.fields(ForwardStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(backend.stats, f.name))
        return total

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], **options: Any) -> list[list[int]]:
        """The exact token ids scored for ``pairs`` under this reranker's options with ``options``
        applied (loads the model): one list per pair, or per window in ``long_passages="window"`` mode.

        Raises:
            RerankError: the reranker is closed, or does not score through local replicas.
        """
        self._check_open()
        return self._local_backends()[0].encode(_check_pairs(pairs), self._options(options))

    def _local_backends(self) -> list[LocalBackend]:
        from bge_rerank_integrations.backends.local import LocalBackend

        engine = self._engine
        backends = engine.backends if isinstance(engine, QueuedEngine) else ()
        local = [b for b in backends if isinstance(b, LocalBackend)]
        if not local:
            raise RerankError(f"{self!r} scores through {type(engine).__name__}, not local replicas")
        return local

    def load(self) -> Reranker:
        """Load the model now (a warm-up); idempotent. Returns ``self``.

        Raises:
            ModelLoadError: the model cannot be found or is not a one-label cross-encoder.
            ValueError: this reranker's scoring options do not fit the model (``max_length``).
            RerankError: the reranker is closed.
        """
        self._check_open()
        self._engine.load()
        if isinstance(self._engine, QueuedEngine):
            self._engine.check(self._scoring)
        return self

    def score(
        self, query: str, passages: Sequence[str], *, normalize: bool | None = None, **options: Any
    ) -> list[float]:
        """One score per passage, in input order: the raw logit, or its sigmoid if ``normalize``.

        ``normalize=None`` uses the instance default. ``options`` override this reranker's scoring
        options (:class:`~.config.ScoringOptions`: ``max_length``, ``long_passages``,
        ``max_batch_tokens``, ...) for this call only; the scores are those of a reranker built with
        them, and the model is the same. An empty ``passages`` returns ``[]`` without loading the model.

        Raises:
            TypeError: ``query`` or a passage is not a ``str`` (the message names the index), or an
                option is unknown or of the wrong type.
            ValueError: an option is out of range (checked before the call is queued).
        """
        return self._score(_query_pairs(query, passages), normalize, self._options(options))

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, normalize: bool | None = None, **options: Any
    ) -> list[float]:
        """One score per ``(query, passage)`` pair, in input order (``options`` as in :meth:`score`)."""
        return self._score(_check_pairs(pairs), normalize, self._options(options))

    def rank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool | None = None,
        **options: Any,
    ) -> list[RerankResult]:
        """Passages as ``(index, score)``, best first; ties keep input order; at most ``top_n``
        (``options`` as in :meth:`score`).

        Raises:
            ValueError: ``top_n`` is not ``None`` and below 1.
        """
        check_top("top_n", top_n)
        return rank_scores(self.score(query, passages, normalize=normalize, **options), top_n)

    async def ascore(
        self, query: str, passages: Sequence[str], *, normalize: bool | None = None, **options: Any
    ) -> list[float]:
        """:meth:`score` without blocking the event loop: the work runs on the scoring thread."""
        return await self._ascore(_query_pairs(query, passages), normalize, self._options(options))

    async def ascore_pairs(
        self, pairs: Sequence[tuple[str, str]], *, normalize: bool | None = None, **options: Any
    ) -> list[float]:
        """:meth:`score_pairs` without blocking the event loop."""
        return await self._ascore(_check_pairs(pairs), normalize, self._options(options))

    async def arank(
        self,
        query: str,
        passages: Sequence[str],
        *,
        top_n: int | None = None,
        normalize: bool | None = None,
        **options: Any,
    ) -> list[RerankResult]:
        """:meth:`rank` without blocking the event loop."""
        check_top("top_n", top_n)
        return rank_scores(await self.ascore(query, passages, normalize=normalize, **options), top_n)

    def _check_open(self) -> None:
        if self._closed:
            model = self.config.model
            raise RerankError(f"Reranker({model!r}) is closed; create a new Reranker to score again")

    def _options(self, overrides: dict[str, Any]) -> ScoringOptions:
        """This reranker's scoring options with a call's ``overrides``, checked before anything is queued.

        On a remote reranker the options a serving engine cannot honour (windows, the LLM kinds'
        options) are refused here, by the same check as at construction.
        """
        if not overrides:
            return self._scoring
        options = self._scoring.replace(**overrides)  # unknown names: a TypeError listing the options
        if self.config.backend != "local":
            check_remote_scoring(options)
        return options

    def _score(
        self, pairs: list[tuple[str, str]], normalize: bool | None, options: ScoringOptions
    ) -> list[float]:
        self._check_open()
        if not pairs:
            return []
        return self._finish(self._engine.score(pairs, options), normalize)

    async def _ascore(
        self, pairs: list[tuple[str, str]], normalize: bool | None, options: ScoringOptions
    ) -> list[float]:
        self._check_open()
        if not pairs:
            return []
        # Cancelling the awaiting task cancels the request if its batch has not started yet.
        return self._finish(await self._engine.ascore(pairs, options), normalize)

    def _finish(self, logits: list[float], normalize: bool | None) -> list[float]:
        if self.config.normalize if normalize is None else normalize:
            return [sigmoid(x) for x in logits]
        return logits


@dataclass(eq=False)
class _EngineHold:
    """A shared engine and how many shared instances use it."""

    engine: Engine
    users: int = 0


def _engine_key(config: RerankerConfig) -> RerankerConfig:
    """What shared instances must agree on to share an engine: all but the scoring options and
    ``normalize`` (which each call carries)."""
    return config.replace(**_SCORING_DEFAULTS, normalize=False)


_SCORING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ScoringOptions)}


def _make_engine(config: RerankerConfig, backends: Sequence[Backend] | None = None) -> Engine:
    """The engine ``config`` describes: the queue over ``backends`` (default: one local replica per
    device), or for a remote ``backend`` setting the serving engine."""
    if backends is None and config.backend != "local":
        return _remote_engine(config)
    if backends is None:
        from bge_rerank_integrations.backends.local import LocalBackend

        backends = [LocalBackend(config, device) for device in config.devices]
    return QueuedEngine(backends, batch_wait_ms=config.batch_wait_ms, dtype=config.dtype)


def _remote_engine(config: RerankerConfig) -> Engine:
    """The serving engine of ``config``, called directly: it batches across its own connections."""
    from bge_rerank_integrations.backends.remote import RemoteEngine

    return RemoteEngine(config)


def _rebuild(
    cls: type[Reranker], config: RerankerConfig, backends: Sequence[Backend] | None, engine: Engine | None
) -> Reranker:
    """A copy of a reranker built on given backends or a given engine (see ``Reranker.__reduce__``)."""
    return cls.from_config(config, backends, engine=engine)


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
