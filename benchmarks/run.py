"""Benchmark this package's core against FlagReranker, CrossEncoder and the CPU runtimes, side by side.

    python -m benchmarks.run --subject small --scale cpu --out bench-out/cpu
    python -m benchmarks.run --subject full --scale gpu --device cuda --out "$OUT"

For each workload every contender is loaded, scores the warm-up request (untimed; its scores and
token ids are checked against ours before any timing), then the timed requests run interleaved: request
by request, each contender in turn, the order rotating, so that a slower or busier moment of the
machine hits all contenders alike. On CPU each contender runs in a process of its own (``--isolate``,
the default there), as it would in a user's; on GPU all share this one. Writes ``results.json``
(every call's time and all settings) and ``results.md`` (the tables) into the output folder.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# TOKENIZERS_PARALLELISM is left as users have it (unset: the Rust tokenizer uses every core), since
# batched tokenization is part of what the contenders do differently; the report records it.

import torch

from benchmarks.contenders import (
    INSTALL_HINT,
    Contender,
    ContenderSpec,
    IsolatedContender,
    build_specs,
    missing_packages,
)
from benchmarks.harness import machine_info, machine_line, matmul_peak, percentile
from benchmarks.subjects import DEFAULT_MODELS, SUBJECTS, build_subject
from benchmarks.workloads import Workload, make_workloads

__all__ = ["TOLERANCE", "agreement_bound", "forward_flops", "main", "run"]

log = logging.getLogger("benchmarks")

# Scores must agree with ours this closely before a contender is timed (fp32 vs fp32: float rounding
# of different batch shapes; half precision: rounding of fp16/bf16 activations).
TOLERANCE = {"float32": 1e-4, "float16": 5e-2, "bfloat16": 2.5e-1, "int8": 5e-1}


def agreement_bound(dtype: str, other: str) -> float:
    """How far two contenders' logits may be apart: the less precise dtype of the two sets it."""
    return max(TOLERANCE[dtype], TOLERANCE[other])


def forward_flops(lengths: Sequence[int], config: dict[str, Any]) -> float:
    """Forward FLOPs of real tokens: linear layers, attention scores and mix, classifier head."""
    h = config["hidden_size"]
    i = config["intermediate_size"]
    layers = config["num_hidden_layers"]
    total = 0.0
    for n in lengths:
        linear = 2 * n * (4 * h * h + 2 * h * i)
        attention = 4 * n * n * h
        total += layers * (linear + attention) + 2 * (h * h + h)
    return total


# -- one workload ----------------------------------------------------------------------------------
def _pairs(query: str, passages: Sequence[str]) -> list[tuple[str, str]]:
    return [(query, p) for p in passages]


def _top10_agreement(ref: Sequence[float], other: Sequence[float]) -> tuple[bool, float]:
    """Whether the top-10 order is identical, and the overlap of the top-10 sets."""
    k = min(10, len(ref))
    a = sorted(range(len(ref)), key=lambda i: -ref[i])[:k]
    b = sorted(range(len(other)), key=lambda i: -other[i])[:k]
    return a == b, len(set(a) & set(b)) / k if k else 1.0


def load_contenders(
    specs: Sequence[ContenderSpec], model_dir: str, device: str, max_length: int, *, isolate: bool = False
) -> list[Contender | IsolatedContender]:
    """Load every contender for pairs of up to ``max_length`` tokens; ``isolate``: each in its own
    process."""
    contenders: list[Contender | IsolatedContender] = []
    for spec in specs:
        t0 = time.perf_counter()
        if isolate:
            threads = torch.get_num_threads()
            contender = IsolatedContender(spec, model_dir, device, max_length, threads=threads)
        else:
            contender = Contender(spec, model_dir, device, max_length)
        contenders.append(contender)
        log.info("  loaded %s (max_length %d) in %.1f s", spec.name, max_length, time.perf_counter() - t0)
    return contenders


def close_contenders(contenders: list[Contender | IsolatedContender], device: str) -> None:
    """Drop the contenders' models and give the memory back."""
    for c in contenders:
        c.close()
    contenders.clear()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_workload(
    workload: Workload,
    contenders: list[Contender | IsolatedContender],
    device: str,
    model_config: dict[str, Any],
    peaks: dict[str, float],
) -> dict[str, Any]:
    """Check agreement, then time the requests with loaded ``contenders`` (ours first)."""
    log.info("workload %s: %s", workload.name, workload.description)
    result: dict[str, Any] = {
        "name": workload.name,
        "description": workload.description,
        "max_length": workload.max_length,
        "pairs": workload.num_pairs,
        "contenders": {},
    }
    ours = contenders[0]
    for c in contenders:
        c.computed_tokens = 0

    # token ids: what every contender feeds the model; all requests' pairs
    requests = [_pairs(r.query, r.passages) for r in workload.requests]
    all_pairs = [p for r in requests for p in r]
    our_ids = ours.token_ids(all_pairs)
    lengths = [len(x) for x in our_ids]
    result["real_tokens"] = sum(lengths)
    result["mean_pair_tokens"] = round(sum(lengths) / len(lengths), 1)
    result["max_pair_tokens"] = max(lengths)
    result["flops"] = forward_flops(lengths, model_config)
    if workload.per_request:  # per call, for the best call's rate (the peak is a best sample too)
        bounds = list(itertools.accumulate((len(r) for r in requests), initial=0))
        result["call_flops"] = [
            forward_flops(lengths[a:b], model_config) for a, b in itertools.pairwise(bounds)
        ]
    else:
        result["call_flops"] = [result["flops"]]

    # warm-up and agreement, before timing
    warm = _pairs(workload.warmup.query, workload.warmup.passages)
    reference = ours.score(warm)
    for c in contenders:
        rec: dict[str, Any] = {
            "description": c.spec.description,
            "dtype": c.dtype,
            "pid": c.pid,
        }
        if c.import_note:
            rec["import"] = c.import_note
        ids = c.token_ids(all_pairs) if c is not ours else our_ids
        rec["same_token_ids"] = sum(a == b for a, b in zip(ids, our_ids, strict=True))
        scores = c.score(warm) if c is not ours else reference
        delta = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
        rec["warmup_max_abs_delta"] = delta
        rec["agrees"] = delta <= agreement_bound(c.dtype, ours.dtype)
        if not rec["agrees"]:
            log.warning("  %s disagrees with ours on the warm-up: max |delta| %.3g", c.name, delta)
        c.computed_tokens = 0
        rec.update(
            calls=[], call_real_tokens=[], host_peak_mib=0.0, gpu_peak_mib=0.0, scores=[None] * len(requests)
        )
        result["contenders"][c.name] = rec

    # timed requests, interleaved and rotating
    calls: list[list[tuple[str, str]]] = requests if workload.per_request else [all_pairs]
    for k, pairs in enumerate(calls):
        order = contenders[k % len(contenders) :] + contenders[: k % len(contenders)]
        for c in order:
            rec = result["contenders"][c.name]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                gpu_base = torch.cuda.memory_allocated()
            scores, elapsed, grown_mib = c.timed_score(pairs)
            rec["calls"].append(elapsed)
            rec["host_peak_mib"] = max(rec["host_peak_mib"], grown_mib)
            if device.startswith("cuda"):
                rec["gpu_peak_total_mib"] = max(
                    rec.get("gpu_peak_total_mib", 0.0), torch.cuda.max_memory_allocated() / 2**20
                )
                rec["gpu_peak_mib"] = max(
                    rec["gpu_peak_mib"], (torch.cuda.max_memory_allocated() - gpu_base) / 2**20
                )
            if workload.per_request:
                rec["scores"][k] = scores
            else:
                cut = 0
                for j, r in enumerate(requests):
                    rec["scores"][j] = scores[cut : cut + len(r)]
                    cut += len(r)
        log.info(
            "  call %d/%d: %s",
            k + 1,
            len(calls),
            ", ".join(f"{c.name} {result['contenders'][c.name]['calls'][-1]:.2f}s" for c in contenders),
        )

    # metrics
    ours_rec = result["contenders"][ours.name]
    for c in contenders:
        rec = result["contenders"][c.name]
        total = sum(rec["calls"])
        rec["seconds"] = total
        rec["pairs_per_s"] = workload.num_pairs / total
        rec["tokens_per_s"] = result["real_tokens"] / total
        rec["padding"] = c.computed_tokens / result["real_tokens"]
        rec["computed_tokens"] = c.computed_tokens
        if workload.per_request:
            ms = [x * 1e3 for x in rec["calls"]]
            rec["latency_p50_ms"] = percentile(ms, 0.5)
            rec["latency_p90_ms"] = percentile(ms, 0.9)
        rec["flops_per_s"] = result["flops"] / total
        per_call = zip(result["call_flops"], rec["calls"], strict=True)
        rec["best_call_flops_per_s"] = max(f / t for f, t in per_call)
        _set_fractions(rec, peaks)  # final figures use the best peak of the whole run
        flat = [s for r in rec["scores"] for s in r]
        ref = [s for r in ours_rec["scores"] for s in r]
        rec["max_abs_delta_vs_ours"] = max(abs(a - b) for a, b in zip(flat, ref, strict=True))
        agreement = [_top10_agreement(a, b) for a, b in zip(ours_rec["scores"], rec["scores"], strict=True)]
        rec["top10_same_order"] = sum(same for same, _ in agreement) / len(agreement)
        rec["top10_overlap"] = sum(ov for _, ov in agreement) / len(agreement)
    for c in contenders:  # ratios once ours is final
        rec = result["contenders"][c.name]
        rec["ours_speedup"] = ours_rec["pairs_per_s"] / rec["pairs_per_s"]
    for rec in result["contenders"].values():
        del rec["scores"]
    return result


def _set_fractions(rec: dict[str, Any], peaks: dict[str, float]) -> None:
    """A contender's FLOP rates as fractions of its dtype's matmul peak (``None`` without a peak).

    Two figures: all calls together (every slow spell of a shared machine included), and the best
    call, which compares like with like, the peak being the best of its samples.
    """
    peak = peaks.get(rec["dtype"])
    rec["matmul_peak_flops_per_s"] = peak
    rec["flops_fraction_of_peak"] = rec["flops_per_s"] / peak if peak else None
    rec["best_call_fraction_of_peak"] = rec["best_call_flops_per_s"] / peak if peak else None


# -- report ----------------------------------------------------------------------------------------
def summary(report: dict[str, Any]) -> list[str]:
    """The one table of the run: each contender's speed relative to ours, per workload, and deviation."""
    workloads = report["workloads"]
    if not workloads:
        return []
    first = next(iter(workloads[0]["contenders"]))
    lines = [
        f"## Summary: pairs/s relative to `{first}` in this run",
        "",
        "| contender | precision | "
        + " | ".join(w["name"] for w in workloads)
        + " | max abs dlogit vs ours | top-10 same order |",
        "|---|---|" + "---:|" * len(workloads) + "---:|---|",
    ]
    names = list(dict.fromkeys(n for w in workloads for n in w["contenders"]))
    for name in names:
        recs = [w["contenders"].get(name) for w in workloads]
        present = [r for r in recs if r is not None]
        ratios = [
            f"{1 / r['ours_speedup']:.2f}" + ("" if r["agrees"] else " (DISAGREES)") if r else "-"
            for r in recs
        ]
        delta = max(r["max_abs_delta_vs_ours"] for r in present)
        order = " / ".join(f"{r['top10_same_order']:.0%}" for r in present)
        lines.append(
            f"| {name} | {present[0]['dtype']} | " + " | ".join(ratios) + f" | {delta:.2g} | {order} |"
        )
    lines.append("")
    lines += [f"- skipped {name}: {why}" for name, why in report.get("skipped", {}).items()]
    return [*lines, ""] if report.get("skipped") else lines


def markdown(report: dict[str, Any]) -> str:
    """The tables of ``report`` as markdown."""
    m = report["machine"]
    lines = [
        f"# Benchmark: subject `{report['subject']}`, scale `{report['scale']}`, device `{m['device']}`",
        "",
        machine_line(m).removesuffix(".") + f", at end {m['loadavg_end'][0]:.2f}; "
        f"TOKENIZERS_PARALLELISM {m.get('tokenizers_parallelism', 'false')}.",
        f"torch {m['torch']}, transformers {m['transformers']}, tokenizers {m['tokenizers']}, "
        f"FlagEmbedding {m['FlagEmbedding']}, sentence-transformers {m['sentence_transformers']}, "
        f"onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino')}, Python {m['python']}.",
        "Matmul peak measured in this run (the best sample counts): "
        + "; ".join(
            f"{k} {v / 1e9:,.0f} GFLOP/s (samples "
            + ", ".join(f"{x / 1e9:,.0f}" for x in report["matmul_peak_samples"][k])
            + ")"
            for k, v in report["matmul_peak_flops_per_s"].items()
        )
        + ".",
        "Each contender ran in a process of its own, driven request by request over a pipe."
        if report.get("isolated")
        else "All contenders ran in this one process.",
        f"Command: `{report['command']}`",
        "",
        *summary(report),
    ]
    for w in report["workloads"]:
        lines += [
            f"## {w['name']}: {w['description']}",
            "",
            f"{w['pairs']} timed pairs, {w['real_tokens']:,} real tokens "
            f"(mean {w['mean_pair_tokens']} a pair, longest {w['max_pair_tokens']}), "
            f"max_length {w['max_length']}.",
            "",
            "| contender | dtype | pairs/s | ours is N x | p50 ms | p90 ms | tokens/s | computed/real tokens "
            "| peak host MiB | peak GPU MiB | real-token GFLOP/s | of matmul peak | max abs delta vs ours "
            "| top-10 same order |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, c in w["contenders"].items():
            p50 = f"{c['latency_p50_ms']:,.0f}" if "latency_p50_ms" in c else "-"
            p90 = f"{c['latency_p90_ms']:,.0f}" if "latency_p90_ms" in c else "-"
            frac = "-"
            if c["flops_fraction_of_peak"] is not None:
                frac = f"{c['flops_fraction_of_peak']:.0%}"
                if len(c["calls"]) > 1:
                    frac += f" (best call {c['best_call_fraction_of_peak']:.1%})"
            gpu = f"{c['gpu_peak_mib']:,.0f}" if m["device"].startswith("cuda") else "-"
            agree = "" if c["agrees"] else " (DISAGREES)"
            lines.append(
                f"| {name} | {c['dtype']} | {c['pairs_per_s']:,.1f} | {c['ours_speedup']:.2f} "
                f"| {p50} | {p90} | {c['tokens_per_s']:,.0f} | {c['padding']:.2f} "
                f"| {c['host_peak_mib']:,.0f} | {gpu} "
                f"| {c['flops_per_s'] / 1e9:,.1f} | {frac} | {c['max_abs_delta_vs_ours']:.2g}{agree} "
                f"| {c['top10_same_order']:.0%} |"
            )
        lines.append("")
        notes = [
            f"- {n}: {c['description']}"
            + (f"; {c['import']}" if "import" in c else "")
            + f"; identical token ids on {c['same_token_ids']}/{w['pairs']} pairs"
            for n, c in w["contenders"].items()
        ]
        lines += [*notes, ""]
    return "\n".join(lines)


def run(
    *,
    subject: str,
    scale: str,
    device: str,
    out: Path,
    models: Path,
    contenders: Sequence[str] | None = None,
    workloads: Sequence[str] | None = None,
    command: str = "",
    model_dir: Path | None = None,
    peak_seconds: float = 3.0,
    isolate: bool = False,
) -> dict[str, Any]:
    """Run the suite; write ``results.json`` and ``results.md`` into ``out``; return the report.

    ``model_dir`` uses an existing subject folder instead of building ``subject`` under ``models``;
    ``isolate`` runs each contender in a process of its own (CPU only: see :class:`IsolatedContender`).
    """
    if isolate and device != "cpu":
        raise ValueError("isolate is for CPU runs: GPU memory figures are measured in this process")
    out.mkdir(parents=True, exist_ok=True)
    if model_dir is None:
        model_dir = build_subject(subject, models / subject)
    model_config = json.loads((model_dir / "config.json").read_text())
    specs = build_specs(device, contenders)
    if specs[0].kind != "ours":
        raise SystemExit("the first contender must be one of ours (the reference for ratios)")
    skipped = {}
    for spec in specs:  # an optional runtime that is not installed: skipped, with a note, not a crash
        missing = missing_packages(spec)
        if missing:
            skipped[spec.name] = f"not installed: {', '.join(missing)} ({INSTALL_HINT})"
            log.warning("skipping %s: %s", spec.name, skipped[spec.name])
    specs = [s for s in specs if s.name not in skipped]
    info = machine_info(device)
    half = torch.float16 if device.startswith("cuda") else torch.bfloat16
    samples: dict[str, list[float]] = {"float32": [], str(half).removeprefix("torch."): []}

    def sample_peaks() -> None:
        # sampled at the start and after every workload; the best sample counts, so that a busy moment
        # of a shared machine does not flatter the utilisation figures
        for name in samples:
            samples[name].append(matmul_peak(device, getattr(torch, name), peak_seconds))
        peaks.update({name: max(values) for name, values in samples.items()})
        log.info("matmul peak so far: %s", {k: f"{v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()})

    peaks: dict[str, float] = {}
    sample_peaks()
    chosen = [w for w in make_workloads(model_dir, scale) if not workloads or w.name in workloads]
    report: dict[str, Any] = {
        "subject": subject,
        "subject_config": {
            k: model_config[k]
            for k in (
                "num_hidden_layers",
                "hidden_size",
                "num_attention_heads",
                "intermediate_size",
                "vocab_size",
            )
        },
        "scale": scale,
        "isolated": isolate,
        "command": command,
        "machine": info,
        "matmul_peak_flops_per_s": peaks,
        "matmul_peak_samples": samples,
        "contender_specs": [asdict(s) for s in specs],
        "skipped": skipped,
        "workloads": [],
    }
    t0 = time.perf_counter()
    loaded: list[Contender] = []
    loaded_for = 0
    for w in chosen:
        if w.max_length != loaded_for:  # workloads of one max_length share the loaded contenders
            close_contenders(loaded, device)
            loaded = load_contenders(specs, str(model_dir), device, w.max_length, isolate=isolate)
            loaded_for = w.max_length
        report["workloads"].append(run_workload(w, loaded, device, model_config, peaks))
        (out / "results.json").write_text(json.dumps(report, indent=1))  # partial results survive a timeout
        sample_peaks()
    close_contenders(loaded, device)
    for result in report["workloads"]:  # utilisation against the best peak of the whole run
        for rec in result["contenders"].values():
            _set_fractions(rec, peaks)
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="small")
    parser.add_argument("--scale", choices=["cpu", "gpu", "smoke"], default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="where subjects are built")
    parser.add_argument("--contenders", help="comma-separated subset, ours first")
    parser.add_argument("--workloads", help="comma-separated subset of interactive,throughput,long")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="length of each matmul peak sample")
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        help="each contender in a process of its own (default on CPU; torch passes beside another "
        "torch thread's OpenMP team run slower, so one process would not be a user's)",
    )
    args = parser.parse_args(argv)
    isolate = args.device == "cpu" if args.isolate is None else args.isolate
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "sentence_transformers", "FlagEmbedding", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(
        subject=args.subject,
        scale=args.scale,
        device=args.device,
        out=args.out,
        models=args.models,
        contenders=args.contenders.split(",") if args.contenders else None,
        workloads=args.workloads.split(",") if args.workloads else None,
        command="python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        peak_seconds=args.peak_seconds,
        isolate=isolate,
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
