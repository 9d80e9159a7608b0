"""bge-reranker-v2-m3 for LlamaIndex, LangChain and Haystack, on one fast, reference-exact core.

Importing this package loads neither torch nor any framework; the model loads on first use.
"""

from __future__ import annotations

from bge_rerank_integrations.config import DEFAULT_MODEL, RerankerConfig
from bge_rerank_integrations.errors import ModelLoadError, RemoteBackendError, RerankError
from bge_rerank_integrations.reranker import Reranker, RerankResult

__all__ = [
    "DEFAULT_MODEL",
    "ModelLoadError",
    "RemoteBackendError",
    "RerankError",
    "RerankResult",
    "Reranker",
    "RerankerConfig",
]

__version__ = "0.1.0"
