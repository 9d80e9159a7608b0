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
  - ``alllayers``: the last layer on every row (the core runs it on each pair's ``<s>`` row only);
- ``bf16-N`` / ``bf16-N-fp32attn``: dtype bfloat16, attention in bf16 or in fp32;
- ``ce``: sentence-transformers CrossEncoder (batch 32, fp16 on CUDA); ``flag-bsN``: FlagReranker,
  batch size N (``use_fp16`` on CUDA).
"""

from __future__ import annotations

import argparse
import os
import re
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

from benchmarks.run import _sync, build_subject
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


_OPTIONS = {"padattn", "sync", "copies", "compile", "torchlinear", "gelu", "rows1", "fp32attn", "alllayers"}
_BUDGET = re.compile(r"b(\d+)", re.ASCII)  # the option bN: a token budget of N a batch


def make_variant(name: str, model: str, device: str = "cpu") -> tuple[Scorer, str]:
    """A scorer for variant ``name`` (see the module docstring) on ``device``, and what it runs."""
    from benchmarks.contenders import Contender, ContenderSpec
    from bge_rerank_integrations import Reranker
    from bge_rerank_integrations.backends import packed as packed_module

    cuda = device.startswith("cuda")
    if name == "ce":
        spec = ContenderSpec(name, "cross-encoder", "", {"fp16": cuda, "batch_size": 32})
        return Contender(spec, model, device, 512).score, "reference" + (", float16" if cuda else "")
    if re.fullmatch(r"flag-bs\d+", name, re.ASCII):
        spec = ContenderSpec(name, "flag", "", {"use_fp16": cuda, "batch_size": int(name[7:])})
        return Contender(spec, model, device, 512).score, "reference" + (", float16" if cuda else "")
    kind, *rest = name.split("-")
    chunk, options = ("none", rest) if kind == "padded" else (rest[0] if rest else "", rest[1:])
    budgets = [int(m[1]) for o in options if (m := _BUDGET.fullmatch(o))]
    unknown = [o for o in options if o not in _OPTIONS and not _BUDGET.fullmatch(o)]
    if kind not in ("packed", "bf16", "padded") or unknown or not re.fullmatch(r"none|\d+", chunk, re.ASCII):
        raise SystemExit(f"unknown variant {name!r} (see the module docstring)")
    settings: dict[str, Any] = {"max_batch_tokens": budgets[-1]} if budgets else {}
    dtype = "bfloat16" if kind == "bf16" else "auto"
    backend: Any = Reranker(model, device=device, dtype=dtype, **settings).load()._backend
    if "sync" in options:  # the host waits for each batch's logits, as the core did before
        forward = backend._forward
        backend._forward = lambda batch: forward(batch).cpu()
    runs = str(next(backend._model.parameters()).dtype).removeprefix("torch.")
    if kind == "padded":
        backend._packed = None
        return backend.score_pairs, f"{runs}, transformers forward"
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
    if "alllayers" in options:
        packed.first_rows_only = False
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

    return score, f"{runs}, padding-free, {packed.attention} attention"


def _timed(scorer: Scorer, pairs: list[tuple[str, str]], device: str) -> tuple[list[float], float]:
    """Scores and wall seconds, the device idle before and after (scorers return host floats anyway)."""
    _sync(device)
    t0 = time.perf_counter()
    scores = scorer(pairs)
    _sync(device)
    return scores, time.perf_counter() - t0


def _compare(
    workload: Any, requests: int, scorers: dict[str, tuple[Scorer, str]], args: argparse.Namespace
) -> None:
    """Time every variant on ``workload``, interleaved, and print its table."""
    names = list(scorers)
    calls = [[(r.query, p) for p in r.passages] for r in workload.requests]
    if not workload.per_request:  # the whole throughput call, repeated
        calls = [[pair for call in calls for pair in call]] * requests
    calls = calls[:requests]
    warm = [(workload.warmup.query, p) for p in workload.warmup.passages]
    for n, (scorer, _) in scorers.items():  # warm-up (compilation where asked for), at both sizes
        seconds = sum(_timed(scorer, pairs, args.device)[1] for pairs in (warm, calls[0]))
        print(f"warm-up {n}: {seconds:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    delta = dict.fromkeys(names, 0.0)
    for k, pairs in enumerate(calls):
        results = {}
        for n in names if k % 2 == 0 else names[::-1]:
            results[n], seconds = _timed(scorers[n][0], pairs, args.device)
            times[n].append(seconds)
        first = results[names[0]]
        for n in names:
            delta[n] = max(delta[n], max(abs(a - b) for a, b in zip(results[n], first, strict=True)))
        print(f"request {k + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), file=sys.stderr)
    print(
        f"{workload.name} workload, {args.subject} subject on {args.device}; load average "
        f"{os.getloadavg()[0]:.2f}; {len(calls)} requests of {len(calls[0])} pairs. Median and best "
        "milliseconds per request; 'vs ce' is the median over requests of the time ratio to CrossEncoder "
        "in the same request (robust to a busy spell hitting one request)."
    )
    print(
        f"| variant | runs | median ms | best ms | pairs/s (median) | vs ce | max abs delta vs {names[0]} |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for n in names:
        med = statistics.median(times[n])
        vs = "-"
        if "ce" in times:
            vs = f"{statistics.median(c / t for c, t in zip(times['ce'], times[n], strict=True)):.2f}"
        print(
            f"| {n} | {scorers[n][1]} | {med * 1e3:,.1f} | {min(times[n]) * 1e3:,.1f} "
            f"| {len(calls[0]) / med:,.1f} | {vs} | {delta[n]:.2g} |"
        )
    print(flush=True)


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
        default="interactive",
        help="interactive, throughput (the whole throughput call, repeated), or both comma-separated; "
        "each prints its table as soon as it is done",
    )
    parser.add_argument(
        "--throughput-requests", type=int, help="repeats of the throughput call (default: --requests)"
    )
    args = parser.parse_args(argv)
    model = str(build_subject(args.subject, args.models / args.subject))
    scale = args.scale or ("gpu" if args.device.startswith("cuda") else "cpu")
    workloads = {w.name: w for w in make_workloads(model, scale)}
    chosen = args.workload.split(",")
    if any(w not in ("interactive", "throughput") for w in chosen):
        raise SystemExit(f"--workload takes interactive and/or throughput, not {args.workload!r}")
    scorers = {n: make_variant(n, model, args.device) for n in args.variants.split(",")}
    for name in chosen:  # one process, so every variant is loaded once for both
        repeats = (args.throughput_requests or args.requests) if name == "throughput" else args.requests
        _compare(workloads[name], repeats, scorers, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
