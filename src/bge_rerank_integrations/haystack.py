"""Haystack adapter: :class:`BGERanker`, a drop-in ranker component (needs the ``haystack`` extra).

The class is defined in ``haystack_integrations.components.rankers.bge_reranker``, the namespace
Haystack's pipeline loader allows by default, so that saved pipelines name an importable, allowed
module; this module re-exports it under the package's own import path.
"""

from __future__ import annotations

from haystack_integrations.components.rankers.bge_reranker.ranker import BGERanker

__all__ = ["BGERanker"]
