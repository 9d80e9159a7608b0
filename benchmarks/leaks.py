"""What dropped rerankers leave behind: threads and resident memory after N rerankers used once each.

    python -m benchmarks.leaks --count 30

Three cases, each in a fresh ``Reranker`` per iteration on the tiny test model: dropped without
``close()``, closed but still referenced, and kept loaded (the contrast: what a leak would cost).
It prints one markdown table; the figures are a report, not a pass mark (the tests in
tests/core/test_lifecycle.py assert the bounds).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.harness import markdown_table, rss_mib
from bge_rerank_integrations import Reranker
from bge_rerank_integrations.testing import build_test_model

_MIB = 1024 * 1024


def _settled_threads() -> int:
    """Live threads, after giving ending ones a moment to finish."""
    time.sleep(0.2)
    return threading.active_count()


def _measure(count: int, make: Callable[[], Reranker], keep: bool, close: bool) -> tuple[int, float]:
    """(threads left over, resident MiB grown) after ``count`` rerankers made and used once."""
    gc.collect()
    threads, rss = _settled_threads(), rss_mib()
    kept = []
    for _ in range(count):
        rr = make()
        rr.score("what is a panda?", ["a bear", "a city", "a river", "a tree"])
        if close:
            rr.close()
        if keep:
            kept.append(rr)
        del rr
    gc.collect()
    result = _settled_threads() - threads, rss_mib() - rss
    for rr in kept:
        rr.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaks", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30, help="rerankers per case (default 30)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one loading bar per reranker would bury the table
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_test_model(Path(tmp) / "tiny")
        weights = (folder / "model.safetensors").stat().st_size

        def make() -> Reranker:
            return Reranker(folder, device="cpu")

        _measure(1, make, keep=False, close=False)  # warm-up: imports, allocator pools
        print(f"{args.count} rerankers of the tiny test model (weights file {weights / _MIB:.1f} MiB)\n")
        rows = []
        for name, keep, close in (
            ("dropped without close()", False, False),
            ("closed, still referenced", True, True),
            ("kept loaded (what a leak costs)", True, False),
        ):
            threads, grown = _measure(args.count, make, keep=keep, close=close)
            rows.append([name, threads, f"{grown:.1f}"])
        print("\n".join(markdown_table(["case", "threads left", "resident memory grown (MiB)"], rows, "lrr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
