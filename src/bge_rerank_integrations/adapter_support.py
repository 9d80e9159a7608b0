"""What the three framework adapters share: their model settings, finding their reranker, the scored text.

Adapters hold no scoring logic; this module holds the little they have in common, so the
LlamaIndex, LangChain and Haystack adapters take the same settings, resolve them the same way and
read text the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from bge_rerank_integrations.config import RerankerConfig
from bge_rerank_integrations.reranker import Reranker, check_top

__all__ = ["MODEL_SETTINGS", "adapter_reranker", "check_top", "text_with_meta"]

MODEL_SETTINGS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(RerankerConfig) if f.name not in ("normalize", "token")
)
"""The :class:`RerankerConfig` fields every adapter exposes as its own model settings.

Two are left out: ``normalize`` is a per-call choice in every adapter (so adapters wanting raw
logits share the model with ones wanting 0..1 scores), and ``token`` is a secret, which each
adapter takes in its framework's way or from the environment (``HF_TOKEN``).
"""


def adapter_reranker(settings: Mapping[str, Any], reranker: Reranker | None = None) -> Reranker:
    """The core reranker of an adapter given its model ``settings`` and optional ready ``reranker``.

    ``settings`` maps :class:`RerankerConfig` field names to values, ``None`` meaning "not given"
    (the core's default). With a ``reranker``, no setting may be given: it brings its own. Without
    one, the process-wide shared reranker for the settings is returned. Nothing is loaded or
    contacted here.

    Raises:
        ValueError: ``reranker`` is given together with settings, or a setting is out of range.
        TypeError: ``reranker`` is not a :class:`Reranker`, or a setting has the wrong type.
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
        return reranker
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
