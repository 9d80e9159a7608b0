"""The offline test model that tests and benchmarks build is the same on every build."""

from __future__ import annotations

from pathlib import Path

from bge_rerank_integrations.testing import build_test_model


def test_two_builds_write_identical_files(tmp_path: Path) -> None:
    # The tokenizer trainer is not deterministic on its own; scores and ids that moved between
    # builds made dtype-noise bounds pass on one CI run and fail on the next.
    first, second = build_test_model(tmp_path / "a"), build_test_model(tmp_path / "b")
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    assert "tokenizer.json" in files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
