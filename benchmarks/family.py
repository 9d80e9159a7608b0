"""The decoder-only BGE rerankers, each beside its FlagEmbedding class, in one interleaved run.

    python -m benchmarks.family --scale cpu --out bench-out/family          # reduced subjects, CPU
    python -m benchmarks.family --kinds v2-gemma --subject full --scale gpu --device cuda --out DIR

For each kind (v2-gemma, v2-minicpm-layerwise, v2.5-gemma2-lightweight) a random model of a reduced
shape (``REDUCED_SHAPES``: the real models' proportions, the LM head included, at a CPU's scale) or
the full one is built once, and two workloads run: *interactive* (1 query x N passages per call,
latency) and *throughput* (several queries' pairs in one call). Contenders score the same pairs, call
by call in turn (the order rotating), so a busy machine hits them alike: ``ours`` (this package's
``Reranker``), and FlagEmbedding's ``FlagLLMReranker``,
``LayerWiseFlagLLMReranker`` or ``LightWeightFlagLLMReranker`` as constructed by default (batch 128;
the layer-wise ones through ``tests.family.reference``, the least glue that runs them under
transformers 5). Before timing, each contender's warm-up scores are compared with ours. Output:
``family.md`` (tables: pairs/s, p50/p90 per call, the ratio to the reference) and ``family.json``
(every call's time, the machine from ``lscpu``, the load average) in ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import machine_info, machine_line, markdown_table, percentile, timed

__all__ = ["REDUCED_SHAPES", "SCALES", "FamilyScale", "main", "run_family"]

Scorer = Callable[[str, Sequence[str]], list[float]]


@dataclass(frozen=True)
class FamilyScale:
    """How much each workload holds."""

    interactive_calls: int
    throughput_queries: int
    passages: int
    max_length: int
    """Passage tokens kept (FlagEmbedding's ``max_length``); passages are drawn up to it."""


SCALES: dict[str, FamilyScale] = {
    "smoke": FamilyScale(interactive_calls=2, throughput_queries=2, passages=6, max_length=64),
    # about 20 minutes for the three kinds on 2 busy cores (the reference runs the whole vocabulary)
    "cpu": FamilyScale(interactive_calls=3, throughput_queries=2, passages=30, max_length=256),
    "gpu": FamilyScale(interactive_calls=10, throughput_queries=10, passages=100, max_length=512),
}


REDUCED_SHAPES = "small"
"""The ``--subject`` of the CPU run (see :data:`~benchmarks.subjects.DECODER_SUBJECTS`)."""


def build_subject(kind: str, subject: str, models: Path) -> Path:
    """The random model of ``kind`` at ``subject`` size, built into ``models`` once (reused after)."""
    from benchmarks.subjects import build_decoder_subject

    return build_decoder_subject(kind, subject, models)


# -- contenders ------------------------------------------------------------------------------------
def ours(
    kind: str, folder: Path, device: str, dtype: str, max_batch_tokens: int, max_length: int
) -> tuple[Scorer, str]:
    """This package's ``Reranker`` on ``folder`` (the core picks ``kind`` from its config), loaded."""
    from bge_rerank_integrations import Reranker

    reranker = Reranker(
        folder,
        device=device,
        dtype=dtype,
        trust_remote_code=True,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
    ).load()
    return reranker.score, "Reranker"


@functools.cache
def flag_llm_reranker_class() -> tuple[Any, str]:
    """FlagEmbedding's ``FlagLLMReranker``, and how it was imported (see
    :func:`~benchmarks.contenders.import_flag_class`: ``peft`` may be a stand-in)."""
    from benchmarks.contenders import import_flag_class

    return import_flag_class(
        "FlagLLMReranker", "inference.reranker.decoder_only.base", "BaseLLMReranker", stub_peft=True
    )


REFERENCE_CLASS = {
    "v2-gemma": "FlagLLMReranker",
    "v2-minicpm-layerwise": "LayerWiseFlagLLMReranker",
    "v2.5-gemma2-lightweight": "LightWeightFlagLLMReranker",
}


# -- workloads -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One timed call: a query and its passages (throughput: several queries' pairs at once)."""

    pairs: tuple[tuple[str, str], ...]


def workloads(folder: Path, scale: FamilyScale, seed: int = 0) -> dict[str, tuple[Call, list[Call]]]:
    """``{name: (warm-up call, timed calls)}`` for the interactive and throughput workloads."""
    from benchmarks.workloads import make_requests

    n = scale.interactive_calls + scale.throughput_queries + 1
    requests = make_requests(folder, n, scale.passages, seed=seed)
    calls = [Call(tuple((r.query, p) for p in r.passages)) for r in requests]
    warm, interactive, rest = (
        calls[0],
        calls[1 : 1 + scale.interactive_calls],
        calls[1 + scale.interactive_calls :],
    )
    throughput = Call(tuple(pair for call in rest for pair in call.pairs))
    return {"interactive": (warm, interactive), "throughput": (warm, [throughput])}


def _score_call(scorer: Scorer, call: Call) -> list[float]:
    """Scores of a call's pairs, one scorer call per query (a throughput call has several queries)."""
    out: list[float] = []
    start = 0
    while start < len(call.pairs):
        query = call.pairs[start][0]
        end = start
        while end < len(call.pairs) and call.pairs[end][0] == query:
            end += 1
        out += scorer(query, [p for _, p in call.pairs[start:end]])
        start = end
    return out


# -- the run ---------------------------------------------------------------------------------------
def run_family(
    *,
    kinds: Sequence[str],
    subject: str,
    scale: str,
    device: str,
    out: Path,
    models: Path,
    max_batch_tokens: int | None = None,
    contenders: Sequence[str] = ("ours", "flag"),
) -> dict[str, Any]:
    """Run every kind's workloads with every contender; write ``family.md``/``family.json`` to ``out``.

    ``contenders``: ``ours`` (dtype auto), ``ours-bf16``, ``ours-fp16``, ``flag`` (FlagEmbedding's
    default: fp32), ``flag-fp16``, ``flag-bf16``; ``ours`` first, the ratios are against ``flag*``.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    sc = SCALES[scale]
    budget = max_batch_tokens or (4096 if device == "cpu" else 16384)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "subject": subject,
        "scale": scale,
        "max_batch_tokens": budget,
        "machine": machine_info(device),
        "kinds": {},
    }
    for kind in kinds:
        folder = build_subject(kind, subject, models)
        scorers: dict[str, Scorer] = {}
        paths: dict[str, str] = {}
        for name in contenders:
            if name.startswith("ours"):
                dtype = {"ours": "auto", "ours-bf16": "bfloat16", "ours-fp16": "float16"}[name]
                scorer, paths[name] = ours(kind, folder, device, dtype, budget, sc.max_length)
            else:
                half = {"flag": None, "flag-fp16": "fp16", "flag-bf16": "bf16"}[name]
                scorer = reference(kind, folder, device, half, sc.max_length)
                paths[name] = REFERENCE_CLASS[kind]
                if kind == "v2-gemma":
                    report["flag_llm_reranker_import"] = flag_llm_reranker_class()[1]
            scorers[name] = scorer
        report["kinds"][kind] = {"folder": str(folder), "paths": paths, "workloads": {}}
        for wname, (warm, calls) in workloads(folder, sc).items():
            result = _time_workload(scorers, warm, calls, device)
            report["kinds"][kind]["workloads"][wname] = result
            _write(report, out)
        del scorers
    report["machine"]["loadavg_end"] = os.getloadavg()
    _write(report, out)
    return report


def reference(kind: str, folder: Path, device: str, half: str | None, max_length: int) -> Scorer:
    """FlagEmbedding's class for ``kind`` as constructed by default (``half``: ``"fp16"``/``"bf16"``)."""
    flags = {"use_fp16": half == "fp16", "use_bf16": half == "bf16"}
    if kind == "v2-gemma":
        flag_llm_reranker, _ = flag_llm_reranker_class()
        model = flag_llm_reranker(str(folder), devices=[device], max_length=max_length, **flags)
    else:
        from tests.family.reference import flag_reranker

        model = flag_reranker(kind, folder, devices=[device], max_length=max_length, **flags)

    def score(query: str, passages: Sequence[str]) -> list[float]:
        scores = model.compute_score([(query, p) for p in passages])
        return [float(s) for s in (scores if isinstance(scores, list) else [scores])]

    return score


def _time_workload(scorers: dict[str, Scorer], warm: Call, calls: list[Call], device: str) -> dict[str, Any]:
    names = list(scorers)
    warm_scores = {name: _score_call(scorers[name], warm) for name in names}
    base = warm_scores[names[0]]
    times: dict[str, list[float]] = {name: [] for name in names}
    for index, call in enumerate(calls):
        order = names[index % len(names) :] + names[: index % len(names)]  # rotate who goes first
        for name in order:
            _, seconds = timed(functools.partial(_score_call, scorers[name], call), device)
            times[name].append(seconds)
    pairs = sum(len(c.pairs) for c in calls)
    result: dict[str, Any] = {"pairs": pairs, "calls": len(calls), "contenders": {}}
    for name in names:
        seconds = times[name]
        delta = max(abs(a - b) for a, b in zip(warm_scores[name], base, strict=True))
        result["contenders"][name] = {
            "seconds": seconds,
            "pairs_per_s": pairs / sum(seconds),
            "p50_s": percentile(seconds, 0.5),
            "p90_s": percentile(seconds, 0.9),
            "warmup_max_abs_delta": delta,
        }
    return result


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: one per kind and workload, and a summary of the ratios."""
    m = report["machine"]
    end = f" Load average at the end {m['loadavg_end'][0]:.2f}." if "loadavg_end" in m else ""
    lines = [
        f"# Decoder-only rerankers: this package beside FlagEmbedding ({report['subject']} subjects)",
        "",
        f"{machine_line(m)}{end} Device {m['device']}; max_batch_tokens {report['max_batch_tokens']}.",
        "",
    ]
    rows: list[list[object]] = []
    for kind, entry in report["kinds"].items():
        for wname, result in entry["workloads"].items():
            contenders = result["contenders"]
            refs = [n for n in contenders if n.startswith("flag")]
            ref_rate = contenders[refs[0]]["pairs_per_s"] if refs else None
            for name, c in contenders.items():
                ratio = f"{c['pairs_per_s'] / ref_rate:.2f}" if ref_rate else "-"
                rates = (f"{c['pairs_per_s']:.1f}", f"{c['p50_s']:.3f}", f"{c['p90_s']:.3f}", ratio)
                delta = f"{c['warmup_max_abs_delta']:.1e}"
                rows.append([kind, wname, name, entry["paths"][name], *rates, delta])
    headers = ["kind", "workload", "contender", "path", "pairs/s", "p50 s", "p90 s", "x reference"]
    lines += markdown_table([*headers, "warm-up max abs d"], rows, numeric="llllrrrrr")
    return "\n".join(lines) + "\n"


def _write(report: dict[str, Any], out: Path) -> None:
    (out / "family.json").write_text(json.dumps(report, indent=1))
    (out / "family.md").write_text(markdown(report))


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    from bge_rerank_integrations.llm_layout import LLM_KINDS

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kinds", default=",".join(LLM_KINDS), help="comma-separated kinds")
    parser.add_argument("--subject", choices=["tiny", "small", "full"], default=REDUCED_SHAPES)
    parser.add_argument("--scale", choices=list(SCALES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contenders", default="ours,flag")
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument("--models", type=Path, default=Path("bench-out/models"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/family"))
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(LLM_KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; the kinds are {', '.join(LLM_KINDS)}")
    report = run_family(
        kinds=kinds,
        subject=args.subject,
        scale=args.scale,
        device=args.device,
        out=args.out,
        models=args.models,
        max_batch_tokens=args.max_batch_tokens,
        contenders=[c for c in args.contenders.split(",") if c],
    )
    print(markdown(report))


if __name__ == "__main__":
    main()
