"""The benchmark suite runs end to end on the tiny model, so it cannot rot between real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
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
            encoder = Reranker(model_dir, device="cpu", max_length=spec.max_length)
            for flops, request in zip(workload["call_flops"], spec.requests, strict=True):
                ids = encoder.encode_pairs([(request.query, p) for p in request.passages])
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
    from benchmarks.run import build_subject

    folder = build_subject("tiny", tmp_path / "tiny")
    marker, tokenizer = folder / "bge_test_model.json", folder / "tokenizer.json"
    current, vocab = marker.read_text(), tokenizer.read_bytes()
    marker.write_text(json.dumps({**json.loads(current), "build": 1}))  # as an older builder left it
    tokenizer.write_text("{}")
    assert build_subject("tiny", folder) == folder
    assert (marker.read_text(), tokenizer.read_bytes()) == (current, vocab)
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    build_subject("tiny", folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights  # not built again


def test_agreement_bound_is_set_by_the_less_precise_contender() -> None:
    # on a GPU ours runs fp16 and FlagReranker's defaults fp32: fp32's 1e-4 would fail every such pair
    from benchmarks.run import TOLERANCE, agreement_bound

    assert agreement_bound("float16", "float32") == TOLERANCE["float16"]
    assert agreement_bound("float32", "float16") == TOLERANCE["float16"]
    assert agreement_bound("float32", "float32") == TOLERANCE["float32"]


@pytest.mark.slow
def test_concurrency_benchmark_runs_and_both_modes_agree(tmp_path: Path) -> None:
    from benchmarks.concurrency import main

    args = ["--subject", "tiny", "--requests", "4", "--passages", "5", "--rounds", "1"]
    assert main([*args, "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "concurrency.json").read_text())
    assert report["serial"]["pairs_per_s"] > 0
    assert report["concurrent"]["pairs_per_s"] > 0
    assert report["max_abs_score_delta"] < 1e-5
    assert "| concurrent, coalesced |" in (tmp_path / "out" / "concurrency.md").read_text()


@pytest.mark.slow
def test_kernel_benchmarks_run_and_both_attentions_agree(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.kernels import attention, linear

    linear()
    attention(chunks=1)
    out = capsys.readouterr().out
    assert "| 384 x 1152 |" in out
    assert "square 2048 matmul" in out
    delta = float(out.split("max |delta| between the two: ")[1].split()[0])
    assert delta < 1e-4
    assert "8192 tokens: " in out  # flash attention's rate by sequence length


@pytest.mark.slow
def test_kernel_flow_compares_every_linear_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.kernels import flow

    flow(model=str(tmp_path / "small"))
    out = capsys.readouterr().out
    assert "+GELU |" in out  # the up-projections, found by their shape
    assert "profiled run" in out
    assert "of the matmul peak" in out


@pytest.mark.slow
def test_ablations_run_on_both_workloads_and_every_variant_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.ablations import main

    names = ["packed-none", "packed-none-sync", "packed-none-padattn", "packed-none-b512", "padded", "ce"]
    args = ["--subject", "tiny", "--scale", "smoke", "--requests", "1", "--models", str(tmp_path)]
    assert main([*args, "--workload", "throughput,interactive", "--variants", ",".join(names)]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = [line.split(" workload")[0] for line in lines if " workload, tiny subject" in line]
    assert titles == ["throughput", "interactive"]  # in the order asked for, one process
    rows = [line.split("|") for line in lines if line.startswith("| ") and not line.startswith("| variant")]
    assert [cells[1].strip() for cells in rows] == names * 2
    for cells in rows:
        assert float(cells[7]) < 1e-4  # max |delta| against packed-none
    runs = {cells[1].strip(): cells[2] for cells in rows}  # what each variant really ran
    assert "per-pair attention" in runs["packed-none"]
    assert "padded attention" in runs["packed-none-padattn"]
    assert "transformers forward" in runs["padded"]


def test_unknown_ablation_variants_are_refused() -> None:
    from benchmarks.ablations import make_variant

    for name in ("packed-none-synk", "packed-b512", "padded-x"):
        with pytest.raises(SystemExit, match="unknown variant"):
            make_variant(name, "unused")


@pytest.mark.slow
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


def test_a_contender_whose_runtime_is_missing_is_skipped_with_a_note(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.contenders
    from benchmarks.run import run

    needs = {**benchmarks.contenders.OPTIONAL_PACKAGES, "openvino": ("not_a_real_runtime_pkg",)}
    monkeypatch.setattr(benchmarks.contenders, "OPTIONAL_PACKAGES", needs)
    report = run(
        subject="tiny",
        scale="smoke",
        device="cpu",
        out=tmp_path,
        models=tmp_path / "models",
        model_dir=model_dir,
        peak_seconds=0.01,
        contenders=["ours", "openvino", "openvino-default"],
        workloads=["interactive"],
    )
    assert list(report["workloads"][0]["contenders"]) == ["ours"]
    assert set(report["skipped"]) == {"openvino", "openvino-default"}
    table = (tmp_path / "results.md").read_text()
    assert "- skipped openvino: not installed: not_a_real_runtime_pkg (pip install" in table
