"""Model kinds: the architectures the core can score, each behind :class:`~.base.ModelKind`.

:data:`KINDS` is the one registry: :func:`kind_for` asks each kind in order whether it serves a
model's raw ``config.json``. A new kind is a module implementing :class:`~.base.ModelKind`, appended
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.kinds.base import Encoded, LoadedModel, ModelKind, ModelView
from bge_rerank_integrations.kinds.cross_encoder import CrossEncoderKind
from bge_rerank_integrations.kinds.llm import GemmaKind, LightweightGemma2Kind, MiniCPMLayerwiseKind

__all__ = ["KINDS", "Encoded", "LoadedModel", "ModelKind", "ModelView", "kind_for", "supported_architectures"]

KINDS: list[type[ModelKind]] = [CrossEncoderKind, GemmaKind, MiniCPMLayerwiseKind, LightweightGemma2Kind]
"""Every model kind, asked in this order."""


def supported_architectures() -> list[str]:
    """The ``config.json`` architectures some kind serves, in :data:`KINDS` order."""
    return [name for kind in KINDS for name in kind.architectures]


def kind_for(model_config: Mapping[str, Any], model: str = "the model") -> type[ModelKind]:
    """The kind serving a model whose raw ``config.json`` is ``model_config`` (by its declared
    ``architectures`` or ``model_type``, never by the model's name).

    Raises:
        ModelLoadError: no kind serves it; the message names its architecture and the supported ones.
    """
    for kind in KINDS:
        if kind.matches(model_config):
            return kind
    found = model_config.get("architectures") or [model_config.get("model_type") or "no architecture"]
    raise ModelLoadError(
        f"{model!r} is a {', '.join(map(str, found))} model, which this package cannot score as a "
        f"reranker; supported architectures: {', '.join(supported_architectures())}"
    )
