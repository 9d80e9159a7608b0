"""Exceptions raised by bge-rerank-integrations.

::

    RerankError
    └── ModelLoadError      the model or tokenizer could not be found or is not a cross-encoder

Bad arguments raise the built-in ``ValueError`` and ``TypeError``.
"""

from __future__ import annotations

__all__ = ["ModelLoadError", "RerankError"]


class RerankError(Exception):
    """Base class of this package's own errors."""


class ModelLoadError(RerankError):
    """The model could not be loaded: not found, unreachable, or not a one-label cross-encoder."""
