"""bge-reranker-v2-m3 as a Haystack ranker component, :class:`BGERanker`.

Lives in the ``haystack_integrations`` namespace, which Haystack's pipeline loader allows by default,
so a pipeline saved with :class:`BGERanker` loads from YAML with no extra arguments.
"""

from __future__ import annotations

from haystack_integrations.components.rankers.bge_reranker.ranker import BGERanker

__all__ = ["BGERanker"]
