"""Measuring what a test leaves behind: threads that have not ended, resident memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path


def still_running(threads: set[threading.Thread]) -> list[threading.Thread]:
    """The threads of ``threads`` that have not ended, after giving them a minute to end."""
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def memory_bound(model_dir: Path) -> int:
    """A few models' worth of resident memory: 15 times the weights file.

    A loaded test model takes about twice its weights in resident memory (tokenizer, allocator), so
    this allows some 7 models left over, where 30 kept models hold at least 30 times the weights.
    """
    return 15 * (model_dir / "model.safetensors").stat().st_size
