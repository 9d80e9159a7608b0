"""Batch composition never changes a score; batches respect the token budget; order comes back."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.batching import padded_length, plan_batches, plan_packed_batches

from .seams import cross_encoder, padded
from .texts import LONG_PASSAGE, PASSAGES, QUERIES


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=300),
    budget=st.integers(min_value=1, max_value=5000),
    multiple=st.sampled_from([1, 8]),
)
def test_plan_covers_every_item_once_within_budget(lengths: list[int], budget: int, multiple: int) -> None:
    batches = plan_batches(lengths, budget, multiple=multiple)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        width = padded_length(max(lengths[i] for i in batch), multiple)
        assert len(batch) == 1 or width * len(batch) <= budget
    # Longest first, so similar lengths share a batch and padding stays small.
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_plan_fills_batches_up_to_the_budget() -> None:
    assert plan_batches([10, 10, 10, 10, 10], 30) == [[0, 1, 2], [3, 4]]
    assert plan_batches([5, 50, 5, 5], 50) == [[1], [0, 2, 3]]


def workload(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    texts = [*PASSAGES, LONG_PASSAGE]
    return [(rng.choice(QUERIES), rng.choice(texts)[: rng.randint(0, 400)]) for _ in range(n)]


def test_score_does_not_depend_on_batch_neighbours_order_or_budget(model_dir: Path) -> None:
    pairs = workload(201)
    alone = Reranker(model_dir, device="cpu")
    singles = [alone.score_pairs([pair])[0] for pair in pairs]

    # fp32 rounding differs with the matmul shapes of a batch: 1e-5 absolute, or relative for |x| > 1.
    for budget in (1, 700, 16384, 10**6):
        together = Reranker(model_dir, device="cpu", max_batch_tokens=budget).score_pairs(pairs)
        assert together == pytest.approx(singles, abs=1e-5, rel=1e-5)

    order = list(range(len(pairs)))
    random.Random(1).shuffle(order)
    shuffled = alone.score_pairs([pairs[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(pairs))] == pytest.approx(singles, abs=1e-5, rel=1e-5)


def test_scores_come_back_in_input_order(model_dir: Path) -> None:
    reranker = Reranker(model_dir, device="cpu", max_batch_tokens=256)
    query = QUERIES[0]
    forward = reranker.score(query, PASSAGES)
    backward = reranker.score(query, PASSAGES[::-1])
    assert backward[::-1] == pytest.approx(forward, abs=1e-5)
    assert len(set(forward)) > len(PASSAGES) // 2  # distinct scores, so an order mix-up would show


def test_out_of_memory_splits_the_batch_and_retries(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = workload(40)
    expected = Reranker(model_dir, device="cpu").score_pairs(pairs)

    reranker = Reranker(model_dir, device="cpu", max_batch_tokens=10**6).load()
    model = cross_encoder(reranker)  # this reranker's own view of the shared weights
    real_forward = model.forward
    seen: list[int] = []

    def forward_with_small_memory(batch: list[list[int]], options: Any) -> torch.Tensor:
        seen.append(len(batch))
        if len(batch) > 6:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(batch, options)

    monkeypatch.setattr(model, "forward", forward_with_small_memory)
    assert reranker.score_pairs(pairs) == pytest.approx(expected, abs=1e-5)
    distinct = len(set(pairs))  # duplicates are scored once
    assert seen[0] == distinct  # the whole request was tried as one batch first
    assert sum(n for n in seen if n <= 6) == distinct  # every pair ran exactly once in the end


def test_out_of_memory_on_a_single_pair_is_raised(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reranker = Reranker(model_dir, device="cpu").load()

    def always_out_of_memory(batch: list[list[int]], options: Any) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(cross_encoder(reranker), "forward", always_out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        reranker.score(QUERIES[0], PASSAGES[:3])
    monkeypatch.undo()
    assert len(reranker.score(QUERIES[0], PASSAGES[:3])) == 3  # still usable afterwards


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=300),
    budget=st.integers(min_value=1, max_value=5000),
)
def test_packed_plan_covers_every_item_once_within_budget(lengths: list[int], budget: int) -> None:
    batches = plan_packed_batches(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:  # a padding-free batch costs its real tokens
        assert len(batch) == 1 or sum(lengths[i] for i in batch) <= budget
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_padding_free_and_padded_forward_agree(model_dir: Path) -> None:
    """The padding-free path (XLM-RoBERTa) and the transformers fallback give the same scores."""
    pairs = workload(120, seed=3)
    packed = Reranker(model_dir, device="cpu", max_batch_tokens=2048).load()
    fallback = padded(packed)
    assert cross_encoder(packed).padding_free
    assert not cross_encoder(fallback).padding_free
    # Two implementations summing in different orders: the parity bound (1e-4) used against the
    # reference forward, not the same-code batch-invariance bound (measured up to 1.25e-5 apart).
    assert fallback.score_pairs(pairs) == pytest.approx(packed.score_pairs(pairs), abs=1e-4)
    stats = fallback.stats
    assert stats.computed_tokens > stats.real_tokens  # the fallback really padded


def test_linear_layer_library_and_attention_mode_do_not_change_scores(model_dir: Path) -> None:
    """oneDNN's linear layers (rows rounded up to 64) agree with torch's, under both CPU attentions."""
    pairs = workload(90, seed=5)
    default = Reranker(model_dir, device="cpu", max_batch_tokens=3000).load()
    packed = cross_encoder(default).packed
    assert packed is not None
    rows: list[int] = []
    onednn_linear = packed.linear

    def recording(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        rows.append(x.shape[0])
        return onednn_linear(x, weight, bias)  # type: ignore[no-any-return]

    packed.linear = recording
    expected = default.score_pairs(pairs)
    assert packed.linear_library == "oneDNN"  # an x86 CPU torch build has it, and it agrees with torch
    assert rows
    assert all(n % 64 == 0 for n in rows)  # few distinct shapes for oneDNN's kernel cache
    stats = default.stats
    assert stats.real_tokens < stats.computed_tokens < stats.real_tokens + 64 * len(rows)  # spare rows count
    packed.linear = onednn_linear
    packed.attention = "padded"  # one masked attention call over spare rows too (the CUDA fallback)
    assert default.score_pairs(pairs) == pytest.approx(expected, abs=1e-4)
    packed.attention = "per-pair"
    packed.use_torch_linears()
    assert default.score_pairs(pairs) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("dtype", "bound"), [("float16", 0.1), ("bfloat16", 0.5)])
def test_half_precision_padding_free_forward_agrees_with_transformers(
    model_dir: Path, dtype: str, bound: float
) -> None:
    """The half-precision path (fp16 is the GPU default) runs here too, in the CPU and the GPU setup.

    A GPU is not always at hand to test on; this runs the same arithmetic on CPU: in chunks with
    per-pair attention, and as on CUDA without variable-length attention (one pass, padded masked
    attention). The bounds leave room for the dtype's own noise: on these pairs both implementations
    land about 0.02 (fp16) and 0.17-0.18 (bf16) from fp32, and up to 0.02 and 0.25 from each other.
    """
    pairs = workload(60, seed=3)
    packed = Reranker(model_dir, device="cpu", dtype=dtype, max_batch_tokens=2048).load()
    expected = padded(packed).score_pairs(pairs)
    forward = cross_encoder(packed).packed
    assert forward is not None
    assert forward.word.dtype == getattr(torch, dtype)
    forward.chunk_tokens = 512  # several chunks a batch (the default, 4k, exceeds these batches)
    assert packed.score_pairs(pairs) == pytest.approx(expected, abs=bound)
    forward.chunk_tokens, forward.attention, forward.row_multiple = None, "padded", 1  # as on CUDA
    assert packed.score_pairs(pairs) == pytest.approx(expected, abs=bound)


@pytest.mark.parametrize("attention", ["per-pair", "padded"])
def test_last_layer_runs_on_each_pairs_first_row_only_and_scores_do_not_change(
    model_dir: Path, attention: str
) -> None:
    """The classifier reads each pair's <s> row, so the last layer computes only those (and all keys)."""
    pairs = workload(70, seed=7)
    reranker = Reranker(model_dir, device="cpu", max_batch_tokens=1500).load()
    packed = cross_encoder(reranker).packed
    assert packed is not None
    packed.chunk_tokens = None  # one run through the layers a pass
    packed.attention = attention  # per-pair: the CPU's; padded: the CUDA path's, run here on CPU
    packed.first_rows_only = False
    every_row = reranker.score_pairs(pairs)
    shapes: list[tuple[int, int]] = []

    def recording(linear: Any) -> Any:
        def record(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            shapes.append((x.shape[0], weight.shape[0]))
            return linear(x, weight, bias)  # type: ignore[no-any-return]

        return record

    packed.linear, packed.linear_gelu = recording(packed.linear), recording(packed.linear_gelu)
    packed.first_rows_only = True
    passes = reranker.stats.forward_passes
    first_rows = reranker.score_pairs(pairs)
    assert first_rows == pytest.approx(every_row, abs=1e-5, rel=1e-5)
    passes = reranker.stats.forward_passes - passes
    # a layer: query/key/value, output, up, down; the last layer splits its queries from its keys and
    # values, and all but the keys and values run on one row a pair (rounded up like every pass)
    layers, hidden = len(packed.layers), packed.hidden
    assert passes > 1
    assert len(shapes) == passes * (4 * layers + 1)
    for p in range(passes):
        pass_shapes = shapes[p * (4 * layers + 1) : (p + 1) * (4 * layers + 1)]
        tokens = pass_shapes[0][0]
        assert all(rows == tokens for rows, _ in pass_shapes[: 4 * (layers - 1)])
        last = pass_shapes[4 * (layers - 1) :]
        up = packed.layers[-1].up[0].shape[0]
        assert [n for _, n in last] == [hidden, 2 * hidden, hidden, up, hidden]
        first = last[0][0]
        assert [rows for rows, _ in last] == [first, tokens, first, first, first]
        assert first < tokens
