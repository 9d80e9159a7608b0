"""Variants of the core's forward pass, timed side by side on the interactive (or throughput) workload.

    python -m benchmarks.ablations --requests 4 --variants padded,packed-2048,packed-none,ce
    python -m benchmarks.ablations --subject full --device cuda --variants packed-none,packed-none-sync,ce

Each variant scores the same requests (1 query x 100 passages; with ``--workload throughput``, the
whole throughput call, repeated), interleaved request by request with
the order alternating; the table gives seconds, pairs/s, the ratio to ``ce`` (CrossEncoder) and the
max |delta| of the logits against the first variant. Variants (the core in its default dtype: fp32
on CPU, fp16 on CUDA):

- ``padded``: the ``transformers`` forward on right-padded, length-sorted token-budget batches (the
  core before the padding-free path; on any device, the path of models it does not support);
- ``packed-N``: the padding-free forward in chunks of about N tokens (``none``: whole batches, the
  CUDA default); options appended with ``-``:
  - ``padattn``: padded-block attention instead of per-pair (CPU) or variable-length (CUDA);
  - ``sync``: the host waits for every batch's logits before preparing the next (the core before
    it copied a call's logits once);
  - ``bN``: a token budget of N a batch instead of the default 16384;
  - ``copies``: without the in-place residual adds and GELU;
  - ``compile``: the feed-forward and attention-output blocks under ``torch.compile``;
  - ``torchlinear``: torch's own linear layers (MKL on CPU) instead of oneDNN's (CPU);
  - ``gelu``: oneDNN linear layers with GELU as a separate step instead of fused (CPU);
  - ``rows1``: oneDNN without rounding the row count up to a multiple of 64 (CPU);
- ``bf16-N`` / ``bf16-N-fp32attn``: dtype bfloat16, attention in bf16 or in fp32;
- ``ce``: sentence-transformers CrossEncoder (batch 32, fp16 on CUDA); ``flag-bsN``: FlagReranker,
  batch size N (``use_fp16`` on CUDA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from benchmarks.run import build_subject
from benchmarks.workloads import make_workloads

Scorer = Callable[[list[tuple[str, str]]], list[float]]


def _layer_with_copies(self: Any, h: torch.Tensor, layer: Any, attend: Any) -> torch.Tensor:
    """An encoder layer as first written: torch's linear, a fresh tensor for each residual add and GELU."""
    a = F.linear(attend(F.linear(h, *layer.qkv)), *layer.out)
    h = F.layer_norm(a + h, (self.hidden,), *layer.ln1)
    up = F.gelu(F.linear(h, *layer.up))
    return F.layer_norm(F.linear(up, *layer.down) + h, (self.hidden,), *layer.ln2)


def _compiled_layer() -> Callable[[Any, torch.Tensor, Any, Any], torch.Tensor]:
    """An encoder layer with its feed-forward and attention-output blocks under ``torch.compile``."""

    def ffn(
        h: torch.Tensor, w1: Any, b1: Any, w2: Any, b2: Any, lw: Any, lb: Any, eps: float
    ) -> torch.Tensor:
        return F.layer_norm(F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2) + h, (h.shape[-1],), lw, lb, eps)

    def attn_out(
        a: torch.Tensor, h: torch.Tensor, w: Any, b: Any, lw: Any, lb: Any, eps: float
    ) -> torch.Tensor:
        return F.layer_norm(F.linear(a, w, b) + h, (h.shape[-1],), lw, lb, eps)

    cffn = torch.compile(ffn, dynamic=True)
    cout = torch.compile(attn_out, dynamic=True)

    def layer_fn(self: Any, h: torch.Tensor, layer: Any, attend: Any) -> torch.Tensor:
        h = cout(attend(F.linear(h, *layer.qkv)), h, *layer.out, *layer.ln1)
        return cffn(h, *layer.up, *layer.down, *layer.ln2)

    return layer_fn


def _fp32_attention(attention: Any) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    original = attention.__call__

    def call(self: Any, qkv: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = original(self, qkv.float())
        return out.to(qkv.dtype)

    return call


def make_variant(name: str, model: str, device: str = "cpu") -> Scorer:
    """A scorer for variant ``name`` (see the module docstring) on ``device``."""
    from benchmarks.contenders import Contender, ContenderSpec
    from bge_rerank_integrations import Reranker
    from bge_rerank_integrations.backends import packed as packed_module

    cuda = device.startswith("cuda")
    if name == "ce":
        spec = ContenderSpec(name, "cross-encoder", "", {"fp16": cuda, "batch_size": 32})
        return Contender(spec, model, device, 512).score
    if name.startswith("flag-bs"):
        spec = ContenderSpec(name, "flag", "", {"use_fp16": cuda, "batch_size": int(name[7:])})
        return Contender(spec, model, device, 512).score
    kind, chunk, *options = [*name.split("-"), "none"] if name == "padded" else name.split("-")
    budget = next((int(o[1:]) for o in options if o[:1] == "b" and o[1:].isdigit()), 16384)
    dtype = "bfloat16" if kind == "bf16" else "auto"
    backend: Any = Reranker(model, device=device, dtype=dtype, max_batch_tokens=budget).load()._backend
    if kind == "padded":
        backend._packed = None
        return backend.score_pairs  # type: ignore[no-any-return]
    packed = backend._packed
    packed.chunk_tokens = None if chunk == "none" else int(chunk)
    layer_fn: Any = packed_module.PackedForward._layer
    attention_call: Any = packed_module._Attention.__call__
    if "torchlinear" in options:
        packed.linear, packed.linear_gelu = F.linear, packed_module._gelu_after(F.linear)
        packed.row_multiple = 1
    if "gelu" in options:
        packed.linear_gelu = packed_module._gelu_after(packed.linear)
    if "rows1" in options:
        packed.row_multiple = 1
    if "padattn" in options:
        packed.attention = "padded"
    if "sync" in options:
        forward = backend._forward
        backend._forward = lambda batch: forward(batch).cpu()
    if "copies" in options:  # both were measured on the core before oneDNN and row rounding
        layer_fn, packed.row_multiple = _layer_with_copies, 1
    if "compile" in options:
        layer_fn, packed.row_multiple = _compiled_layer(), 1
    if "fp32attn" in options:
        attention_call = _fp32_attention(packed_module._Attention)

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        saved = packed_module.PackedForward._layer, packed_module._Attention.__call__
        packed_module.PackedForward._layer = layer_fn  # type: ignore[method-assign]
        packed_module._Attention.__call__ = attention_call  # type: ignore[method-assign]
        try:
            return backend.score_pairs(pairs)  # type: ignore[no-any-return]
        finally:
            packed_module.PackedForward._layer, packed_module._Attention.__call__ = saved  # type: ignore[method-assign]

    return score


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variants", default="padded,packed-none,packed-1024,packed-2048,packed-4096,ce")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--models", type=Path, default=Path(".models/bench"))
    parser.add_argument("--subject", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", choices=["smoke", "cpu", "gpu"], help="default: gpu on CUDA, else cpu")
    parser.add_argument(
        "--workload",
        choices=["interactive", "throughput"],
        default="interactive",
        help="throughput: every request is the whole throughput call (all its queries), repeated",
    )
    args = parser.parse_args(argv)
    model = str(build_subject(args.subject, args.models / args.subject))
    scale = args.scale or ("gpu" if args.device.startswith("cuda") else "cpu")
    names = args.variants.split(",")
    scorers = {n: make_variant(n, model, args.device) for n in names}
    workload = next(w for w in make_workloads(model, scale) if w.name == args.workload)
    calls = [[(r.query, p) for p in r.passages] for r in workload.requests]
    if not workload.per_request:
        calls = [[pair for call in calls for pair in call]] * args.requests
    calls = calls[: args.requests]
    warm = workload.warmup
    warm_pairs = [(warm.query, p) for p in warm.passages]
    first: dict[str, list[float]] = {}
    for n, f in scorers.items():  # warm-up, and compilation where asked for
        t0 = time.perf_counter()
        first[n] = f(warm_pairs)
        print(f"warm-up {n}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    times: dict[str, list[float]] = {n: [] for n in names}
    delta = dict.fromkeys(names, 0.0)
    for k, pairs in enumerate(calls):
        order = names if k % 2 == 0 else names[::-1]
        ref: list[float] | None = None
        results = {}
        for n in order:
            t0 = time.perf_counter()
            results[n] = scorers[n](pairs)
            times[n].append(time.perf_counter() - t0)
        ref = results[names[0]]
        for n in names:
            delta[n] = max(delta[n], max(abs(a - b) for a, b in zip(results[n], ref, strict=True)))
        print(f"request {k + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), file=sys.stderr)
    pairs_per_request = len(calls[0])
    print(
        f"{args.workload} workload, {args.subject} subject on {args.device}; load average "
        f"{os.getloadavg()[0]:.2f}; {len(calls)} requests of {pairs_per_request} pairs"
    )
    print(
        "Median and best seconds per request; 'vs ce' is the median over requests of the time ratio to "
        "CrossEncoder in the same request (robust to a busy spell hitting one request)."
    )
    print("| variant | median s | best s | pairs/s (median) | vs ce | max abs delta vs " + names[0] + " |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        med = statistics.median(times[n])
        vs = (
            f"{statistics.median(c / t for c, t in zip(times['ce'], times[n], strict=True)):.2f}"
            if "ce" in times
            else "-"
        )
        print(
            f"| {n} | {med:.2f} | {min(times[n]):.2f} | {pairs_per_request / med:.1f} | {vs} "
            f"| {delta[n]:.2g} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
