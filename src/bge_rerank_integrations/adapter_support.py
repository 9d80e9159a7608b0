"""What the three framework adapters share: finding their reranker and building the text to score.

Adapters hold no scoring logic; this module holds the little they have in common, so the
LlamaIndex, LangChain and Haystack adapters read text and resolve settings the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bge_rerank_integrations.config import RerankerConfig
from bge_rerank_integrations.reranker import Reranker, check_top

__all__ = ["check_top", "resolve_reranker", "text_with_meta"]


def resolve_reranker(reranker: Reranker | None, **settings: Any) -> Reranker:
    """The adapter's reranker: the one given, else the process-wide shared one for ``settings``.

    ``settings`` are :class:`RerankerConfig` fields; ``None`` values fall back to the defaults, so
    adapters can pass their optional fields straight through. No model is loaded here.
    """
    if reranker is not None:
        if not isinstance(reranker, Reranker):
            raise TypeError(f"reranker must be a Reranker, got {type(reranker).__name__}")
        return reranker
    given = {k: v for k, v in settings.items() if v is not None}
    return Reranker.shared_from_config(RerankerConfig(**given))


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
