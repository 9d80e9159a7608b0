"""Length-sorted batches of item indices under a token budget (padded tokens, or real ones unpadded)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["padded_length", "plan_batches", "plan_packed_batches"]


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (tensor-core friendly shapes on GPU)."""
    return -(-length // multiple) * multiple


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, *, multiple: int = 1) -> list[list[int]]:
    """Split item indices into batches, longest first, each costing at most ``max_batch_tokens``.

    A batch costs ``len(batch) * padded_length(longest item)``; an item longer than the budget gets a
    batch of its own. Sorting by length keeps padding small; equal lengths keep input order, so the
    plan is deterministic. Every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0  # padded length of the batch's first (longest) item
    for i in order:
        if current and width * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = padded_length(lengths[i], multiple)
        current.append(i)
    if current:
        batches.append(current)
    return batches


def plan_packed_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Split item indices into batches of at most ``max_batch_tokens`` real tokens, longest first.

    For a padding-free forward pass a batch costs the sum of its lengths, not its size times its
    longest. The batches come out about equal in size (no small remainder), an item longer than the
    budget gets a batch of its own, equal lengths keep input order, and every index appears once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    total = sum(lengths)
    count = max(1, -(-total // max_batch_tokens))
    target = total / count
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in order:
        over_budget = size + lengths[i] > max_batch_tokens
        over_share = size + lengths[i] > target and len(batches) < count - 1
        if current and (over_budget or over_share):
            batches.append(current)
            current = []
            size = 0
        current.append(i)
        size += lengths[i]
    if current:
        batches.append(current)
    return batches
