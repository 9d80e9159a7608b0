"""The ``bge-rerank`` command line: ranked output, JSONL in and out, clear exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bge_rerank_integrations import Reranker
from bge_rerank_integrations.cli import main

PASSAGES = ["Paris is the capital of France.", "Water boils at 100 degrees.", "Berlin is in Germany."]
QUERY = "capital of France"


def test_query_prints_passages_best_first(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", QUERY, *PASSAGES, "--model", str(model_dir), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = Reranker(model_dir, device="cpu").rank(QUERY, PASSAGES, normalize=True)
    assert len(lines) == len(PASSAGES)
    for line, result in zip(lines, expected, strict=True):
        assert f"[{result.index}] {PASSAGES[result.index]}" in line
        assert f"{result.score:9.4f}" in line


def test_rank_jsonl_keeps_good_records_and_reports_bad_lines(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "query": QUERY, "passages": PASSAGES}),
                "{not json",
                json.dumps({"query": QUERY, "passages": "not a list"}),
                "",
                json.dumps({"query": "Berlin", "passages": PASSAGES[::-1]}),
            ]
        )
    )
    code = main(["rank", str(source), "--model", str(model_dir), "--device", "cpu", "--top-n", "2"])
    captured = capsys.readouterr()
    assert code == 2
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["line"] for r in records] == [1, 5]
    assert records[0]["id"] == "a"
    reranker = Reranker(model_dir, device="cpu")
    for record, (query, passages) in zip(
        records, [(QUERY, PASSAGES), ("Berlin", PASSAGES[::-1])], strict=True
    ):
        expected = reranker.rank(query, passages, top_n=2, normalize=True)
        assert [r["index"] for r in record["results"]] == [r.index for r in expected]
        assert [r["score"] for r in record["results"]] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert "line 2:" in captured.err
    assert "line 3: 'passages' must be a list of strings" in captured.err
    assert "lines: 2, 3" in captured.err


def test_missing_model_exits_1_with_one_line_of_advice(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bge_rerank_integrations",
            "query",
            "q",
            "p",
            "--model",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "could not load the reranker model" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_2(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", QUERY, "p", "--model", str(model_dir), "--top-n", "0"]) == 2
    assert "top_n must be >= 1, got 0" in capsys.readouterr().err


def test_model_options_reach_the_core(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long_passage = "Water boils at 100 degrees. " * 60 + PASSAGES[0]
    args = ["query", QUERY, long_passage, PASSAGES[1], "--model", str(model_dir), "--raw"]
    assert main([*args, "--device", "cpu,cpu", "--max-length", "64", "--long-passages", "window"]) == 0
    windowed = Reranker(model_dir, device="cpu", max_length=64, long_passages="window")
    expected = windowed.rank(QUERY, [long_passage, PASSAGES[1]])
    lines = capsys.readouterr().out.splitlines()
    assert [f"{r.score:9.4f}" in line for r, line in zip(expected, lines, strict=True)] == [True, True]


def test_a_remote_backend_without_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", QUERY, "p", "--backend", "tei"]) == 2
    assert "backend='tei' needs base_url" in capsys.readouterr().err


def test_bench_hands_its_arguments_to_the_suite(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--subject" in capsys.readouterr().out


def test_bench_outside_a_checkout_says_where_it_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bge_rerank_integrations", "bench"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "source checkout" in result.stderr


def test_rank_reads_standard_input(model_dir: Path) -> None:
    record = json.dumps({"query": QUERY, "passages": PASSAGES})
    result = subprocess.run(
        [sys.executable, "-m", "bge_rerank_integrations", "rank", "-", "--model", str(model_dir), "--raw"],
        input=record + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    expected = Reranker(model_dir).rank(QUERY, PASSAGES)
    assert [r["index"] for r in json.loads(line)["results"]] == [r.index for r in expected]
