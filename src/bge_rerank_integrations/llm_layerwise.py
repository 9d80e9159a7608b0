"""The layer-wise kinds on transformers' own layers: scores from chosen layers, passage compression.

bge-reranker-v2-minicpm-layerwise and bge-reranker-v2.5-gemma2-lightweight ship custom modeling code
(``auto_map``) written for transformers 4.x. Under transformers 5 it does not run as shipped
(FlagEmbedding 1.4.2's copies, which are the same code, checked with transformers 5.23):

- MiniCPM: ``config.rope_scaling`` is now an alias of the standardized ``rope_parameters``, so
  ``MiniCPMAttention._init_rope`` fails with ``KeyError: 'type'``; with that worked around, the
  rotary tables (``inv_freq``, ``cos_cached``, ``sin_cached``: non-persistent buffers computed in
  ``__init__``) are left uninitialised by ``from_pretrained``, which builds models on the meta device,
  so every score is NaN (or arbitrary); and the forward calls ``DynamicCache.from_legacy_cache``,
  which is gone, unless ``use_cache=False``.
- Gemma-2 lightweight: the model calls transformers' ``Gemma2DecoderLayer`` the 4.x way (no
  ``position_embeddings``, a tuple result): ``TypeError: cannot unpack non-iterable NoneType``; the
  class declares ``_tied_weights_keys`` as a list, which ``save_pretrained`` cannot read; and it
  claims SDPA support, which transformers 5 refuses for Gemma-2's attention softcapping.

So these kinds load the repositories' weights into transformers' own modules instead (no remote code
runs; :mod:`~bge_rerank_integrations.kinds.llm` still asks for ``trust_remote_code=True``, as the
reference does, and says why): MiniCPM is Llama with three scalings, folded in here
(embeddings times ``scale_emb`` at run time; the attention and MLP outputs times
``scale_depth / sqrt(num_hidden_layers)``, folded into ``o_proj`` and ``down_proj`` once at load);
the lightweight model is Gemma-2. The forwards reproduce the reference's arithmetic: the final norm
applied to the hidden state after ``k`` layers for each cutoff layer ``k``, that layer's one-output
head at the last real token, and for the lightweight model Gemma-2's final logit softcapping and
the passage-token compression (before layer ``i`` in ``compress_layers``, each run of
``compress_ratio`` passage tokens becomes its mean; query and prompt stay; positions restart).

Two quirks of the references are reproduced, not fixed: the lightweight model scores the ``i``-th
requested layer with the ``i``-th head (``lm_head[i]``), not the head of that layer; and MiniCPM
pairs heads with layers in the order given. Cutoff layers must therefore be given in increasing
order, without repeats (an error otherwise), where both agree with the layer order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Gemma2Config, LlamaConfig
from transformers.models.gemma2.modeling_gemma2 import Gemma2Model, Gemma2PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel

from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.llm_forward import causal_mask, right_pad

__all__ = [
    "LightweightGemma2",
    "LightweightGemma2Config",
    "MiniCPMLayerwise",
    "MiniCPMLayerwiseConfig",
    "check_layers",
    "compress_passages",
    "load_layerwise_model",
]


@strict
class MiniCPMLayerwiseConfig(LlamaConfig):  # type: ignore[no-untyped-call]
    """MiniCPM as a Llama config, plus its scalings and where its score heads start."""

    scale_emb: float | int = 1
    """Embeddings are multiplied by this."""
    scale_depth: float | int = 1
    """Each residual branch is multiplied by ``scale_depth / sqrt(num_hidden_layers)``."""
    start_layer: int = 8
    """The first layer with a score head."""


@strict
class LightweightGemma2Config(Gemma2Config):  # type: ignore[no-untyped-call]
    """The lightweight reranker's Gemma-2 config, plus where its score heads are."""

    start_layer: int = 28
    """The first layer with a score head."""
    layer_sep: int = 28
    """Heads every ``layer_sep`` layers from ``start_layer`` up to the last."""


class _ScoreHead(nn.Module):
    """One layer's score head, named as in the checkpoints (``lm_head.<i>.linear_head``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_head = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """``(batch, hidden)`` states to ``(batch,)`` fp32 logits."""
        logits: torch.Tensor = self.linear_head(state).float().squeeze(-1)
        return logits


def check_layers(layers: Sequence[int] | None, *, allowed: Sequence[int], default: int) -> list[int]:
    """The cutoff layers to score: ``[default]`` for ``None``, else strictly increasing allowed ones."""
    if layers is None:
        return [default]
    chosen = list(layers)
    if not chosen or chosen != sorted(set(chosen)):
        raise ValueError(f"cutoff_layers must be distinct layers in increasing order, got {chosen}")
    bad = [layer for layer in chosen if layer not in allowed]
    if bad:
        raise ValueError(f"cutoff_layers {bad} have no score head; this model scores layers {list(allowed)}")
    return chosen


def _last(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]


def _mask_or_none(model: Any, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """No mask where SDPA's causal path does the job (faster), an explicit causal one otherwise."""
    if model.config._attn_implementation == "sdpa":
        return None
    return causal_mask(length, dtype, device)


class MiniCPMLayerwise(LlamaPreTrainedModel):  # type: ignore[no-untyped-call]
    """bge-reranker-v2-minicpm-layerwise: MiniCPM (Llama layers, scalings folded) with one head per layer.

    Build it with :func:`load_layerwise_model`, which folds MiniCPM's residual scaling into the
    weights; constructing it directly gives a plain Llama with heads.
    """

    config_class = MiniCPMLayerwiseConfig

    def __init__(self, config: MiniCPMLayerwiseConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.ModuleList(_ScoreHead(config.hidden_size) for _ in self.score_layers)
        self.residual_scaling_folded = False
        self.post_init()  # type: ignore[no-untyped-call]

    @property
    def score_layers(self) -> list[int]:
        """The layers ``cutoff_layers`` may name."""
        return list(range(self.config.start_layer, self.config.num_hidden_layers + 1))

    def fold_residual_scaling(self) -> None:
        """Multiply ``o_proj`` and ``down_proj`` by ``scale_depth / sqrt(layers)`` (once, at load)."""
        if self.residual_scaling_folded:
            return
        scale = self.config.scale_depth / math.sqrt(self.config.num_hidden_layers)
        with torch.no_grad():
            for layer in self.model.layers:
                layer.self_attn.o_proj.weight.mul_(scale)
                layer.mlp.down_proj.weight.mul_(scale)
        self.residual_scaling_folded = True

    def scores(
        self, batch: Sequence[Sequence[int]], cutoff_layers: Sequence[int] | None = None
    ) -> torch.Tensor:
        """fp32 scores ``(len(cutoff_layers), len(batch))``; default: the last layer's head."""
        config = self.config
        layers = check_layers(cutoff_layers, allowed=self.score_layers, default=config.num_hidden_layers)
        base = self.model
        with torch.inference_mode():
            ids, lengths = right_pad(batch, config.pad_token_id or 0, self.device)
            hidden = base.embed_tokens(ids) * config.scale_emb
            positions = torch.arange(ids.shape[1], device=ids.device)[None]
            rotary = base.rotary_emb(hidden, positions)
            mask = _mask_or_none(self, ids.shape[1], hidden.dtype, hidden.device)
            picked = _run_to_cutoffs(base, hidden, layers, mask, positions, rotary, lengths)
            heads = [self.lm_head[k - config.start_layer] for k in layers]  # the head of layer k
            return torch.stack([head(state) for head, state in zip(heads, picked, strict=True)])


def _run_to_cutoffs(
    base: Any,
    hidden: torch.Tensor,
    layers: list[int],
    mask: torch.Tensor | None,
    positions: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    lengths: torch.Tensor,
) -> list[torch.Tensor]:
    """Run the layers up to the last cutoff; the normed last-token state after each cutoff layer."""
    picked = []
    for index, layer in enumerate(base.layers):
        if index in layers:
            picked.append(base.norm(_last(hidden, lengths)))
        if index == max(layers):
            break
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
    if max(layers) == len(base.layers):
        picked.append(base.norm(_last(hidden, lengths)))
    return picked


class LightweightGemma2(Gemma2PreTrainedModel):  # type: ignore[no-untyped-call]
    """bge-reranker-v2.5-gemma2-lightweight: Gemma-2 with one head per scored layer, passage compression."""

    config_class = LightweightGemma2Config

    def __init__(self, config: LightweightGemma2Config) -> None:
        super().__init__(config)
        self.model = Gemma2Model(config)
        self.lm_head = nn.ModuleList(_ScoreHead(config.hidden_size) for _ in self.score_layers)
        self.post_init()  # type: ignore[no-untyped-call]

    @property
    def score_layers(self) -> list[int]:
        """The layers ``cutoff_layers`` may name."""
        return list(range(self.config.start_layer, self.config.num_hidden_layers + 1, self.config.layer_sep))

    def scores(
        self,
        batch: Sequence[Sequence[int]],
        *,
        query_lengths: Sequence[int],
        prompt_lengths: Sequence[int],
        cutoff_layers: Sequence[int] | None = None,
        compress_ratio: int = 1,
        compress_layers: Sequence[int] = (8,),
    ) -> torch.Tensor:
        """fp32 scores ``(len(cutoff_layers), len(batch))``; default: the last layer, no compression.

        ``query_lengths``/``prompt_lengths`` are :class:`~bge_rerank_integrations.llm_layout.LLMPairs`'
        fields for the same pairs; they matter only when ``compress_ratio`` is above 1.
        """
        config = self.config
        layers = check_layers(cutoff_layers, allowed=self.score_layers, default=config.num_hidden_layers)
        if compress_ratio < 1:
            raise ValueError(f"compress_ratio must be at least 1, got {compress_ratio}")
        base = self.model
        cap = config.final_logit_softcapping
        layer_types = config.layer_types or ["full_attention"] * config.num_hidden_layers
        with torch.inference_mode():
            ids, lengths = right_pad(batch, config.pad_token_id or 0, self.device)
            hidden = base.embed_tokens(ids)  # scaled by sqrt(hidden_size) in the weights' dtype
            compress = set(compress_layers) if compress_ratio > 1 else set()
            picked = []
            masks, positions, rotary = self._attention_inputs(hidden)
            for index, layer in enumerate(base.layers):
                if index in layers:
                    picked.append(base.norm(_last(hidden, lengths)))
                if index == max(layers):
                    break
                if index in compress and index != 0:
                    hidden, lengths = compress_passages(
                        hidden, lengths, query_lengths, prompt_lengths, compress_ratio
                    )
                    masks, positions, rotary = self._attention_inputs(hidden)
                mask = masks[layer_types[index]]
                hidden = layer(
                    hidden, position_embeddings=rotary, attention_mask=mask, position_ids=positions
                )
            if max(layers) == config.num_hidden_layers:
                picked.append(base.norm(_last(hidden, lengths)))
            # As the reference: the i-th requested layer is scored by the i-th head, lm_head[i].
            logits = torch.stack([head(state) for head, state in zip(self.lm_head, picked, strict=False)])
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            return logits

    def _attention_inputs(
        self, hidden: torch.Tensor
    ) -> tuple[Mapping[str, torch.Tensor | None], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        length = hidden.shape[1]
        positions = torch.arange(length, device=hidden.device)[None]
        rotary = self.model.rotary_emb(hidden, positions)
        full = causal_mask(length, hidden.dtype, hidden.device)
        window = self.config.sliding_window
        sliding = (
            full
            if window is None or length <= window
            else causal_mask(length, hidden.dtype, hidden.device, window=window)
        )
        return {"full_attention": full, "sliding_attention": sliding}, positions, rotary


def compress_passages(
    hidden: torch.Tensor,
    lengths: torch.Tensor,
    query_lengths: Sequence[int],
    prompt_lengths: Sequence[int],
    ratio: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each run of ``ratio`` passage tokens into their mean; query and prompt stay (right-padded).

    Row ``b`` holds ``query_lengths[b]`` query tokens, then its passage, then ``prompt_lengths[b]``
    prompt tokens, then padding. The passage becomes ``ceil(passage / ratio)`` tokens (a shorter last
    run averages what it has), weighted by ``1 / count`` in the hidden dtype as the reference does.
    Returns the new states and lengths.
    """
    rows = []
    for row, (length, query, prompt) in enumerate(
        zip(lengths.tolist(), query_lengths, prompt_lengths, strict=True)
    ):
        passage = length - query - prompt
        if passage < 0:
            raise ValueError(
                f"pair {row} has {length} tokens, fewer than its query ({query}) and prompt ({prompt}) parts"
            )
        runs = -(-passage // ratio)
        part = hidden.new_zeros(runs * ratio, hidden.shape[-1])
        part[:passage] = hidden[row, query : query + passage]
        weights = hidden.new_zeros(runs * ratio)
        weights[:passage] = 1
        weights = weights.view(runs, ratio)
        weights = weights / weights.sum(-1, keepdim=True)
        merged = (part.view(runs, ratio, -1) * weights[..., None]).sum(1)
        rows.append(torch.cat([hidden[row, :query], merged, hidden[row, query + passage : length]]))
    new_lengths = torch.tensor([len(r) for r in rows], device=lengths.device)
    out = hidden.new_zeros(len(rows), int(new_lengths.max()), hidden.shape[-1])
    for row, states in enumerate(rows):
        out[row, : len(states)] = states
    return out, new_lengths


def load_layerwise_model(
    path: str, kind: str, *, config: Mapping[str, Any], dtype: torch.dtype, **hub: Any
) -> MiniCPMLayerwise | LightweightGemma2:
    """Load a layer-wise reranker's weights (``config``: its ``config.json``) into this module's classes.

    ``hub`` goes to ``from_pretrained`` (``revision``, ``token``, ``cache_dir``, ``local_files_only``).
    """
    loaded: Any  # (model, loading info): from_pretrained's annotation does not cover output_loading_info
    if kind == "v2-minicpm-layerwise":
        loaded = MiniCPMLayerwise.from_pretrained(
            path, config=_minicpm_config(config), dtype=dtype, output_loading_info=True, **hub
        )
    elif kind == "v2.5-gemma2-lightweight":
        # Eager attention: SDPA cannot apply Gemma-2's attention-logit softcapping.
        loaded = LightweightGemma2.from_pretrained(
            path,
            config=_lightweight_config(config),
            dtype=dtype,
            attn_implementation="eager",
            output_loading_info=True,
            **hub,
        )
    else:
        raise ValueError(f"{kind!r} is not a layer-wise reranker kind")
    model: MiniCPMLayerwise | LightweightGemma2 = loaded[0]
    missing = sorted(loaded[1].get("missing_keys", ()))
    if missing:  # a different checkpoint layout: random weights would score silently
        raise ModelLoadError(f"{path} is not a {kind} checkpoint: it lacks {', '.join(missing[:5])}")
    if isinstance(model, MiniCPMLayerwise):
        model.fold_residual_scaling()
    model.eval()  # type: ignore[no-untyped-call]
    return model


def _minicpm_config(spec: Mapping[str, Any]) -> MiniCPMLayerwiseConfig:
    """MiniCPM's ``config.json`` as the equivalent Llama config (plus its layer-wise fields)."""
    if spec.get("rope_scaling"):
        raise ModelLoadError(
            f"MiniCPM rope_scaling {spec['rope_scaling']} is not supported (plain RoPE only)"
        )
    if spec.get("head_type", "simple") != "simple":
        raise ModelLoadError(
            f"MiniCPM head_type {spec['head_type']!r} is not supported (only 'simple' heads)"
        )
    return MiniCPMLayerwiseConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec.get("num_key_value_heads") or spec["num_attention_heads"],
        hidden_act=spec.get("hidden_act", "silu"),
        max_position_embeddings=spec.get("max_position_embeddings", 2048),
        rms_norm_eps=spec.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": spec.get("rope_theta", 10000.0)},
        attention_bias=spec.get("attention_bias", False),
        pad_token_id=spec.get("pad_token_id"),
        bos_token_id=spec.get("bos_token_id", 1),
        eos_token_id=spec.get("eos_token_id", 2),
        tie_word_embeddings=False,
        scale_emb=spec.get("scale_emb", 1),
        scale_depth=spec.get("scale_depth", 1),
        start_layer=spec.get("start_layer", 8),
    )


_GEMMA2_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "attention_bias",
    "query_pre_attn_scalar",
    "sliding_window",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)


def _lightweight_config(spec: Mapping[str, Any]) -> LightweightGemma2Config:
    """The lightweight model's ``config.json`` as a Gemma-2 config (plus its layer-wise fields)."""
    if not spec.get("layer_wise", False):
        raise ModelLoadError("only the layer-wise CostWiseGemma checkpoints (layer_wise: true) are supported")
    fields = {name: spec[name] for name in _GEMMA2_FIELDS if name in spec}
    activation = spec.get("hidden_activation") or spec.get("hidden_act") or "gelu_pytorch_tanh"
    return LightweightGemma2Config(
        **fields,
        hidden_activation=activation,
        rope_parameters={"rope_type": "default", "rope_theta": spec.get("rope_theta", 10000.0)},
        tie_word_embeddings=False,
        start_layer=spec.get("start_layer", 28),
        layer_sep=spec.get("layer_sep", 28),
    )
