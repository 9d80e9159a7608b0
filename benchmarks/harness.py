"""What every benchmark entry point measures the same way: time, peak memory, the machine, percentiles
and markdown tables.

One definition of each, so that figures from ``run``, ``concurrency``, ``ablations``, ``kernels``,
``soak`` and ``leaks`` compare: a p90 here is a p90 there (:func:`percentile`), and a report names its
machine with the same facts (:func:`machine_info`).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = [
    "CPU_FLAGS",
    "PeakRSS",
    "best_seconds",
    "cpu_facts",
    "machine_info",
    "machine_line",
    "markdown_table",
    "matmul_peak",
    "percentile",
    "rss_mib",
    "sync",
    "timed",
]

T = TypeVar("T")

# The CPU flags that decide which kernels torch, oneDNN, fbgemm and the other runtimes can use.
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

_PACKAGES = (
    "transformers",
    "tokenizers",
    "FlagEmbedding",
    "sentence-transformers",
    "onnxruntime",
    "openvino",
)


# -- statistics ------------------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``, linearly interpolated between the closest ranks.

    The one definition of the suite (numpy's default, "linear"): with 10 values the p90 lies between
    the 9th and the 10th smallest.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q={q!r} is not between 0 and 1")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# -- time ------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    """Wait for the device to finish its queued work (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], device: str = "cpu") -> tuple[T, float]:
    """``fn()``'s result and its wall seconds, with the device idle before and after."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t0


def best_seconds(fn: Callable[[], object], repeats: int = 10) -> float:
    """The fastest of ``repeats`` calls of ``fn`` (after one untimed call), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(device: str, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """Best FLOP/s of a square matmul (2048 on CPU, 8192 on GPU), measured now.

    On CPU both of torch's matrix libraries are tried, alternating: MKL (``a @ b``) and oneDNN (what
    the core's padding-free forward uses), and the faster one sets the peak.
    """
    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    kernels: list[Callable[[], object]] = [lambda: a @ b]
    if device == "cpu":
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    working = []
    for kernel in kernels:
        try:
            kernel()
        except (AttributeError, RuntimeError):  # oneDNN missing, or without this dtype on this CPU
            continue
        working.append(kernel)
    sync(device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for kernel in working:
            _, elapsed = timed(kernel, device)
            best = max(best, 2 * n**3 / elapsed)
    return best


# -- memory ----------------------------------------------------------------------------------------
def rss_mib() -> float:
    """Resident memory of this process (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class PeakRSS:
    """Peak resident memory of the process while a call runs (Linux ``/proc``), in bytes.

    The kernel's high-water mark is reset before the call and read after it, so nothing runs beside
    the timed code, and the peak is exact. Where the mark cannot be reset, a thread samples the
    resident size every 5 ms instead.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self._interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        """Resident bytes now."""
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    @staticmethod
    def _high_water_mark() -> int:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self._interval)

    @property
    def grown_mib(self) -> float:
        """The peak above the level at the start, in MiB."""
        return (self.peak - self.start) / 2**20

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            reset = self._high_water_mark() <= self.rss() + 2**20  # (a write may be accepted, ignored)
        except (OSError, StopIteration, ValueError):
            reset = False
        if not reset:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = max(self.peak, self._high_water_mark())
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self.rss())


# -- the machine -----------------------------------------------------------------------------------
def cpu_facts() -> dict[str, Any]:
    """The CPU's model name, family and model numbers (the name alone hides the generation), and
    which of :data:`CPU_FLAGS` it has (from ``/proc/cpuinfo``, what ``lscpu`` reads)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {"cpu": platform.processor() or platform.machine(), "cpu_flags": []}
    name = fields.get("model name", platform.processor())
    if "cpu family" in fields:
        name += f", family {fields['cpu family']} model {fields.get('model', '?')}"
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    return {"cpu": name, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def machine_info(device: str) -> dict[str, Any]:
    """Date, CPU (model, family, flags), cores, torch and its threads, library versions, load, GPU."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **cpu_facts(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset (all cores)"),
        "loadavg_start": os.getloadavg(),
        "device": device,
    }
    for package in _PACKAGES:
        try:
            info[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            info[package.replace("-", "_")] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line naming the machine of ``info`` (from :func:`machine_info`)."""
    flags = ", ".join(info.get("cpu_flags", [])) or "none of note"
    gpu = f"; GPU {info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {info['cuda']}" if "gpu" in info else ""
    return (
        f"{info['date']}; CPU {info['cpu']} ({info['cpu_count']} cores; flags {flags}), torch "
        f"{info['torch']} with {info['torch_threads']} threads{gpu}; load average at start "
        f"{info['loadavg_start'][0]:.2f}."
    )


# -- markdown --------------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: str = "") -> list[str]:
    """A markdown table: ``headers``, then one line per row (cells as given, ``str()``-ed).

    ``numeric`` marks right-aligned columns by position, ``"r"`` for right and anything else for
    left, e.g. ``"lrr"``; columns beyond it are left-aligned.
    """
    align = ["---:" if numeric[i : i + 1] == "r" else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells under {len(headers)} headers: {row!r}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines
