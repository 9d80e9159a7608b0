"""FlagEmbedding 1.4.2's decoder-only rerankers, run under transformers 5 with the least glue they need.

``FlagLLMReranker`` (v2-gemma) runs as shipped. The two layer-wise ones do not (see
``bge_rerank_integrations.llm_layerwise``); the glue here bridges only transformers' API changes and
leaves FlagEmbedding's arithmetic (its model classes, layouts, pooling, compression) as it is:

- MiniCPM: ``config.rope_scaling`` reads ``None`` while the reranker is built (transformers 5 aliases it
  to the standardized ``rope_parameters``); the rotary tables that ``from_pretrained`` leaves
  uninitialised are recomputed as ``MiniCPMRotaryEmbedding.__init__`` computes them; ``use_cache`` is
  switched off (its legacy cache API is gone).
- Gemma-2 lightweight: each transformers ``Gemma2DecoderLayer`` is called the 4.x way (rotary
  embeddings computed from the position ids it is given, the result as a 1-tuple), with eager
  attention (transformers 5 refuses SDPA with attention softcapping).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

KINDS = ("v2-gemma", "v2-minicpm-layerwise", "v2.5-gemma2-lightweight")

# The warnings FlagEmbedding's decoder-only rerankers (and transformers on their behalf) raise on
# every call under transformers 5; test modules that run them are marked with this.
REFERENCE_WARNINGS = pytest.mark.filterwarnings(
    "ignore::FutureWarning:transformers.*",
    "ignore:Due to model constraints:UserWarning",
)


def flag_reranker(kind: str, folder: Path, **settings: Any) -> Any:
    """FlagEmbedding's reranker class for ``kind`` on ``folder``: fp32, CPU."""
    from FlagEmbedding import FlagLLMReranker, LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker

    common = {"devices": ["cpu"], "use_fp16": False, "trust_remote_code": True, **settings}
    if kind == "v2-gemma":
        return FlagLLMReranker(str(folder), **common)
    if kind == "v2-minicpm-layerwise":
        with _rope_scaling_reads_none():
            reranker = LayerWiseFlagLLMReranker(str(folder), **common)
        _recompute_rotary_tables(reranker.model)
        reranker.model.config.use_cache = False
        return reranker
    reranker = LightWeightFlagLLMReranker(str(folder), **common)
    reranker.model.config._attn_implementation = "eager"
    rotary = _gemma2_rotary(reranker.model.config)
    layers = reranker.model.model.layers
    reranker.model.model.layers = torch.nn.ModuleList(_V4LayerCall(layer, rotary) for layer in layers)
    return reranker


@contextlib.contextmanager
def _rope_scaling_reads_none() -> Iterator[None]:
    from FlagEmbedding.inference.reranker.decoder_only.models.configuration_minicpm_reranker import (
        LayerWiseMiniCPMConfig,
    )

    assert "rope_scaling" not in vars(LayerWiseMiniCPMConfig)
    LayerWiseMiniCPMConfig.rope_scaling = property(lambda self: None, lambda self, value: None)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        del LayerWiseMiniCPMConfig.rope_scaling


def _recompute_rotary_tables(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "_set_cos_sin_cache"):
            module.inv_freq = 1.0 / (module.base ** (torch.arange(0, module.dim, 2).float() / module.dim))
            module._set_cos_sin_cache(
                seq_len=module.max_position_embeddings, device=module.inv_freq.device, dtype=torch.float32
            )


def _gemma2_rotary(config: Any) -> torch.nn.Module:
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RotaryEmbedding

    return Gemma2RotaryEmbedding(config=config)


class _V4LayerCall(torch.nn.Module):
    """A transformers 5 ``Gemma2DecoderLayer`` behind the 4.x call the lightweight model makes."""

    def __init__(self, layer: torch.nn.Module, rotary: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.rotary = rotary

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **unused: Any,
    ) -> tuple[torch.Tensor]:
        rotary = self.rotary(hidden_states, position_ids)
        out = self.layer(
            hidden_states,
            position_embeddings=rotary,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )
        return (out,)


class _Recorded(Exception):
    """Stops a reranker right after its first forward's inputs are recorded (not a RuntimeError,
    which its out-of-memory probe would catch)."""


def reference_ids(reranker: Any, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The ids (and the lightweight lengths) FlagEmbedding feeds its model for each pair, in order.

    Each pair is scored alone, so its batch is just that pair; the forward is stopped at its inputs.
    """
    model = reranker.model
    seen: list[dict[str, Any]] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        (row,) = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        lengths = {k: kwargs[k][0] for k in ("query_lengths", "prompt_lengths") if k in kwargs}
        seen.append({"ids": row, **lengths})
        raise _Recorded

    model.forward = forward
    try:
        for pair in pairs:
            with contextlib.suppress(_Recorded):
                reranker.compute_score([pair])
    finally:
        del model.forward
    assert len(seen) == len(pairs)
    return seen
