"""The model-kind boundary: what differs between reranker architectures, and nothing else.

A kind owns how its model loads, how a (query, passage) pair becomes the model's input (the pair
layout, exactly as the reference builds it) and the forward that turns a batch of inputs into one
fp32 logit per row. Everything else is shared by every kind and lives in the local backend: batches
by length under the token budget, each batch run once, dedup, input order, out-of-memory split, NaN
refusal, normalization, the queue, devices and the process-wide sharing of loaded weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from bge_rerank_integrations.config import LoadSettings, ScoringOptions

__all__ = ["Encoded", "LoadedModel", "ModelKind", "ModelView"]


@dataclass(frozen=True, slots=True)
class Encoded:
    """The model inputs of some pairs: one row per scored input, in the pairs' order.

    ``rows[i]`` is what the kind's forward takes for row ``i`` (token ids, or ids with the kind's
    per-row payload) and ``lengths[i]`` the tokens it costs; ``owners[i]`` is the pair row ``i``
    scores (several rows per pair in window mode, where a pair scores as its best row), or ``None``
    when row ``i`` is pair ``i``.
    """

    rows: Sequence[Any]
    lengths: Sequence[int]
    owners: Sequence[int] | None = None


class LoadedModel(Protocol):
    """One kind's model, loaded on one device: shared by every backend whose weights key matches."""

    @property
    def device(self) -> torch.device:
        """Where the forward runs."""
        ...

    @property
    def padding_free(self) -> bool:
        """Whether a batch costs its real tokens (``True``) or its size times its longest row."""
        ...

    def encode(self, pairs: Sequence[tuple[str, str]], options: ScoringOptions) -> Encoded:
        """The inputs of ``pairs`` under ``options``, built exactly as the reference builds them.

        Raises:
            ValueError: ``options`` asks for something this kind or model cannot do (a ``max_length``
                beyond its positions, an option of another kind); the message names the option.
        """
        ...

    def forward(self, rows: Sequence[Any], options: ScoringOptions) -> torch.Tensor:
        """One pass over ``rows`` (taken from :attr:`Encoded.rows`): fp32 logits ``[len(rows)]``, on
        the device. May raise ``torch.OutOfMemoryError`` (the backend then splits the batch)."""
        ...


@runtime_checkable
class ModelView(Protocol):
    """Optional for a :class:`LoadedModel`: per-backend views and the exact work of a pass.

    A model without it is used as loaded by every backend sharing it; ``padding_free=`` of a backend
    must then match its :attr:`~LoadedModel.padding_free`, and a pass is counted as its size times
    its longest row (or its real tokens, padding-free).
    """

    def view(self, padding_free: bool | None = None) -> LoadedModel:
        """This model for one backend: the same weights, its own forward state. ``padding_free``:
        ``None`` where the model allows, ``False`` padded, ``True`` padding-free or a ``ValueError``."""
        ...

    @property
    def last_computed_tokens(self) -> int:
        """Tokens the last :meth:`~LoadedModel.forward` computed, padding included (read under the
        device lock, right after the pass)."""
        ...


class ModelKind(Protocol):
    """An architecture family of rerankers: detected from a model's ``config.json``, loaded by itself."""

    name: ClassVar[str]
    """Short name, shown in errors and logs (``"cross-encoder"``, ``"llm"``, ...)."""
    architectures: ClassVar[tuple[str, ...]]
    """The ``config.json`` ``architectures`` it serves, listed in the error for unsupported models."""
    gpu_dtype: ClassVar[str]
    """What ``dtype="auto"`` loads on a GPU (float32 elsewhere): the fastest dtype the kind is exact in."""

    @classmethod
    def matches(cls, model_config: Mapping[str, Any]) -> bool:
        """Whether this kind serves a model whose raw ``config.json`` is ``model_config``."""
        ...

    @classmethod
    def load(cls, settings: LoadSettings, device: torch.device, dtype: torch.dtype) -> LoadedModel:
        """Load tokenizer and weights of ``settings.model`` onto ``device`` in ``dtype``.

        Raises:
            ModelLoadError: the files are missing, broken, or need ``trust_remote_code``.
        """
        ...
