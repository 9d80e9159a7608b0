"""The contract between the ``Reranker`` front end and whatever computes the scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Backend"]


class Backend(Protocol):
    """Scores validated (query, passage) pairs; the ``Reranker`` does validation, sigmoid and ranking."""

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

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw relevance logits of ``pairs``, in input order, as plain floats."""
        ...

    def close(self) -> None:
        """Release what :meth:`load` made (weights, connections); idempotent. A later call loads again."""
        ...
