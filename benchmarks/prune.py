"""Keep ``benchmarks/results/`` to what is worth keeping: the runs the documents cite, and the latest
run of each configuration.

    python -m benchmarks.prune            # lists what would go
    python -m benchmarks.prune --apply    # removes it

A run is a folder under ``results/`` holding a report (``results.json``, ``concurrency.json`` or
``soak.json``); its configuration is the command that made it without its ``--out``, and its date the
report's. A path is cited when ``benchmarks/RESULTS.md`` (``results/...``) or the top-level
``RELIABILITY.md`` or ``README.md`` (``benchmarks/results/...``) link it; a cited folder keeps all
it holds. Anything else under ``results/`` (a loose table, a scratch run's output) is kept only if
cited. ``tests/test_benchmarks_smoke.py`` checks that every cited path exists and nothing is left to
prune.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["REPORTS", "cited", "configuration", "main", "prunable"]

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
REPORTS = ("results.json", "concurrency.json", "soak.json")
_DOCUMENTS = {  # document: the prefix its links to the results folder start with
    BENCHMARKS / "RESULTS.md": "results/",
    BENCHMARKS.parent / "RELIABILITY.md": "benchmarks/results/",
    BENCHMARKS.parent / "README.md": "benchmarks/results/",
}
_LINK = re.compile(r"\]\(([^)\s#]+)")


def cited(results: Path = RESULTS) -> dict[Path, str]:
    """Every path under ``results`` a document links (the folder itself excepted), with the document."""
    found: dict[Path, str] = {}
    for document, prefix in _DOCUMENTS.items():
        if not document.exists():
            continue
        for target in _LINK.findall(document.read_text()):
            if target.startswith(prefix) and target.rstrip("/") != prefix.rstrip("/"):
                found.setdefault(results / target.removeprefix(prefix).rstrip("/"), document.name)
    return found


def configuration(run: Path) -> tuple[str, str] | None:
    """A run folder's configuration (its command without ``--out``) and date; ``None`` if no report."""
    for name in REPORTS:
        report = run / name
        if report.exists():
            data = json.loads(report.read_text())
            words = shlex.split(data.get("command", ""))
            for i, word in enumerate(words):
                if word == "--out":
                    del words[i : i + 2]
                    break
            return " ".join(words), str(data.get("machine", {}).get("date", ""))
    return None


def prunable(results: Path = RESULTS) -> list[Path]:
    """The entries of ``results`` that are neither cited (nor inside a cited folder) nor the latest
    run of their configuration."""
    keep = set(cited(results))
    latest: dict[str, tuple[str, Path]] = {}
    for entry in sorted(results.iterdir()):
        facts = configuration(entry) if entry.is_dir() else None
        if facts is not None:
            config, date = facts
            if config not in latest or date > latest[config][0]:
                latest[config] = (date, entry)
    keep |= {entry for _, entry in latest.values()}

    def kept(path: Path) -> bool:
        return any(path == k or k in path.parents or path in k.parents for k in keep)

    return [entry for entry in sorted(results.iterdir()) if not kept(entry)]


def main(argv: Sequence[str] | None = None) -> int:
    """List (or with ``--apply`` remove) what :func:`prunable` finds."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prune", description=__doc__.splitlines()[0])
    parser.add_argument("--apply", action="store_true", help="remove them (default: only list them)")
    args = parser.parse_args(argv)
    missing = [
        f"{path.relative_to(BENCHMARKS)} (cited by {doc})"
        for path, doc in cited().items()
        if not path.exists()
    ]
    for line in missing:
        print(f"missing: {line}")
    for path in prunable():
        print(f"{'removing' if args.apply else 'would remove'}: {path.relative_to(BENCHMARKS)}")
        if args.apply:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
