"""Cross-request batching: N concurrent single-query requests vs the same requests one at a time.

    python -m benchmarks.concurrency --subject small --requests 32 --passages 100 --out bench-out/concurrency

All requests arrive at once. "serial" serves them one at a time (what a service does when it scores
each call alone behind a lock); "concurrent" sends them from N threads to one shared ``Reranker``,
whose queue coalesces whatever is waiting into shared forward passes. Latency counts from the common
arrival to each request's answer. Also reports the single-caller cost of the queue: one request
through ``Reranker.score`` against the backend called directly, alternating, same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.harness import machine_info, machine_line, markdown_table, percentile
from benchmarks.subjects import DEFAULT_MODELS, SUBJECTS, build_subject
from benchmarks.workloads import Query, make_requests
from bge_rerank_integrations import Reranker
from bge_rerank_integrations.backends.local import LocalBackend
from bge_rerank_integrations.config import RerankerConfig


def _summary(latencies: list[float], wall: float, pairs: int) -> dict[str, float]:
    return {
        "wall_s": wall,
        "pairs_per_s": pairs / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


def serve_serially(reranker: Reranker, requests: list[Query]) -> tuple[list[list[float]], dict[str, float]]:
    """Every request arrives at t0; they are answered one after another."""
    start = time.perf_counter()
    results, latencies = [], []
    for request in requests:
        results.append(reranker.score(request.query, list(request.passages)))
        latencies.append(time.perf_counter() - start)
    wall = time.perf_counter() - start
    return results, _summary(latencies, wall, sum(len(r.passages) for r in requests))


def serve_concurrently(
    reranker: Reranker, requests: list[Query]
) -> tuple[list[list[float]], dict[str, float]]:
    """Every request arrives at t0 from its own thread; the reranker's queue coalesces them."""
    gate = threading.Barrier(len(requests) + 1)
    latencies = [0.0] * len(requests)
    start = 0.0

    def call(i: int) -> list[float]:
        gate.wait()
        scores = reranker.score(requests[i].query, list(requests[i].passages))
        latencies[i] = time.perf_counter() - start
        return scores

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [pool.submit(call, i) for i in range(len(requests))]
        start = time.perf_counter()
        gate.wait()
        results = [f.result() for f in futures]
    wall = time.perf_counter() - start
    return results, _summary(latencies, wall, sum(len(r.passages) for r in requests))


def single_caller_overhead(
    reranker: Reranker, backend: LocalBackend, request: Query, rounds: int
) -> dict[str, float]:
    """Median time of one request through ``reranker``'s queue vs straight into its ``backend``."""
    pairs = [(request.query, p) for p in request.passages]
    through, direct = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        reranker.score(request.query, list(request.passages))
        through.append(time.perf_counter() - t)
        t = time.perf_counter()
        backend.score_pairs(pairs, backend.config.scoring)
        direct.append(time.perf_counter() - t)
    med_through, med_direct = percentile(through, 0.5), percentile(direct, 0.5)
    return {
        "queue_ms": 1000 * med_through,
        "direct_ms": 1000 * med_direct,
        "overhead_ms": 1000 * (med_through - med_direct),
        "ratio": med_through / med_direct,
    }


def _row(name: str, mode: dict[str, float]) -> list[str]:
    pairs, requests = f"{mode['pairs_per_s']:.1f}", f"{mode['requests_per_s']:.2f}"
    return [name, pairs, requests, f"{mode['p50_ms']:.0f} ms", f"{mode['p99_ms']:.0f} ms"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``concurrency.json`` and ``concurrency.md`` into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--subject", choices=sorted(SUBJECTS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of the single-caller check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="where subjects are built")
    parser.add_argument("--out", default="bench-out/concurrency")
    args = parser.parse_args(argv)

    folder = build_subject(args.subject, args.models / args.subject)
    requests = make_requests(folder, args.requests, args.passages, args.seed)
    config = RerankerConfig(model=str(folder), device=args.device, dtype=args.dtype)
    backend = LocalBackend(config)  # kept, to time it without the queue too
    reranker = Reranker.from_config(config, backends=[backend]).load()
    reranker.score(requests[0].query, list(requests[0].passages))  # warm-up, untimed

    serial_scores, serial = serve_serially(reranker, requests)
    concurrent_scores, concurrent = serve_concurrently(reranker, requests)
    worst = max(
        abs(a - b)
        for xs, ys in zip(serial_scores, concurrent_scores, strict=True)
        for a, b in zip(xs, ys, strict=True)
    )
    overhead = single_caller_overhead(reranker, backend, requests[1], args.rounds)

    report: dict[str, Any] = {
        "command": "python -m benchmarks.concurrency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(args.device),
        "subject": args.subject,
        "requests": args.requests,
        "passages": args.passages,
        "serial": serial,
        "concurrent": concurrent,
        "throughput_ratio": concurrent["pairs_per_s"] / serial["pairs_per_s"],
        "max_abs_score_delta": worst,
        "single_caller": overhead,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrency.json").write_text(json.dumps(report, indent=2))
    table = [
        f"{args.requests} concurrent requests x {args.passages} passages, "
        f"subject {args.subject}, {args.device}",
        "",
        machine_line(report["machine"]),
        "",
        *markdown_table(
            ["mode", "pairs/s", "requests/s", "p50 latency", "p99 latency"],
            [_row("one at a time", serial), _row("concurrent, coalesced", concurrent)],
            numeric="lrrrr",
        ),
    ]
    table += [
        "",
        f"throughput ratio (concurrent / one at a time): {report['throughput_ratio']:.2f}x; "
        f"max |score delta| between the modes: {worst:.2e}",
        f"single caller: {overhead['queue_ms']:.1f} ms through the queue vs {overhead['direct_ms']:.1f} ms "
        f"straight into the backend (median of {args.rounds}; overhead {overhead['overhead_ms']:+.2f} ms)",
    ]
    (out / "concurrency.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
