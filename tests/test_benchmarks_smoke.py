"""The benchmark suite runs end to end on the tiny model, so it cannot rot between real runs.

One fast smoke test per entry point runs by default; the longer runs are marked ``bench_full``,
which CI runs (``CI`` set) and ``pytest --bench-full`` runs locally (tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.bench_full
def test_benchmark_suite_runs_and_every_contender_agrees(model_dir: Path, tmp_path: Path) -> None:
    from benchmarks.run import forward_flops, run
    from benchmarks.workloads import make_workloads

    from bge_rerank_integrations import Reranker

    report = run(
        subject="tiny",
        scale="smoke",
        device="cpu",
        out=tmp_path,
        models=tmp_path / "models",
        model_dir=model_dir,
        peak_seconds=0.05,
    )

    assert json.loads((tmp_path / "results.json").read_text())["scale"] == "smoke"
    table = (tmp_path / "results.md").read_text()
    assert [w["name"] for w in report["workloads"]] == ["interactive", "throughput", "long"]
    config = json.loads((model_dir / "config.json").read_text())
    for workload, spec in zip(report["workloads"], make_workloads(model_dir, "smoke"), strict=True):
        assert f"## {workload['name']}" in table
        # the best call's FLOP rate: one FLOP count per call, each of that call's own pairs
        assert len(workload["call_flops"]) == len(workload["contenders"]["ours"]["calls"])
        if spec.per_request:
            reranker = Reranker(model_dir, device="cpu", max_length=spec.max_length)
            for flops, request in zip(workload["call_flops"], spec.requests, strict=True):
                ids = reranker.encode_pairs([(request.query, p) for p in request.passages])
                assert flops == pytest.approx(forward_flops([len(x) for x in ids], config))
        assert sum(workload["call_flops"]) == pytest.approx(workload["flops"])
        contenders = workload["contenders"]
        assert list(contenders) == [
            "ours",
            "ours-bf16",
            "ours-int8",
            "flag-default",
            "flag-best",
            "cross-encoder",
            "onnxruntime",
            "onnxruntime-int8",
            "openvino",
            "openvino-default",
        ]
        assert not report["skipped"]  # the dev environment has every runtime
        for name, result in contenders.items():
            assert result["agrees"], (workload["name"], name, result["warmup_max_abs_delta"])
            assert result["same_token_ids"] == workload["pairs"], (workload["name"], name)
            assert result["pairs_per_s"] > 0
            assert result["flops_per_s"] > 0
            assert result["computed_tokens"] >= workload["real_tokens"] > 0
            if result["dtype"] == "float32":
                assert result["max_abs_delta_vs_ours"] < 1e-4, (workload["name"], name)
            else:  # reduced precision really is reduced (it would not be worth its own row otherwise)
                assert result["max_abs_delta_vs_ours"] > 1e-4, (workload["name"], name)
        assert contenders["ours-int8"]["dtype"] == contenders["onnxruntime-int8"]["dtype"] == "int8"
        assert contenders["openvino"]["dtype"] == "float32"
        # the summary row of every contender: its speed relative to ours on each workload
        row = next(line for line in table.splitlines() if line.startswith("| onnxruntime-int8 | int8 |"))
        assert len(row.split("|")) == 2 + 2 + 3 + 2
        # the padding-free forward computes real tokens, plus at most 63 spare rows a pass on CPU
        assert contenders["ours"]["padding"] < contenders["cross-encoder"]["padding"]
        assert contenders["flag-default"]["padding"] > 1.0  # the reference pads and repeats its first batch


def test_a_subject_from_an_older_build_is_rebuilt_and_a_current_one_reused(tmp_path: Path) -> None:
    from benchmarks.subjects import SUBJECTS

    folder = SUBJECTS["tiny"].build(tmp_path)
    marker, tokenizer = folder / "bge_test_model.json", folder / "tokenizer.json"
    current, vocab = marker.read_text(), tokenizer.read_bytes()
    marker.write_text(json.dumps({**json.loads(current), "build": 1}))  # as an older builder left it
    tokenizer.write_text("{}")
    assert SUBJECTS["tiny"].build(tmp_path) == folder
    assert (marker.read_text(), tokenizer.read_bytes()) == (current, vocab)
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    SUBJECTS["tiny"].build(tmp_path)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights  # not built again


def test_agreement_bound_is_set_by_the_less_precise_contender() -> None:
    # on a GPU ours runs fp16 and FlagReranker's defaults fp32: fp32's 1e-4 would fail every such pair
    from benchmarks.run import TOLERANCE, agreement_bound

    assert agreement_bound("float16", "float32") == TOLERANCE["float16"]
    assert agreement_bound("float32", "float16") == TOLERANCE["float16"]
    assert agreement_bound("float32", "float32") == TOLERANCE["float32"]


def test_concurrency_benchmark_runs_and_both_modes_agree(tmp_path: Path) -> None:
    from benchmarks.concurrency import main

    args = ["--subject", "tiny", "--requests", "4", "--passages", "5", "--rounds", "1"]
    assert main([*args, "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "concurrency.json").read_text())
    assert report["serial"]["pairs_per_s"] > 0
    assert report["concurrent"]["pairs_per_s"] > 0
    assert report["max_abs_score_delta"] < 1e-5
    assert "| concurrent, coalesced |" in (tmp_path / "out" / "concurrency.md").read_text()


def test_kernel_benchmarks_run_and_both_attentions_agree(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.kernels import attention, linear

    linear(shapes=[(384, 1152)], square=256)
    attention(chunks=1, sweep=(64, 128))
    out = capsys.readouterr().out
    assert "| 384 x 1152 |" in out
    assert "square 256 matmul" in out
    delta = float(out.split("max |delta| between the two: ")[1].split()[0])
    assert delta < 1e-4
    assert "128 tokens: " in out  # flash attention's rate by sequence length


@pytest.mark.slow
@pytest.mark.bench_full
def test_kernel_benchmarks_cover_every_shape_and_length(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.kernels import LENGTHS, SHAPES, attention, linear

    linear()
    attention(chunks=1)
    out = capsys.readouterr().out
    assert all(f"| {k} x {n} |" in out for k, n in SHAPES)
    assert "square 2048 matmul" in out
    assert all(f"  {length} tokens: " in out for length in LENGTHS)


@pytest.mark.slow
@pytest.mark.bench_full
def test_kernel_flow_compares_every_linear_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.kernels import flow

    flow(model=str(tmp_path / "small"))
    out = capsys.readouterr().out
    assert "+GELU |" in out  # the up-projections, found by their shape
    assert "profiled run" in out
    assert "of the matmul peak" in out


def _ablation_rows(out: str) -> list[list[str]]:
    return [
        line.split("|") for line in out.splitlines() if line.startswith("| ") and "| variant |" not in line
    ]


def test_ablations_run_and_agree_with_the_core(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.ablations import main

    names = ["core", "packed-none-b512", "padded"]
    args = ["--subject", "tiny", "--scale", "smoke", "--requests", "1", "--models", str(tmp_path)]
    assert main([*args, "--variants", ",".join(names)]) == 0
    rows = _ablation_rows(capsys.readouterr().out)
    assert [cells[1].strip() for cells in rows] == names
    assert all(float(cells[7]) < 1e-4 for cells in rows)  # max |delta| against the core
    runs = {cells[1].strip(): cells[2] for cells in rows}  # what each variant really ran
    assert "per-pair attention" in runs["packed-none-b512"]
    assert "transformers forward" in runs["padded"]


@pytest.mark.slow
@pytest.mark.bench_full
def test_ablations_run_on_both_workloads_and_every_variant_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.ablations import main

    names = [
        "core",
        "packed-none",
        "packed-none-sync",
        "packed-none-padattn",
        "packed-2048-copies",
        "packed-2048-torchlinear",
        "packed-2048-gelu",
        "packed-2048-rows1",
        "packed-2048-alllayers",
        "padded",
        "ce",
        "flag-bs2",
    ]
    args = ["--subject", "tiny", "--scale", "smoke", "--requests", "1", "--models", str(tmp_path)]
    assert main([*args, "--workload", "throughput,interactive", "--variants", ",".join(names)]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = [line.split(" workload")[0] for line in lines if " workload, tiny subject" in line]
    assert titles == ["throughput", "interactive"]  # in the order asked for, one process
    rows = _ablation_rows("\n".join(lines))
    assert [cells[1].strip() for cells in rows] == names * 2
    for cells in rows:
        assert float(cells[7]) < 1e-4  # max |delta| against the core
    runs = {cells[1].strip(): cells[2] for cells in rows}
    assert "per-pair attention" in runs["packed-none"]
    assert "padded attention" in runs["packed-none-padattn"]


def test_unknown_ablation_variants_are_refused() -> None:
    from benchmarks.ablations import variants

    for name in ("packed-none-synk", "packed-b512", "padded-x"):
        with pytest.raises(SystemExit, match="unknown variant"):
            variants(["core", name])


def test_every_variant_the_documents_and_gpu_sh_name_is_in_the_table() -> None:
    from benchmarks.ablations import VARIANTS

    quoted = re.findall(r"--variants[ =\n]+([\w,-]+)", (BENCHMARKS / "RESULTS.md").read_text())
    quoted += re.findall(r"^variants=([\w,-]+)", (BENCHMARKS / "gpu.sh").read_text(), re.MULTILINE)
    names = {n for group in quoted for n in group.split(",")}
    assert len(quoted) >= 6
    assert "packed-none-b65536" in names  # gpu.sh's
    assert names <= set(VARIANTS), names - set(VARIANTS)


def test_ablations_list_every_variant_with_its_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.ablations import VARIANTS, main

    assert main(["--list"]) == 0
    rows = {
        line.split(" | ")[0].removeprefix("| "): line for line in capsys.readouterr().out.splitlines()[2:]
    }
    assert list(rows) == list(VARIANTS)
    assert "chunk_tokens=2048, linear='unfused-gelu'" in rows["packed-2048-gelu"]


def test_soak_runs_and_reports_its_curve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.soak import main

    args = ["--subject", "tiny", "--seconds", "2", "--sample-every", "0.5", "--warm-up", "0.5"]
    args += [
        "--queries",
        "2",
        "--passages",
        "6",
        "--models",
        str(tmp_path / "models"),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "soak.json").read_text())
    totals = report["totals"]
    assert totals["calls"] > 0
    assert totals["wrong"] == totals["errors"] == 0
    assert totals["calls"] == totals["exact"] + totals["cancelled"] + totals["timed_out"]
    assert report["reference_pairs"] == 2 * 12  # every query with every pool passage, scored alone
    samples = report["samples"]
    assert len(samples) >= 4
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    assert all(s["threads"] >= 1 and s["rss_mib"] > 0 for s in samples)
    summary = report["summary"]
    assert summary["threads_running_max"] > summary["threads_before"]  # the callers were running
    assert "| t (s) | calls |" in (tmp_path / "soak.md").read_text()
    assert "0 wrong, 0 errors" in capsys.readouterr().out


def test_soak_counts_a_wrong_score_as_wrong(model_dir: Path) -> None:
    from benchmarks.soak import Soak

    from bge_rerank_integrations import Reranker

    soak = Soak(Reranker(model_dir, device="cpu"), ["q"], ["a", "b"], max_passages=2)
    right = [soak.alone[("q", "a")], soak.alone[("q", "b")]]
    soak.judge([("q", "a"), ("q", "b")], right)
    soak.judge([("q", "a"), ("q", "b")], right[::-1])  # another call's order
    soak.judge([("q", "a"), ("q", "b")], right[:1])  # a score missing
    assert (soak.tally.exact, soak.tally.wrong) == (1, 2)
    assert len(soak.tally.examples) == 2


def test_leaks_reports_the_three_cases(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.leaks import main

    assert main(["--count", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| dropped without close()",
        "| closed, still referenced",
        "| kept loaded (what a leak costs)",
    ]
    assert rows[1].split(" | ")[1] == "0"  # a dropped reranker leaves no thread behind
    assert rows[3].split(" | ")[1] == "2"  # kept ones keep theirs: the report can tell them apart


def _interactive_run(
    model_dir: Path, tmp_path: Path, contenders: list[str], *, isolate: bool = False
) -> dict[str, Any]:
    """The suite on the tiny model's smoke-scale interactive workload, for ``contenders``."""
    from benchmarks.run import run

    return run(
        subject="tiny",
        scale="smoke",
        device="cpu",
        out=tmp_path,
        models=tmp_path / "models",
        model_dir=model_dir,
        peak_seconds=0.01,
        contenders=contenders,
        workloads=["interactive"],
        isolate=isolate,
    )


def test_a_contender_whose_runtime_is_missing_is_skipped_with_a_note(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.contenders

    needs = {**benchmarks.contenders.OPTIONAL_PACKAGES, "openvino": ("not_a_real_runtime_pkg",)}
    monkeypatch.setattr(benchmarks.contenders, "OPTIONAL_PACKAGES", needs)
    report = _interactive_run(model_dir, tmp_path, ["ours", "openvino", "openvino-default"])
    assert list(report["workloads"][0]["contenders"]) == ["ours"]
    assert set(report["skipped"]) == {"openvino", "openvino-default"}
    table = (tmp_path / "results.md").read_text()
    assert "- skipped openvino: not installed: not_a_real_runtime_pkg (pip install" in table


def test_isolated_contenders_each_compute_in_a_process_of_their_own(model_dir: Path, tmp_path: Path) -> None:
    import os

    report = _interactive_run(model_dir, tmp_path, ["ours", "ours-int8", "onnxruntime"], isolate=True)
    contenders = report["workloads"][0]["contenders"]
    pids = {name: rec["pid"] for name, rec in contenders.items()}
    assert os.getpid() not in pids.values(), pids
    assert len(set(pids.values())) == 3, pids
    for name, rec in contenders.items():  # the same checks and figures as in one process
        assert rec["agrees"], name
        assert rec["same_token_ids"] == report["workloads"][0]["pairs"], name
        assert len(rec["calls"]) == 2, name
        assert all(t > 0 for t in rec["calls"]), name
        assert rec["computed_tokens"] >= report["workloads"][0]["real_tokens"], name
    assert contenders["onnxruntime"]["max_abs_delta_vs_ours"] < 1e-4
    assert contenders["ours-int8"]["dtype"] == "int8"
    assert "Each contender ran in a process of its own" in (tmp_path / "results.md").read_text()


def test_an_isolated_contender_that_fails_to_load_says_which_and_why(tmp_path: Path) -> None:
    from benchmarks.contenders import IsolatedContender, build_specs

    (spec,) = build_specs("cpu", ["ours"])
    with pytest.raises(RuntimeError, match=r"contender ours failed in its process:(.|\n)*no_such_model"):
        IsolatedContender(spec, str(tmp_path / "no_such_model"), "cpu", 64, threads=1)


def test_an_isolated_contender_whose_process_dies_says_so(model_dir: Path) -> None:
    import os
    import signal

    from benchmarks.contenders import IsolatedContender, build_specs

    (spec,) = build_specs("cpu", ["ours"])
    contender = IsolatedContender(spec, str(model_dir), "cpu", 64, threads=1)
    assert contender.score([("a query", "a passage")])  # alive, it answers
    os.kill(contender.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"contender ours's process ended \(exit code -9\)"):
        contender.score([("a query", "a passage")])
    contender.close()  # and closing what is gone is quiet


def test_isolation_is_refused_on_gpu(tmp_path: Path) -> None:
    from benchmarks.run import run

    with pytest.raises(ValueError, match="isolate is for CPU runs"):
        run(subject="tiny", scale="smoke", device="cuda", out=tmp_path, models=tmp_path, isolate=True)


def test_one_percentile_definition_for_the_suite() -> None:
    # linear interpolation between closest ranks: statistics' "inclusive" method, numpy's default
    from benchmarks.harness import percentile

    values = [7.0, 1.0, 4.0, 10.0, 2.0, 3.0, 9.0, 5.0, 8.0, 6.0]
    expected = statistics.quantiles(values, n=100, method="inclusive")
    assert [percentile(values, q / 100) for q in range(1, 100)] == pytest.approx(expected)
    assert percentile(values, 0.5) == statistics.median(values)
    assert (percentile(values, 0.0), percentile(values, 1.0), percentile([3.0], 0.9)) == (1.0, 10.0, 3.0)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_the_entry_points_use_the_harness_not_their_own_copies() -> None:
    # two percentile definitions made p90s from run.py and concurrency.py incomparable (issue 13)
    for path in BENCHMARKS.glob("*.py"):
        if path.name != "harness.py":
            source = path.read_text()
            for name in ("percentile", "machine_info", "rss_mib", "best_seconds", "matmul_peak"):
                assert not re.search(rf"^def _?{name}\(", source, re.MULTILINE), (path.name, name)


def test_every_results_path_the_documents_cite_exists_and_nothing_is_left_to_prune() -> None:
    from benchmarks.prune import cited, prunable

    paths = cited()
    assert len(paths) >= 20
    assert paths[BENCHMARKS / "results" / "soak" / "soak.json"] == "RELIABILITY.md"
    assert [str(p) for p in paths if not p.exists()] == []
    assert [p.name for p in prunable()] == []  # run ``python -m benchmarks.prune --apply``


def test_prune_keeps_the_latest_run_of_a_configuration_and_the_cited_ones(tmp_path: Path) -> None:
    from benchmarks.prune import configuration, prunable

    def run(name: str, date: str, command: str) -> None:
        (tmp_path / name).mkdir()
        report = {"command": command, "machine": {"date": date}}
        (tmp_path / name / "concurrency.json").write_text(json.dumps(report))

    same = "python -m benchmarks.concurrency --subject small --out {}"
    run("old", "2026-01-01T00:00:00+00:00", same.format("bench-out/a"))
    run("new", "2026-01-02T00:00:00+00:00", same.format("bench-out/b"))
    run("other", "2025-01-01T00:00:00+00:00", "python -m benchmarks.concurrency --subject tiny")
    (tmp_path / "loose.md").write_text("an uncited table")
    assert configuration(tmp_path / "old") == (shlex.join(same.split()[:-2]), "2026-01-01T00:00:00+00:00")
    assert [p.name for p in prunable(tmp_path)] == ["loose.md", "old"]
