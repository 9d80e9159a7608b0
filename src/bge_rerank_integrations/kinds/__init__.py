"""Model kinds: the architectures the core can score, each behind :class:`~.base.ModelKind`."""

from __future__ import annotations

from bge_rerank_integrations.kinds.base import Encoded, LoadedModel, ModelKind

__all__ = ["Encoded", "LoadedModel", "ModelKind"]
