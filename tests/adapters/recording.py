"""A core reranker that records what it is asked to score, to check an adapter's scored text exactly."""

from __future__ import annotations

from collections.abc import Sequence

from bge_rerank_integrations import Reranker


class RecordingReranker(Reranker):
    """A real :class:`Reranker` (it scores with the model) that keeps each call's query and passages.

    Handed to an adapter through its public ``reranker=`` parameter; ``rank``/``arank`` score through
    ``score``/``ascore``, so every text an adapter sends is seen here exactly as the model gets it.
    """

    def __init__(self, model: str) -> None:
        """An unshared core on ``model`` with no calls recorded yet."""
        super().__init__(model)
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, passages: Sequence[str], *, normalize: bool | None = None) -> list[float]:
        """Record ``(query, passages)``, then score them."""
        self.calls.append((query, list(passages)))
        return super().score(query, passages, normalize=normalize)

    async def ascore(
        self, query: str, passages: Sequence[str], *, normalize: bool | None = None
    ) -> list[float]:
        """Record ``(query, passages)``, then score them without blocking the event loop."""
        self.calls.append((query, list(passages)))
        return await super().ascore(query, passages, normalize=normalize)
