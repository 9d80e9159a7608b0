"""Where the core's CPU forward pass spends its time, kernel by kernel.

    python -m benchmarks.kernels linear      # MKL (torch's addmm) vs oneDNN on the layer shapes
    python -m benchmarks.kernels attention   # per-pair flash attention vs bmm + softmax, 2k-token chunks,
                                             # and flash attention's rate by sequence length
    python -m benchmarks.kernels profile     # torch profiler over one interactive request
    python -m benchmarks.kernels flow        # each linear shape inside that request vs alone, and the
                                             # FLOP rate the request would reach at the kernels' own rates

Figures quoted from these commands are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.harness import best_seconds, matmul_peak

SHAPES = ((384, 1152), (384, 384), (384, 1536), (1536, 384), (1024, 3072), (1024, 4096), (4096, 1024))
"""The linear layers' (in, out) shapes of the reduced and the full subject."""
LENGTHS = (64, 128, 192, 256, 384, 512, 1024, 2048, 4096, 8192)
"""The sequence lengths of flash attention's rate by length."""


def linear(shapes: Sequence[tuple[int, int]] = SHAPES, square: int = 2048) -> None:
    """GFLOP/s of one linear layer, 2048 rows, through each library, for each (in, out) shape; then
    of a ``square`` x ``square`` matmul."""
    onednn = torch.ops.mkldnn._linear_pointwise
    print("| in x out | MKL (F.linear) GFLOP/s | oneDNN GFLOP/s |")
    print("|---|---:|---:|")
    rows = 2048
    for k, n in shapes:
        x, w, b = torch.randn(rows, k), torch.randn(n, k) * 0.05, torch.randn(n)
        flops = 2 * rows * k * n
        mkl = best_seconds(lambda: F.linear(x, w, b))  # noqa: B023  (called before the loop moves on)
        dnn = best_seconds(lambda: onednn(x, w, b, "none", [], ""))  # noqa: B023
        print(f"| {k} x {n} | {flops / mkl / 1e9:.0f} | {flops / dnn / 1e9:.0f} |")
    a, c = torch.randn(square, square), torch.randn(square, square)
    flops = 2 * square**3
    print(f"square {square} matmul: MKL {flops / best_seconds(lambda: a @ c) / 1e9:.0f} GFLOP/s, ", end="")
    print(f"oneDNN {flops / best_seconds(lambda: onednn(a, c, None, 'none', [], '')) / 1e9:.0f} GFLOP/s")


def attention(heads: int = 6, dim: int = 64, chunks: int = 10, sweep: Sequence[int] = LENGTHS) -> None:
    """Per-pair attention over 2k-token chunks of skewed lengths (the reduced subject's heads)."""
    rng = random.Random(1)
    hidden = heads * dim
    data = []
    for _ in range(chunks):
        lengths: list[int] = []
        while sum(lengths) < 2048:
            lengths.append(min(510, max(20, int(rng.lognormvariate(5.0, 0.6)))))
        bounds = list(itertools.accumulate(lengths, initial=0))
        data.append((torch.randn(bounds[-1], 3 * hidden), bounds))
    flops = sum(4 * (b - a) ** 2 * hidden for _, bounds in data for a, b in itertools.pairwise(bounds))

    def flash(qkv: torch.Tensor, bounds: list[int]) -> torch.Tensor:  # as the core's CPU attention
        split = qkv.view(-1, 3, heads, dim)
        out = qkv.new_empty(qkv.shape[0], heads, dim)
        for a, b in itertools.pairwise(bounds):  # one call a pair, on views of the packed matrix
            q, k, v = (split[a:b, i].transpose(0, 1).unsqueeze(0) for i in range(3))
            out[a:b] = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1)
        return out.view(-1, hidden)

    def bmm(qkv: torch.Tensor, bounds: list[int]) -> torch.Tensor:  # queries come pre-scaled
        split = qkv.view(-1, 3, heads, dim)
        out = qkv.new_empty(qkv.shape[0], heads, dim)
        for a, b in itertools.pairwise(bounds):
            q, k, v = (split[a:b, i].transpose(0, 1) for i in range(3))
            out[a:b] = torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(-1), v).transpose(0, 1)
        return out.view(-1, hidden)

    scaled = [(qkv.clone(), bounds) for qkv, bounds in data]
    for qkv, _ in scaled:
        qkv[:, :hidden] *= dim**-0.5
    with torch.inference_mode():
        delta = max((flash(*d) - bmm(*s)).abs().max().item() for d, s in zip(data, scaled, strict=True))
        print(f"max |delta| between the two: {delta:.1e}")
        for name, fn, inputs in [("flash (per pair)", flash, data), ("bmm + softmax", bmm, scaled)]:
            seconds = best_seconds(lambda: [fn(*x) for x in inputs], repeats=3)  # noqa: B023
            print(f"{name}: {seconds * 1e3:.1f} ms, {flops / seconds / 1e9:.0f} GFLOP/s")
        print("flash attention by sequence length, GFLOP/s for 1 (and to 2048 tokens 4) sequences a call:")
        for length in sweep:
            rates = []
            for pairs in (1, 4) if length <= 2048 else (1,):  # a few seconds a call beyond
                q, k, v = (torch.randn(pairs, heads, length, dim) for _ in range(3))
                repeats = 10 if length <= 2048 else 2
                seconds = best_seconds(lambda: F.scaled_dot_product_attention(q, k, v), repeats)  # noqa: B023
                rates.append(f"{4 * pairs * heads * length**2 * dim / seconds / 1e9:.0f}")
            print(f"  {length} tokens: {' / '.join(rates)}")


def _interactive_request(model: str) -> tuple[Callable[[], None], list[list[int]], dict[str, int]]:
    """The core's scoring of the first interactive request as a call (on this thread, without the
    queue), the token ids it scores, and the model's shape."""
    from benchmarks.subjects import build_subject
    from benchmarks.workloads import make_workloads
    from bge_rerank_integrations.backends.local import LocalBackend
    from bge_rerank_integrations.config import RerankerConfig

    path = build_subject("small", Path(model))
    request = make_workloads(path, "cpu")[0].requests[0]
    pairs = [(request.query, p) for p in request.passages]
    backend = LocalBackend(RerankerConfig(model=str(path), device="cpu"), padding_free=True)
    ids = backend.encode(pairs, backend.config.scoring)
    cfg = json.loads((path / "config.json").read_text())
    shape = {k: int(cfg[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers")}

    def run() -> None:
        backend.score_pairs(pairs, backend.config.scoring)

    return run, ids, shape


def profile(model: str = ".models/bench/small") -> None:
    """The torch profiler's op table for the core scoring one interactive request (padding-free)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run, ids, _ = _interactive_request(model)
    print(f"{sum(map(len, ids))} tokens; forward {best_seconds(run, repeats=3):.2f} s (best of 3)")
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def flow(model: str = ".models/bench/small") -> None:
    """Each oneDNN linear shape of one interactive request, timed inside the forward pass and alone.

    One profiled run of the forward gives each shape's mean time a call inside it; the same call
    repeated alone gives its mean time with its data in the cache. The summary splits that profiled
    run into linear layers, attention and the rest (tokenization and profiler overhead included),
    and gives the FLOP rate it would have had with every linear layer at its rate alone: an estimate
    from below.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from benchmarks.run import forward_flops

    run, ids, shape = _interactive_request(model)
    forward = best_seconds(run, repeats=3)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        run()
        profiled = time.perf_counter() - t0
    events = prof.key_averages(group_by_input_shape=True)
    linears = sorted(
        (e for e in events if e.key == "mkldnn::_linear_pointwise"), key=lambda e: e.input_shapes[:2]
    )
    if not linears:
        print("no oneDNN linear layers in the forward (oneDNN unavailable here?): nothing to compare")
        return
    op = torch.ops.mkldnn._linear_pointwise
    print("| rows x in x out | calls | in the forward, ms a call | alone, ms | GFLOP/s in / alone |")
    print("|---|---:|---:|---:|---:|")
    inside = alone = 0.0
    for event in linears:
        (rows, k), (n, _) = event.input_shapes[0], event.input_shapes[1]
        gelu = n == shape["intermediate_size"]  # the up-projection, GELU fused as in the forward
        x, w, b = torch.randn(rows, k), torch.randn(n, k) * 0.05, torch.randn(n)
        args: tuple[object, ...] = (x, w, b, *(("gelu", [], "none") if gelu else ("none", [], "")))
        with torch.inference_mode():
            op(*args)
            t0 = time.perf_counter()
            for _ in range(10):
                op(*args)
            seconds = (time.perf_counter() - t0) / 10  # a mean, as the profiler's figure is
        per_call = event.cpu_time_total / event.count / 1e6
        inside += per_call * event.count
        alone += seconds * event.count
        flops = 2 * rows * k * n
        print(
            f"| {rows} x {k} x {n}{' +GELU' if gelu else ''} | {event.count} | {per_call * 1e3:.2f} "
            f"| {seconds * 1e3:.2f} | {flops / per_call / 1e9:.0f} / {flops / seconds / 1e9:.0f} |"
        )
    attention = sum(e.cpu_time_total for e in events if e.key == "aten::scaled_dot_product_attention") / 1e6
    flops = forward_flops([len(x) for x in ids], shape)
    peak = matmul_peak("cpu", torch.float32)
    ceiling = profiled - inside + alone

    def rate(seconds: float) -> str:
        return f"{flops / seconds / 1e9:.0f} GFLOP/s, {flops / seconds / peak:.0%} of the matmul peak"

    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s; {flops / 1e9:.0f} real-token GFLOP")
    print(f"forward {forward:.2f} s (best of 3): {rate(forward)}")
    print(f"profiled run {profiled:.2f} s: linear layers {inside:.2f} s (alone {alone:.2f} s), ", end="")
    print(f"attention {attention:.2f} s, the rest {profiled - inside - attention:.2f} s")
    print(f"the profiled run with every linear layer at its rate alone: {ceiling:.2f} s, {rate(ceiling)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=["linear", "attention", "profile", "flow"])
    args = parser.parse_args(argv)
    {"linear": linear, "attention": attention, "profile": profile, "flow": flow}[args.what]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
