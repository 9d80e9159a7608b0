"""Unpack the carried wheels a machine lacks into a folder for PYTHONPATH. Standard library only.

    python benchmarks/install_wheels.py WHEEL_DIR TARGET_DIR

For every line of ``requirements-gpu.txt`` it checks the installed version (``importlib.metadata``,
so the interpreter's own packages count); if the distribution is missing or older than the accepted
minimum (or, for transformers, 5.24 or newer, which FlagEmbedding 1.4 cannot import) it unpacks the
matching wheel for this interpreter and architecture into TARGET_DIR. No pip, no network, no
dependency resolution: the list is the whole import closure of the benchmark suite. Prints one line
per requirement and exits non-zero if a needed wheel is absent.
"""

from __future__ import annotations

import platform
import re
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# versions that are installed but must not be used (FlagEmbedding 1.4.2 fails to import with them)
_TOO_NEW = {"transformers": (5, 24)}


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _compatible(filename: str) -> bool:
    """Whether a wheel file suits this interpreter (CPython x.y, this machine's architecture)."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        return False
    py_tags, abi_tags, plat_tags = parts[-3].split("."), parts[-2].split("."), parts[-1].split(".")
    major, minor = sys.version_info[:2]
    here = f"cp{major}{minor}"
    python_ok = any(
        t in ("py3", f"py{major}{minor}", here)
        or (t.startswith("cp3") and "abi3" in abi_tags and int(t[3:] or 0) <= minor)
        for t in py_tags
    )
    abi_ok = any(t in ("none", "abi3", here) for t in abi_tags)
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    plat_ok = any(t == "any" or (t.startswith("manylinux") and t.endswith(machine)) for t in plat_tags)
    return python_ok and abi_ok and plat_ok


def _unpack(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            if ".data/" in name.split("/", 1)[0] + "/":  # {dist}.data/{purelib,platlib,scripts,...}/...
                _, kind, rest = [*name.split("/", 2), "", ""][:3]
                if kind not in ("purelib", "platlib") or not rest:
                    continue
                name = rest
            dest = target / name
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(info))


def main(argv: list[str]) -> int:
    """Install what is missing; return the exit status."""
    if len(argv) != 2:
        print(__doc__)
        return 2
    wheels, target = Path(argv[0]), Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    requirements = Path(__file__).with_name("requirements-gpu.txt").read_text().splitlines()
    available = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    failed = 0
    for line in requirements:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pinned, _module, minimum = line.split()[:3]
        dist, wanted = pinned.split("==")
        try:
            have = version(dist)
        except PackageNotFoundError:
            have = None
        too_new = _TOO_NEW.get(dist)
        if (
            have is not None
            and _release(have) >= _release(minimum)
            and not (too_new and _release(have) >= too_new)
        ):
            print(f"  have    {dist} {have}")
            continue
        prefix = f"{_norm(dist)}-{wanted}-"
        matches = [
            w for w in available if _norm(w.name.split("-")[0]) + "-" + w.name.split("-")[1] + "-" == prefix
        ]
        matches = [w for w in matches if _compatible(w.name)]
        if not matches:
            print(
                f"  MISSING {dist}=={wanted} (installed: {have}); "
                f"no wheel for this Python and architecture in {wheels}"
            )
            failed += 1
            continue
        _unpack(matches[0], target)
        print(f"  unpack  {matches[0].name}" + (f" (installed {have} is not usable)" if have else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
