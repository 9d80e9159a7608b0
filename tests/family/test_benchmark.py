"""benchmarks.family runs end to end on the tiny models, so it cannot rot between real runs."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.family import run_family

from bge_rerank_integrations.llm_layout import LLM_KINDS

from .reference import REFERENCE_WARNINGS

pytestmark = REFERENCE_WARNINGS


def test_family_benchmark_runs_every_kind_beside_its_reference(tmp_path: Path) -> None:
    report = run_family(
        kinds=list(LLM_KINDS), subject="tiny", scale="smoke", device="cpu", out=tmp_path, models=tmp_path
    )
    assert json.loads((tmp_path / "family.json").read_text())["scale"] == "smoke"
    table = (tmp_path / "family.md").read_text()
    machine = report["machine"]  # the suite's one record of the machine (benchmarks.harness)
    assert machine["cpu"]
    assert machine["torch_threads"] >= 1
    assert len(machine["loadavg_start"]) == 3
    assert machine["cpu"].split(",")[0] in table
    for kind in LLM_KINDS:
        entry = report["kinds"][kind]
        assert set(entry["workloads"]) == {"interactive", "throughput"}
        assert entry["paths"]["ours"] == "Reranker"  # the core serves the kind: the product's own path
        for name, result in entry["workloads"].items():
            assert list(result["contenders"]) == ["ours", "flag"]
            for contender in result["contenders"].values():
                assert contender["pairs_per_s"] > 0
                assert contender["warmup_max_abs_delta"] < 1e-4  # fp32: the same scores as the reference
            assert f"| {kind} | {name} | ours |" in table
