"""A long soak of one ``Reranker``: random calls from threads and asyncio tasks at once, some cancelled or
timed out mid-way, every completed call checked against its pairs scored alone, while thread count
and resident memory are sampled over time.

    python -m benchmarks.soak --seconds 300 --out bench-out/soak

Calls draw 0 to ``--max-passages`` passages (one query, or a third of the time several queries
mixed) from a seeded pool of multilingual passages of skewed lengths (the interactive recipe of
``workloads.py``). Of the asyncio calls, 15% are cancelled after up to 4 ms and 15% get a
``wait_for`` deadline of up to 10 ms; the rest, and every thread call, must come back exact: each
score within 1e-5 (absolute, or relative above 1) of the pair scored alone before the soak, the
batch-invariance bound of tests/core/test_batching.py. The curve (threads, VmRSS from
/proc/self/status) is a report, not a pass mark; the exit status is 1 if any call was wrong or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.harness import machine_info, machine_line, markdown_table, rss_mib
from benchmarks.subjects import DEFAULT_MODELS, SUBJECTS, build_subject
from benchmarks.workloads import make_requests
from bge_rerank_integrations import Reranker

Pair = tuple[str, str]
TOLERANCE = 1e-5  # absolute, or relative above 1 (pytest.approx(abs=1e-5, rel=1e-5))
COUNTERS = ("calls", "pairs", "exact", "cancelled", "timed_out", "wrong", "errors")


@dataclass
class Tally:
    """What the callers did so far; updated under ``lock``."""

    calls: int = 0
    pairs: int = 0
    exact: int = 0
    cancelled: int = 0
    timed_out: int = 0
    wrong: int = 0
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, what: str, pairs: int, example: str | None = None) -> None:
        """One call of ``pairs`` pairs ended as ``what`` (a counter's name); keep the first examples."""
        with self.lock:
            self.calls += 1
            self.pairs += pairs
            setattr(self, what, getattr(self, what) + 1)
            if example is not None and len(self.examples) < 10:
                self.examples.append(example)

    def snapshot(self) -> dict[str, int]:
        """Every counter, read at one instant."""
        with self.lock:
            return {k: getattr(self, k) for k in COUNTERS}


class Soak:
    """The callers, the reference scores and the tally of one soak."""

    def __init__(self, reranker: Reranker, queries: list[str], pool: list[str], max_passages: int) -> None:
        """Score every pair of ``queries`` x ``pool`` alone: the reference of every later call."""
        self.reranker = reranker
        self.queries = queries
        self.pool = pool
        self.max_passages = max_passages
        self.alone = {(q, p): reranker.score_pairs([(q, p)])[0] for q in queries for p in pool}
        self.tally = Tally()
        self.stopping = threading.Event()

    def pairs(self, rng: random.Random) -> list[Pair]:
        count = rng.randint(0, self.max_passages)
        if rng.random() < 1 / 3:
            return [(rng.choice(self.queries), rng.choice(self.pool)) for _ in range(count)]
        query = rng.choice(self.queries)
        return [(query, rng.choice(self.pool)) for _ in range(count)]

    def judge(self, pairs: list[Pair], scores: list[float]) -> None:
        expected = [self.alone[p] for p in pairs]
        bad = [
            (i, got, want)
            for i, (got, want) in enumerate(zip(scores, expected, strict=False))
            if abs(got - want) > max(TOLERANCE, TOLERANCE * abs(want))
        ]
        if bad or len(scores) != len(pairs):
            self.tally.count(
                "wrong", len(pairs), f"{len(pairs)} pairs, {len(scores)} scores, first off: {bad[:1]}"
            )
        else:
            self.tally.count("exact", len(pairs))

    def thread_caller(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            pairs = self.pairs(rng)
            try:
                scores = self.reranker.score_pairs(pairs)
            except Exception as exc:  # counted and reported: the soak must not stop at the first
                self.tally.count("errors", len(pairs), repr(exc))
                continue
            self.judge(pairs, scores)

    async def task_caller(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopping.is_set():
            pairs = self.pairs(rng)
            how = rng.random()
            try:
                if how < 0.15:
                    task = asyncio.ensure_future(self.reranker.ascore_pairs(pairs))
                    await asyncio.sleep(rng.uniform(0, 0.004))
                    task.cancel()
                    scores = await task
                elif how < 0.3:
                    scores = await asyncio.wait_for(self.reranker.ascore_pairs(pairs), rng.uniform(0, 0.01))
                else:
                    scores = await self.reranker.ascore_pairs(pairs)
            except asyncio.CancelledError:
                self.tally.count("cancelled", len(pairs))
                continue
            except TimeoutError:
                self.tally.count("timed_out", len(pairs))
                continue
            except Exception as exc:
                self.tally.count("errors", len(pairs), repr(exc))
                continue
            self.judge(pairs, scores)

    async def tasks(self, count: int, seed: int) -> None:
        await asyncio.gather(*(self.task_caller(seed + 1000 + n) for n in range(count)))


def run_soak(
    soak: Soak, *, seconds: float, threads: int, tasks: int, sample_every: float, seed: int
) -> list[dict[str, Any]]:
    """Run the callers for ``seconds``, sampling every ``sample_every``; returns the samples."""
    callers = [
        threading.Thread(target=soak.thread_caller, args=(seed + n,), daemon=True) for n in range(threads)
    ]
    callers.append(threading.Thread(target=asyncio.run, args=(soak.tasks(tasks, seed),), daemon=True))
    samples: list[dict[str, Any]] = []
    start = time.monotonic()

    def sample() -> None:
        samples.append(
            {
                "t_s": round(time.monotonic() - start, 1),
                **soak.tally.snapshot(),
                "threads": threading.active_count(),
                "rss_mib": round(rss_mib(), 1),
            }
        )

    sample()
    for thread in callers:
        thread.start()
    while (left := start + seconds - time.monotonic()) > 0:
        time.sleep(min(sample_every, left))
        sample()
    soak.stopping.set()
    for thread in callers:
        thread.join(60.0)
    for hung in [t for t in callers if t.is_alive()]:
        soak.tally.count("errors", 0, f"{hung.name} was still in a call 60 s after the end")
    sample()
    return samples


def summarize(samples: list[dict[str, Any]], warm_up: float) -> dict[str, Any]:
    """Threads and resident memory before, while (once warm: at or after ``warm_up`` s) and after."""
    running = samples[1:-1]
    warm = [s for s in running if s["t_s"] >= warm_up] or running[-1:] or samples[-1:]
    rss = [s["rss_mib"] for s in warm]
    threads = [s["threads"] for s in warm]
    return {
        "warm_up_s": warm_up,
        "threads_before": samples[0]["threads"],
        "threads_running_min": min(threads),
        "threads_running_max": max(threads),
        "threads_after": samples[-1]["threads"],
        "rss_before_mib": samples[0]["rss_mib"],
        "rss_warm_first_mib": rss[0],
        "rss_warm_last_mib": rss[-1],
        "rss_warm_min_mib": min(rss),
        "rss_warm_max_mib": max(rss),
        "rss_warm_drift_mib": round(rss[-1] - rss[0], 1),
        "rss_after_mib": samples[-1]["rss_mib"],
    }


COLUMNS = [  # heading, sample key
    ("t (s)", "t_s"),
    ("calls", "calls"),
    ("calls/s", "rate"),
    ("pairs", "pairs"),
    ("exact", "exact"),
    ("cancelled", "cancelled"),
    ("timed out", "timed_out"),
    ("wrong", "wrong"),
    ("errors", "errors"),
    ("threads", "threads"),
    ("VmRSS (MiB)", "rss_mib"),
]


def table(samples: list[dict[str, Any]]) -> list[str]:
    """The samples as a markdown table, with the call rate since the previous sample."""
    rows = []
    previous = samples[0]
    for s in samples:
        dt = s["t_s"] - previous["t_s"]
        row = {**s, "rate": round((s["calls"] - previous["calls"]) / dt) if dt > 0 else 0}
        rows.append([f"{row[k]:g}" for _, k in COLUMNS])
        previous = s
    return markdown_table([h for h, _ in COLUMNS], rows, numeric="r" * len(COLUMNS))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; write ``soak.json`` and ``soak.md`` into ``--out``; 1 if any call was wrong."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=4, help="callers using score_pairs")
    parser.add_argument("--tasks", type=int, default=16, help="asyncio tasks using ascore_pairs")
    parser.add_argument("--queries", type=int, default=8, help="queries in the pool")
    parser.add_argument("--passages", type=int, default=40, help="passages per query in the pool")
    parser.add_argument("--max-passages", type=int, default=32, help="passages per call at most")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warm-up", type=float, default=30.0, help="seconds before the flat-curve summary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="where subjects are built")
    parser.add_argument("--out", default="bench-out/soak")
    args = parser.parse_args(argv)

    folder = build_subject(args.subject, args.models / args.subject)
    requests = make_requests(folder, args.queries, args.passages, args.seed)
    queries = [r.query for r in requests]
    pool = sorted({p for r in requests for p in r.passages})
    reranker = Reranker(folder, device=args.device).load()
    info = machine_info(args.device)
    t0 = time.monotonic()
    soak = Soak(reranker, queries, pool, args.max_passages)
    reference_s = time.monotonic() - t0
    samples = run_soak(
        soak,
        seconds=args.seconds,
        threads=args.threads,
        tasks=args.tasks,
        sample_every=args.sample_every,
        seed=args.seed,
    )
    tally = soak.tally
    report: dict[str, Any] = {
        "command": "python -m benchmarks.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("models", "out")},
        "reference_pairs": len(soak.alone),
        "reference_s": round(reference_s, 1),
        "totals": tally.snapshot(),
        "examples": tally.examples,
        "summary": summarize(samples, args.warm_up),
        "samples": samples,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    s, t = report["summary"], report["totals"]
    lines = [
        f"soak: {args.threads} threads + {args.tasks} asyncio tasks for {args.seconds:g} s, "
        f"subject {args.subject}, {args.device}; {t['calls']} calls ({t['pairs']} pairs): "
        f"{t['exact']} exact, {t['cancelled']} cancelled, {t['timed_out']} timed out, "
        f"{t['wrong']} wrong, {t['errors']} errors",
        f"threads: {s['threads_before']} before, {s['threads_running_min']}-{s['threads_running_max']} "
        f"while running (after {s['warm_up_s']:g} s), {s['threads_after']} after the callers stopped",
        f"VmRSS: {s['rss_before_mib']:.1f} MiB before, "
        f"{s['rss_warm_min_mib']:.1f}-{s['rss_warm_max_mib']:.1f} MiB while running (after "
        f"{s['warm_up_s']:g} s; first to last {s['rss_warm_drift_mib']:+.1f} MiB), "
        f"{s['rss_after_mib']:.1f} MiB after",
        "",
        machine_line(report["machine"]),
        "",
        *table(samples),
    ]
    if tally.examples:
        lines += ["", "first problems:", *tally.examples]
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if tally.wrong or tally.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
