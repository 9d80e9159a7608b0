"""The v2-gemma forward: the fp32 logit of ``Yes`` after each pair, from a batch of id lists.

FlagEmbedding's ``FlagLLMReranker`` runs the whole causal LM, takes the logits of the whole vocabulary
at every position (``batch x length x 256000``) and keeps one number per pair: the ``Yes`` column at
the last real position. Here the base model runs once and only the last real position's hidden state
meets the ``Yes`` row of the LM head: the same number (a dot product instead of one entry of a matrix
product, so equal within fp32 rounding), without the vocabulary-sized activations.

Batches are padded on the right and run without an attention mask: in a causal model a real token
never attends to a later position, so padding cannot reach any real token, and the score is read at
each pair's own last index. (The reference pads on the tokenizer's side, left for Gemma, with a mask;
with rotary positions the two agree within rounding.) The layer-wise kinds are in
:mod:`bge_rerank_integrations.llm_layerwise`, on the same padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["YesLogitForward", "causal_mask", "right_pad"]


def right_pad(
    batch: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, lengths)``: the batch as one right-padded ``long`` tensor, and each row's real length."""
    if not batch or any(len(ids) == 0 for ids in batch):
        raise ValueError("every pair needs at least one token")
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, pair in enumerate(batch):
        ids[row, : len(pair)] = torch.tensor(pair, dtype=torch.long)
    lengths = torch.tensor([len(pair) for pair in batch], dtype=torch.long)
    return ids.to(device), lengths.to(device)


def causal_mask(
    length: int, dtype: torch.dtype, device: torch.device, *, window: int | None = None
) -> torch.Tensor:
    """An additive ``(1, 1, length, length)`` causal mask, optionally limited to a sliding ``window``.

    Right padding needs no more than this: padded positions come after every real one.
    """
    query = torch.arange(length, device=device)[:, None]
    key = torch.arange(length, device=device)[None, :]
    allowed = key <= query
    if window is not None:
        allowed &= query - key < window
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


class YesLogitForward:
    """Scores id batches with a causal LM (bge-reranker-v2-gemma): the ``Yes`` logit at the last token.

    ``model`` is the ``AutoModelForCausalLM`` (``GemmaForCausalLM``) as loaded; it is used, not copied.
    """

    def __init__(self, model: Any, *, yes_id: int, pad_id: int) -> None:
        """Read the LM head's ``Yes`` row off ``model`` (a view: it follows the weights' device)."""
        head = model.get_output_embeddings()
        if not 0 <= yes_id < head.weight.shape[0]:
            raise ValueError(f"yes_id {yes_id} is outside the LM head's {head.weight.shape[0]} rows")
        self.model = model
        self.yes_id = yes_id
        self.pad_id = pad_id
        self._softcap: float | None = getattr(model.config, "final_logit_softcapping", None)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device  # type: ignore[no-any-return]

    def __call__(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """fp32 logits, one per id list, in batch order (on the model's device)."""
        with torch.inference_mode():
            ids, lengths = right_pad(batch, self.pad_id, self.device)
            hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(batch), device=ids.device), lengths - 1]
            head = self.model.get_output_embeddings()
            logits: torch.Tensor = (last @ head.weight[self.yes_id]).float()
            if head.bias is not None:
                logits = logits + head.bias[self.yes_id].float()
            if self._softcap is not None:
                logits = torch.tanh(logits / self._softcap) * self._softcap
            return logits
