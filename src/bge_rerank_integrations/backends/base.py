"""The contract between the ``Reranker`` front end and whatever computes the scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bge_rerank_integrations.config import ScoringOptions

__all__ = ["Backend", "Engine"]


class Engine(Protocol):
    """What a ``Reranker`` scores through: the local queue over its replicas, or a serving engine.

    Pairs are validated and non-empty; scores are raw logits in input order (the ``Reranker``
    applies the sigmoid and ranks).
    """

    @property
    def is_loaded(self) -> bool:
        """Whether the heavy state (weights, clients) is ready."""
        ...

    def load(self) -> None:
        """Make the engine ready; idempotent and safe to call from several threads."""
        ...

    def score(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """Raw logits of ``pairs`` scored under ``options``, in input order."""
        ...

    async def ascore(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """:meth:`score` without blocking the event loop."""
        ...

    def close(self) -> None:
        """End threads, drop weights and connections; idempotent. Later calls raise ``RerankError``."""
        ...

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        ...


class Backend(Protocol):
    """One local model replica behind the queue: scores validated pairs (the queue dedups them)."""

    @property
    def is_loaded(self) -> bool:
        """Whether the heavy state (weights, clients) is ready."""
        ...

    @property
    def pass_tokens(self) -> int:
        """About how many tokens one forward pass needs to keep the device busy.

        The request queue stops adding requests to a shared batch past this size: beyond it, sharing
        a pass saves nothing and only makes the first requests wait for the last.
        """
        ...

    def load(self) -> None:
        """Make the backend ready; idempotent and safe to call from several threads."""
        ...

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> list[float]:
        """Raw relevance logits of ``pairs`` scored under ``options``, in input order, as plain floats."""
        ...

    def close(self) -> None:
        """Release what :meth:`load` made (weights, connections); idempotent. A later call loads again."""
        ...
