"""Variants of the core's forward pass, timed side by side on the interactive (or throughput) workload.

    python -m benchmarks.ablations --requests 4 --variants core,padded,packed-2048,packed-none,ce
    python -m benchmarks.ablations --subject full --device cuda --variants packed-none,packed-none-sync,ce
    python -m benchmarks.ablations --list        # every variant of the table, with what it changes

Each variant scores the same requests (1 query x 100 passages; with ``--workload throughput``, the
whole throughput call, repeated), interleaved request by request with the order alternating; the
table gives milliseconds, pairs/s, the ratio to ``ce`` (CrossEncoder) and the max |delta| of the
logits against the first variant. A variant is a :class:`Variant` value in :data:`VARIANTS`, looked
up by its name: ``core`` is the package's own local backend at its defaults; ``padded`` the same
backend on the padded ``transformers`` forward; the ``packed-*`` and ``bf16-*`` variants run the
padding-free forward (:class:`~bge_rerank_integrations.backends.packed.PackedForward`) built here,
with one choice changed, through the same encode / plan / forward / reorder steps as the backend;
``ce`` and ``flag-bs*`` are the references.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from benchmarks.harness import markdown_table, percentile, timed
from benchmarks.subjects import DEFAULT_MODELS, SUBJECTS, build_subject
from benchmarks.workloads import Workload, make_workloads
from bge_rerank_integrations.backends.packed import PackedForward

__all__ = ["VARIANTS", "Variant", "main", "make_variant", "variants"]

Scorer = Callable[[list[tuple[str, str]]], list[float]]
Kind = Literal["core", "padded", "packed", "cross-encoder", "flag"]


@dataclass(frozen=True)
class Variant:
    """One way of scoring the workload: the core, or the padding-free forward with choices changed."""

    name: str
    what: str
    """One line: what this variant changes (``--list`` prints it)."""
    kind: Kind = "packed"
    dtype: Literal["auto", "bfloat16"] = "auto"
    """``auto``: fp32 on CPU, fp16 on CUDA, as the core."""
    chunk_tokens: int | None = None
    """The padding-free forward runs a batch in parts of about this many tokens; ``None``: whole."""
    max_batch_tokens: int = 16384
    """The token budget of a batch (the core's default)."""
    padded_attention: bool = False
    """Padded-block attention instead of per-pair (CPU) or variable-length (CUDA)."""
    fp32_attention: bool = False
    """Attention computed in fp32 for a half-precision model."""
    linear: Literal["default", "torch", "unfused-gelu"] = "default"
    """``torch``: torch's own linear layers (MKL on CPU) instead of oneDNN's; ``unfused-gelu``:
    oneDNN with GELU as a separate step."""
    round_rows: bool = True
    """Round the rows up to a multiple of 64 on CPU (fewer oneDNN kernel shapes)."""
    last_layer_all_rows: bool = False
    """The last layer on every row (the core runs it on each pair's ``<s>`` row only)."""
    layer: Literal["default", "copies", "compiled"] = "default"
    """``copies``: torch's linear, a fresh tensor for each residual add and GELU (the first version);
    ``compiled``: the feed-forward and attention-output blocks under ``torch.compile``."""
    sync: bool = False
    """The host waits for every batch's logits before preparing the next (the core before it copied
    a call's logits once)."""
    batch_size: int = 32
    """The references' batch size."""


def _table() -> list[Variant]:
    """Every variant, by name: the ones RESULTS.md and ``gpu.sh`` quote, and the smoke test's."""
    table = [
        Variant("core", "the package's local backend at its defaults (the reference row)", kind="core"),
        Variant("padded", "the transformers forward on right-padded, length-sorted batches", kind="padded"),
        Variant("ce", "sentence-transformers CrossEncoder, batch 32 (fp16 on CUDA)", kind="cross-encoder"),
    ]
    table += [
        Variant(f"flag-bs{n}", f"FlagReranker, batch size {n} (use_fp16 on CUDA)", kind="flag", batch_size=n)
        for n in (1, 2, 4, 8, 16, 32, 128)
    ]
    for chunk in (None, 1024, 1536, 2048, 3072, 4096):
        label = "none" if chunk is None else str(chunk)
        part = "whole batches" if chunk is None else f"parts of about {chunk} tokens"
        table.append(Variant(f"packed-{label}", f"padding-free, {part}", chunk_tokens=chunk))
    table += [
        Variant("packed-none-sync", "whole batches, the host waiting for each batch", sync=True),
        Variant("packed-none-padattn", "whole batches, padded-block attention", padded_attention=True),
        Variant("packed-none-b512", "whole batches, a budget of 512 tokens", max_batch_tokens=512),
        Variant("packed-none-b65536", "whole batches, a budget of 65536 tokens", max_batch_tokens=65536),
        Variant(
            "packed-2048-padattn",
            "2k parts, padded-block attention",
            chunk_tokens=2048,
            padded_attention=True,
        ),
        Variant(
            "packed-2048-copies",
            "2k parts, torch's linear and out-of-place adds",
            chunk_tokens=2048,
            layer="copies",
            round_rows=False,
        ),
        Variant(
            "packed-2048-compile",
            "2k parts, blocks under torch.compile",
            chunk_tokens=2048,
            layer="compiled",
            round_rows=False,
        ),
        Variant(
            "packed-2048-torchlinear",
            "2k parts, torch's linear (MKL)",
            chunk_tokens=2048,
            linear="torch",
            round_rows=False,
        ),
        Variant(
            "packed-4096-torchlinear",
            "4k parts, torch's linear (MKL)",
            chunk_tokens=4096,
            linear="torch",
            round_rows=False,
        ),
        Variant(
            "packed-2048-gelu",
            "2k parts, GELU after oneDNN's linear",
            chunk_tokens=2048,
            linear="unfused-gelu",
        ),
        Variant("packed-2048-rows1", "2k parts, rows not rounded up", chunk_tokens=2048, round_rows=False),
        Variant(
            "packed-2048-alllayers",
            "2k parts, the last layer on every row",
            chunk_tokens=2048,
            last_layer_all_rows=True,
        ),
    ]
    table += [
        Variant(f"bf16-{n}", f"bfloat16, parts of about {n} tokens", dtype="bfloat16", chunk_tokens=n)
        for n in (2048, 4096, 8192)
    ]
    table.append(
        Variant(
            "bf16-4096-fp32attn",
            "bfloat16, 4k parts, attention in fp32",
            dtype="bfloat16",
            chunk_tokens=4096,
            fp32_attention=True,
        )
    )
    return table


VARIANTS: dict[str, Variant] = {v.name: v for v in _table()}
"""The variants ``--variants`` names, in the order ``--list`` prints them."""


def variants(names: Sequence[str]) -> list[Variant]:
    """The variants named, in that order; ``SystemExit`` naming the unknown ones."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(map(repr, unknown))}; see --list")
    return [VARIANTS[n] for n in names]


# -- the padding-free forward, varied --------------------------------------------------------------
def _gelu_after(linear: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``linear`` followed by the exact (erf) GELU as a separate step, in place."""

    def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = linear(x, weight, bias)
        torch.ops.aten.gelu_(out)
        return out

    return linear_gelu


class _VariedForward(PackedForward):
    """The padding-free forward with a variant's layer implementation (``PackedForward.encoder_layer``)."""

    def __init__(self, model: Any, variant: Variant, chunk_tokens: int | None) -> None:
        super().__init__(model, chunk_tokens=chunk_tokens)
        self.variant = variant
        self._blocks = _compiled_blocks() if variant.layer == "compiled" else None

    def encoder_layer(self, h: torch.Tensor, layer: Any, attend: Any) -> torch.Tensor:
        if self.variant.fp32_attention:
            inner = attend

            def attend(qkv: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = inner(qkv.float())
                return out.to(qkv.dtype)

        if self.variant.layer == "copies":  # as first written, before oneDNN and row rounding
            a = F.linear(attend(F.linear(h, *layer.qkv)), *layer.out)
            h = F.layer_norm(a + h, (self.hidden,), *layer.ln1)
            up = F.gelu(F.linear(h, *layer.up))
            return F.layer_norm(F.linear(up, *layer.down) + h, (self.hidden,), *layer.ln2)
        if self._blocks is not None:
            attn_out, ffn = self._blocks
            h = attn_out(attend(F.linear(h, *layer.qkv)), h, *layer.out, *layer.ln1)
            return ffn(h, *layer.up, *layer.down, *layer.ln2)
        return super().encoder_layer(h, layer, attend)


def _compiled_blocks() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """The attention-output and feed-forward blocks of a layer, each under ``torch.compile``."""

    def attn_out(
        a: torch.Tensor, h: torch.Tensor, w: Any, b: Any, lw: Any, lb: Any, eps: float
    ) -> torch.Tensor:
        return F.layer_norm(F.linear(a, w, b) + h, (h.shape[-1],), lw, lb, eps)

    def ffn(
        h: torch.Tensor, w1: Any, b1: Any, w2: Any, b2: Any, lw: Any, lb: Any, eps: float
    ) -> torch.Tensor:
        return F.layer_norm(F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2) + h, (h.shape[-1],), lw, lb, eps)

    return torch.compile(attn_out, dynamic=True), torch.compile(ffn, dynamic=True)


@functools.cache
def _model(model_dir: str, device: str, dtype: str) -> Any:
    """The subject as a ``transformers`` model on ``device``, loaded once per dtype for all variants."""
    from transformers import AutoModelForSequenceClassification

    torch_dtype = (
        torch.bfloat16 if dtype == "bfloat16" else torch.float16 if device.startswith("cuda") else None
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch_dtype)
    return model.to(device).eval()


def _packed_scorer(variant: Variant, model_dir: str, device: str) -> tuple[Scorer, str]:
    """A scorer running ``variant``'s padding-free forward: the backend's steps, with its choices."""
    from transformers import AutoTokenizer

    from bge_rerank_integrations.batching import plan_packed_batches
    from bge_rerank_integrations.config import RerankerConfig
    from bge_rerank_integrations.tokenization import PairEncoder

    config = RerankerConfig(model=model_dir, max_batch_tokens=variant.max_batch_tokens)
    encoder = PairEncoder.from_transformers(
        AutoTokenizer.from_pretrained(model_dir),
        max_length=config.max_length,
        query_max_length=config.resolved_query_max_length,
    )
    model = _model(model_dir, device, variant.dtype)
    forward = _VariedForward(model, variant, variant.chunk_tokens)
    if variant.padded_attention:
        forward.attention = "padded"
    if variant.linear == "torch":
        forward.linear, forward.linear_gelu = F.linear, _gelu_after(F.linear)
    elif variant.linear == "unfused-gelu":
        forward.linear_gelu = _gelu_after(forward.linear)
    if not variant.round_rows:
        forward.row_multiple = 1
    forward.first_rows_only = not variant.last_layer_all_rows

    def score(pairs: list[tuple[str, str]]) -> list[float]:
        ids = encoder.encode(pairs)
        plan = plan_packed_batches([len(x) for x in ids], variant.max_batch_tokens)
        with torch.inference_mode():
            logits = []
            for batch in plan:
                out = forward([ids[i] for i in batch])
                logits.append(out.cpu() if variant.sync else out)
            values: list[float] = torch.cat(logits).cpu().tolist()
        scores = [0.0] * len(ids)
        for i, value in zip(itertools.chain.from_iterable(plan), values, strict=True):
            scores[i] = value
        return scores

    runs = str(next(model.parameters()).dtype).removeprefix("torch.")
    return score, f"{runs}, padding-free, {forward.attention} attention"


def make_variant(variant: Variant, model: str, device: str = "cpu") -> tuple[Scorer, str]:
    """A scorer for ``variant`` on ``device``, and what it really runs (dtype, forward, attention)."""
    from benchmarks.contenders import Contender, ContenderSpec

    cuda = device.startswith("cuda")
    if variant.kind == "cross-encoder":
        spec = ContenderSpec(
            variant.name, "cross-encoder", "", {"fp16": cuda, "batch_size": variant.batch_size}
        )
        return Contender(spec, model, device, 512).score, "reference" + (", float16" if cuda else "")
    if variant.kind == "flag":
        spec = ContenderSpec(variant.name, "flag", "", {"use_fp16": cuda, "batch_size": variant.batch_size})
        return Contender(spec, model, device, 512).score, "reference" + (", float16" if cuda else "")
    if variant.kind == "packed":
        return _packed_scorer(variant, model, device)
    from bge_rerank_integrations.backends.local import LocalBackend
    from bge_rerank_integrations.config import RerankerConfig

    config = RerankerConfig(
        model=model, device=device, dtype=variant.dtype, max_batch_tokens=variant.max_batch_tokens
    )
    padded = variant.kind == "padded"
    backend = LocalBackend(config, padding_free=False if padded else None)  # scored directly: no queue
    backend.load()
    runs = (
        "float16"
        if cuda and variant.dtype == "auto"
        else "float32"
        if variant.dtype == "auto"
        else variant.dtype
    )
    scorer = functools.partial(backend.score_pairs, options=config.scoring)
    return scorer, f"{runs}, " + ("transformers forward" if padded else "the core's own path")


# -- timing ----------------------------------------------------------------------------------------
def compare(
    workload: Workload, requests: int, scorers: dict[str, tuple[Scorer, str]], device: str, subject: str
) -> list[str]:
    """Time every variant on ``workload``, interleaved; the table's lines (a title, then markdown)."""
    names = list(scorers)
    calls = [[(r.query, p) for p in r.passages] for r in workload.requests]
    if not workload.per_request:  # the whole throughput call, repeated
        calls = [[pair for call in calls for pair in call]] * requests
    calls = calls[:requests]
    warm = [(workload.warmup.query, p) for p in workload.warmup.passages]
    for n, (scorer, _) in scorers.items():  # warm-up (compilation where asked for), at both sizes
        seconds = sum(timed(functools.partial(scorer, pairs), device)[1] for pairs in (warm, calls[0]))
        print(f"warm-up {n}: {seconds:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    delta = dict.fromkeys(names, 0.0)
    for k, pairs in enumerate(calls):
        results = {}
        for n in names if k % 2 == 0 else names[::-1]:
            results[n], seconds = timed(functools.partial(scorers[n][0], pairs), device)
            times[n].append(seconds)
        first = results[names[0]]
        for n in names:
            delta[n] = max(delta[n], max(abs(a - b) for a, b in zip(results[n], first, strict=True)))
        print(f"request {k + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), file=sys.stderr)
    rows = []
    for n in names:
        med = percentile(times[n], 0.5)
        vs = "-"
        if "ce" in times:
            vs = f"{percentile([c / t for c, t in zip(times['ce'], times[n], strict=True)], 0.5):.2f}"
        ms = [f"{med * 1e3:,.1f}", f"{min(times[n]) * 1e3:,.1f}"]
        rows.append([n, scorers[n][1], *ms, f"{len(calls[0]) / med:,.1f}", vs, f"{delta[n]:.2g}"])
    title = (
        f"{workload.name} workload, {subject} subject on {device}; load average {os.getloadavg()[0]:.2f}; "
        f"{len(calls)} requests of {len(calls[0])} pairs. Median and best milliseconds per request; "
        "'vs ce' is the median over requests of the time ratio to CrossEncoder in the same request "
        "(robust to a busy spell hitting one request)."
    )
    headers = [
        "variant",
        "runs",
        "median ms",
        "best ms",
        "pairs/s (median)",
        "vs ce",
        f"max abs delta vs {names[0]}",
    ]
    return [title, *markdown_table(headers, rows, numeric="llrrrrr"), ""]


def _listing() -> list[str]:
    defaults = Variant("", "")
    rows = []
    for v in VARIANTS.values():
        changed = [
            f"{f.name}={getattr(v, f.name)!r}"
            for f in fields(v)[3:]
            if getattr(v, f.name) != getattr(defaults, f.name)
        ]
        rows.append([v.name, v.kind, v.what, ", ".join(changed) or "-"])
    return markdown_table(["variant", "kind", "what", "settings"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--variants", default="core,padded,packed-none,packed-1024,packed-2048,packed-4096,ce"
    )
    parser.add_argument("--list", action="store_true", help="print the table of variants and stop")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="small")
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
    if args.list:
        print("\n".join(_listing()))
        return 0
    chosen = args.workload.split(",")
    if any(w not in ("interactive", "throughput") for w in chosen):
        raise SystemExit(f"--workload takes interactive and/or throughput, not {args.workload!r}")
    asked = variants(args.variants.split(","))
    model = str(build_subject(args.subject, args.models / args.subject))
    scale = args.scale or ("gpu" if args.device.startswith("cuda") else "cpu")
    workloads = {w.name: w for w in make_workloads(model, scale)}
    scorers = {v.name: make_variant(v, model, args.device) for v in asked}
    for name in chosen:  # one process, so every variant is loaded once for both
        repeats = (args.throughput_requests or args.requests) if name == "throughput" else args.requests
        print("\n".join(compare(workloads[name], repeats, scorers, args.device, args.subject)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
