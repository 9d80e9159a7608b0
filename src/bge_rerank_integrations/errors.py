"""Exceptions raised by bge-rerank-integrations.

::

    RerankError
    ├── ModelLoadError      the model or tokenizer could not be found or is not a cross-encoder
    └── RemoteBackendError  a serving engine refused a request, failed, or sent a malformed reply

Bad arguments raise the built-in ``ValueError`` and ``TypeError`` (a device this machine does not
have is a ``ValueError`` when the model loads).
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["ModelLoadError", "RemoteBackendError", "RerankError"]


class RerankError(Exception):
    """Base class of this package's own errors."""


class ModelLoadError(RerankError):
    """The model could not be loaded: not found, unreachable, or not a one-label cross-encoder.

    The message says which and what to do; a failure inside the hub or ``transformers`` stays
    chained as ``__cause__``, so a traceback still shows their own error.
    """


class RemoteBackendError(RerankError):
    """A serving engine's ``/rerank`` failed: the message says the engine, URL, status and what to change.

    Attributes:
        engine: the backend setting (``"tei"``, ``"vllm"``, ``"infinity"``, ``"cohere"``).
        url: the URL that was requested.
        status: the HTTP status, or ``None`` when no reply came (connection error, timeout).
        body: the start of the reply's body (at most 500 characters), ``""`` if none.
    """

    BODY_EXCERPT = 500
    """Characters of the reply's body kept in the error."""

    def __init__(
        self, message: str, *, engine: str, url: str, status: int | None = None, body: str = ""
    ) -> None:
        """Build the error; ``message`` says what went wrong and what to change."""
        self.message = message
        self.engine = engine
        self.url = url
        self.status = status
        self.body = body[: self.BODY_EXCERPT]
        where = f"{engine} at {url}" + (f" (HTTP {status})" if status is not None else "")
        text = f"{where}: {message}"
        if self.body:
            text += f"\nreply: {self.body}"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: rebuild through a partial so the error pickles across processes.
        rebuild = functools.partial(
            type(self), engine=self.engine, url=self.url, status=self.status, body=self.body
        )
        return (rebuild, (self.message,))
