"""What the three framework adapters share: their model settings, finding their reranker, the scored text.

Adapters hold no scoring logic; this module holds the little they have in common, so the
LlamaIndex, LangChain and Haystack adapters take the same settings, resolve them the same way and
read text the same way.
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from bge_rerank_integrations.config import SETTINGS, RerankerConfig
from bge_rerank_integrations.reranker import Reranker, check_top

__all__ = [
    "EXCLUDED_SETTINGS",
    "MODEL_SETTINGS",
    "RerankerHold",
    "Setting",
    "adapter_config",
    "adapter_reranker",
    "check_top",
    "model_settings",
    "text_with_meta",
]

EXCLUDED_SETTINGS = ("normalize", "token")
"""The declared settings no adapter takes as a model setting (why: see :data:`MODEL_SETTINGS`)."""

MODEL_SETTINGS: tuple[str, ...] = tuple(f.name for f in SETTINGS if f.name not in EXCLUDED_SETTINGS)
"""The :class:`RerankerConfig` fields every adapter (and the CLI) exposes as its own model settings.

Every declared setting but two: ``normalize`` is a per-call choice in every adapter (so adapters
wanting raw logits share the model with ones wanting 0..1 scores), and ``token`` is a secret, which
each adapter takes in its framework's way or from the environment (``HF_TOKEN``).
"""


class Setting(NamedTuple):
    """One model setting as :mod:`~bge_rerank_integrations.config` declares it, for deriving options."""

    name: str
    annotation: Any
    """The declared type, resolved (``int | None``, a ``Literal``, ``tuple[int, ...] | None``)."""
    default: Any
    doc: str
    """The one-line description (``metadata["doc"]``)."""


def model_settings() -> tuple[Setting, ...]:
    """Each of :data:`MODEL_SETTINGS` with its declared type, default and description, in order."""
    hints = typing.get_type_hints(RerankerConfig)
    return tuple(
        Setting(f.name, hints[f.name], f.default, str(f.metadata["doc"]))
        for f in SETTINGS
        if f.name in MODEL_SETTINGS
    )


def adapter_reranker(settings: Mapping[str, Any], reranker: Reranker | None = None) -> Reranker:
    """The core reranker of an adapter given its model ``settings`` and optional ready ``reranker``.

    ``settings`` maps :class:`RerankerConfig` field names to values, ``None`` meaning "not given"
    (the core's default). With a ``reranker``, no setting may be given: it brings its own. Without
    one, the process-wide shared reranker for the settings is returned (a hold taken on it, see
    :meth:`Reranker.shared`). Nothing is loaded or contacted here.

    Raises:
        ValueError: ``reranker`` is given together with settings, or a setting is out of range.
        TypeError: ``reranker`` is not a :class:`Reranker`, or a setting has the wrong type.
    """
    config = adapter_config(settings, reranker)
    return reranker if reranker is not None else Reranker.shared_from_config(config)


def adapter_config(settings: Mapping[str, Any], reranker: Reranker | None = None) -> RerankerConfig:
    """The settings of an adapter's core reranker, checked as :func:`adapter_reranker` does, taking nothing.

    The given ``reranker``'s own, or the :class:`RerankerConfig` of ``settings``.
    """
    if reranker is not None and not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be a Reranker, got {type(reranker).__name__}")
    given = {name: value for name, value in settings.items() if value is not None}
    if reranker is not None and given:
        raise ValueError(
            "pass either reranker or model settings, not both: got reranker and "
            + ", ".join(sorted(given))
            + " (a reranker brings its own settings)"
        )
    if reranker is not None:
        return reranker.config
    return RerankerConfig(**given)


class RerankerHold:
    """How an adapter holds its core reranker: the one it was given, or a hold on the shared one.

    Without a given reranker, :meth:`get` takes a hold on the process-wide shared instance for the
    adapter's settings on first use, and :meth:`release` gives it back (the instance closes when its
    last holder does, see :meth:`Reranker.shared`); the next :meth:`get` takes a new hold. A given
    reranker belongs to whoever made it: :meth:`release` leaves it alone.

    Copies and pickles of a hold carry no hold (the copy takes its own on first use) and the given
    reranker copied by its own rules, so adapters holding one copy and pickle with nothing loaded.
    """

    def __init__(self, given: Reranker | None = None) -> None:
        """Hold ``given``, or (``None``) the shared reranker for the settings passed to :meth:`get`."""
        self.given = given
        self._taken: Reranker | None = None
        self._lock = threading.Lock()

    def get(self, config: Callable[[], RerankerConfig]) -> Reranker:
        """The reranker: the given one, else the shared one for ``config()`` (a hold taken once)."""
        if self.given is not None:
            return self.given
        with self._lock:
            if self._taken is None or self._taken.is_closed:
                self._taken = Reranker.shared_from_config(config())
            return self._taken

    def release(self) -> None:
        """Give back the hold on the shared reranker, if one was taken; idempotent."""
        with self._lock:
            taken, self._taken = self._taken, None
        if taken is not None:
            taken.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.given,))


def text_with_meta(
    content: str,
    meta: Mapping[str, Any] | None,
    fields: Sequence[str] | None,
    separator: str = "\n",
) -> str:
    """``content`` with the values of ``fields`` found in ``meta`` put before it, joined by ``separator``.

    Missing and ``None`` fields are skipped; falsy values such as ``0`` are kept.
    """
    if not fields or not meta:
        return content
    parts = [str(meta[f]) for f in fields if meta.get(f) is not None]
    return separator.join([*parts, content])
