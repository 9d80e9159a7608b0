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

    def load(self) -> None:
        """Make the backend ready; idempotent and safe to call from several threads."""
        ...

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw relevance logits of ``pairs``, in input order, as plain floats."""
        ...
