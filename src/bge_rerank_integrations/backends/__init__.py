"""Where scores are computed: local torch (``local``) or a serving engine's ``/rerank`` (``remote``)."""

from __future__ import annotations

from bge_rerank_integrations.backends.base import Backend

__all__ = ["Backend"]
