"""Where scores are computed: the local torch backend (and, later, remote serving engines)."""

from __future__ import annotations

from bge_rerank_integrations.backends.base import Backend

__all__ = ["Backend"]
