"""The ``bge-rerank`` command line: ranked output, JSONL in and out, clear exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shlex
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch

import bge_rerank_integrations
from bge_rerank_integrations import Reranker, RerankerConfig
from bge_rerank_integrations.backends.local import available_devices
from bge_rerank_integrations.cli import main
from bge_rerank_integrations.config import setting_doc
from tests.processes import CLI, child_env, fake_hub, online_env

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
        [*CLI, "query", "q", "p", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=child_env(),
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


def test_list_settings_take_comma_lists_and_bad_values_are_named(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["query", QUERY, "p", "--model", str(model_dir)]
    with pytest.raises(SystemExit) as info:  # argparse's own usage error, as for --max-length x
        main([*args, "--cutoff-layers", "8,x"])
    assert info.value.code == 2
    assert "argument --cutoff-layers: invalid comma-separated int value: '8,x'" in capsys.readouterr().err
    assert main([*args, "--dtype", "int3"]) == 2  # checked by the core, which names what it takes
    assert "dtype must be one of" in capsys.readouterr().err
    assert main([*args, "--long-passages", "all"]) == 2
    assert "long_passages must be 'truncate' or 'window', got 'all'" in capsys.readouterr().err


def test_a_remote_backend_without_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", QUERY, "p", "--backend", "tei"]) == 2
    assert "backend='tei' needs base_url" in capsys.readouterr().err


def test_rank_reads_standard_input(model_dir: Path) -> None:
    record = json.dumps({"query": QUERY, "passages": PASSAGES})
    result = subprocess.run(
        [*CLI, "rank", "-", "--model", str(model_dir), "--raw"],
        input=record + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    expected = Reranker(model_dir).rank(QUERY, PASSAGES)
    assert [r["index"] for r in json.loads(line)["results"]] == [r.index for r in expected]


def _record(query: str, passages: list[str], **fields: object) -> bytes:
    return json.dumps({"query": query, "passages": passages, **fields}).encode() + b"\n"


def _expected(model_dir: Path, query: str, passages: list[str], **kwargs: object) -> list[dict[str, object]]:
    results = Reranker.shared(model_dir).rank(query, passages, normalize=True, **kwargs)  # type: ignore[arg-type]
    return [{"index": r.index, "score": r.score} for r in results]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_one_bad_line_never_costs_the_good_ones(model_dir: Path, tmp_path: Path, source: str) -> None:
    good = {  # line number -> (query, passages)
        1: ("a byte-order mark starts the input", PASSAGES),
        3: ("after invalid UTF-8", PASSAGES[::-1]),
        5: ("after a lone surrogate", PASSAGES[:2]),
        7: ("after a byte-order mark inside", PASSAGES),
        9: ("after broken JSON", PASSAGES[1:]),
    }
    lines = {number: _record(*request) for number, request in good.items()}
    lines[1] = b"\xef\xbb\xbf" + lines[1]  # a BOM at the very start of the input: accepted
    lines[2] = b'{"query": "caf\xe9", "passages": ["latin-1, not UTF-8"]}\n'
    lines[4] = b'{"query": "\\ud800", "passages": ["a lone surrogate"]}\n'
    lines[6] = b"\xef\xbb\xbf" + _record("a BOM in the middle (two files concatenated)", PASSAGES)
    lines[8] = b'{"query": "cut short", "passages": [\n'
    data = b"".join(lines[n] for n in sorted(lines))
    path = tmp_path / "requests.jsonl"
    path.write_bytes(data)
    args = [*CLI, "rank", "-" if source == "stdin" else str(path), "--model", str(model_dir)]
    result = subprocess.run(
        args, input=data if source == "stdin" else None, capture_output=True, env=child_env(), timeout=120
    )
    assert result.returncode == 2, result.stderr
    records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [r["line"] for r in records] == sorted(good)
    for record in records:
        query, passages = good[record["line"]]
        assert record["query"] == query
        expected = _expected(model_dir, query, passages)
        assert [r["index"] for r in record["results"]] == [r["index"] for r in expected]
        assert [r["score"] for r in record["results"]] == pytest.approx([r["score"] for r in expected])
    err = result.stderr.decode("utf-8").splitlines()
    assert err == [
        "line 2: not valid UTF-8: byte 0xe9 at byte 15 of the line",
        "line 4: 'query' holds a lone surrogate (\\ud800, character 1), which is not valid Unicode",
        "line 6: a byte-order mark (U+FEFF) starts the line; only the input's first line may have one",
        "line 8: not valid JSON: Expecting value at column 37",
        "4 bad record(s), lines: 2, 4, 6, 8",
    ]


def test_a_line_beyond_what_json_can_hold_is_one_bad_record(model_dir: Path, tmp_path: Path) -> None:
    # Each of these once ended the whole run (a traceback, or "exceeds the limit ... digits") or
    # wrote "Infinity", which is not JSON, into the output.
    deep = 100_000
    bad = {
        2: b'{"query": "q", "passages": ["p"], "id": ' + b"[" * deep + b"]" * deep + b"}\n",
        4: b'{"query": "q", "passages": ["p"], "id": ' + b"9" * 5000 + b"}\n",
        6: b'{"query": "q", "passages": ["p"], "id": 1e400}\n',
        8: b'{"query": "q", "passages": ["p"], "score": -2.5E999}\n',  # even in a field not carried
    }
    nested: object = "x"
    for _ in range(900):  # as deep as the parser reads: carried and written back whole
        nested = [nested]
    good = {n: _record(f"query {n}", PASSAGES, id=nested if n == 7 else n) for n in (1, 3, 5, 7, 9)}
    source = tmp_path / "requests.jsonl"
    source.write_bytes(b"".join({**good, **bad}[n] for n in sorted({**good, **bad})))
    result = subprocess.run(
        [*CLI, "rank", str(source), "--model", str(model_dir)],
        capture_output=True,
        env=child_env(),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [r["line"] for r in records] == sorted(good)
    assert records[3]["id"] == nested
    for record in records:
        expected = _expected(model_dir, record["query"], PASSAGES)
        assert [r["index"] for r in record["results"]] == [r["index"] for r in expected]
        assert [r["score"] for r in record["results"]] == pytest.approx([r["score"] for r in expected])
    assert result.stderr.decode("utf-8").splitlines() == [
        "line 2: arrays or objects nested too deeply to read",
        "line 4: a number of 5000 digits is longer than can be read (at most 4300)",
        "line 6: the number 1e400 is too large for a double",
        "line 8: the number -2.5E999 is too large for a double",
        "4 bad record(s), lines: 2, 4, 6, 8",
    ]


def test_messages_say_what_is_wrong(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [
        '{"query": "q"}',
        '{"passages": ["p"]}',
        '{"query": 3, "passages": ["p"]}',
        '{"query": "q", "passages": "p"}',
        '{"query": "q", "passages": ["a", "b", 7]}',
        '{"query": "q", "passages": ["a", null]}',
        '{"query": "q" "passages": ["p"]}',
        '["q", ["p"]]',
        '{"query": "q", "passages": [NaN]}',
    ]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(bad) + "\n")
    assert main(["rank", str(source), "--model", str(model_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "line 1: 'passages' is missing",
        "line 2: 'query' is missing",
        "line 3: 'query' must be a string, got a number",
        "line 4: 'passages' must be a list of strings, got a string",
        "line 5: passages[2] must be a string, got a number",
        "line 6: passages[1] must be a string, got null",
        "line 7: not valid JSON: Expecting ',' delimiter at column 15",
        "line 8: a record must be a JSON object with 'query' and 'passages', got an array",
        "line 9: not valid JSON: NaN is not a JSON number",
        "9 bad record(s), lines: 1, 2, 3, 4, 5, 6, 7, 8, 9",
    ]


def test_output_carries_the_text_and_the_other_fields_when_asked(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "requests.jsonl"
    meta = {"source": "wiki", "tags": ["geo", "ünïcode"], "nested": {"n": 1.5, "ok": None}}
    source.write_bytes(
        _record(QUERY, PASSAGES, id="q-1", meta=meta, rank_by="me")
        + _record(QUERY, PASSAGES, results="a field named like an output field")
    )
    args = ["rank", str(source), "--model", str(model_dir), "--top-n", "2"]

    assert main(args) == 0  # without --keep-fields nothing but the id is carried
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    best = _expected(model_dir, QUERY, PASSAGES, top_n=2)
    assert plain == [
        {"line": 1, "query": QUERY, "id": "q-1", "results": best},
        {"line": 2, "query": QUERY, "results": best},
    ]

    assert main([*args, "--include-text", "--keep-fields"]) == 2
    captured = capsys.readouterr()
    (full,) = (json.loads(line) for line in captured.out.splitlines())
    expected = [
        {**r, "text": PASSAGES[int(r["index"])]} for r in _expected(model_dir, QUERY, PASSAGES, top_n=2)
    ]
    assert full == {
        "line": 1,
        "query": QUERY,
        "id": "q-1",
        "meta": meta,
        "rank_by": "me",
        "results": expected,
    }
    assert list(full) == ["line", "query", "id", "meta", "rank_by", "results"]
    assert "line 2: field 'results' has the name of an output field: rename it to keep it" in captured.err


def test_a_reader_that_stops_early_ends_the_run_quietly(model_dir: Path, tmp_path: Path) -> None:
    # Far more output than a pipe holds, so the writes after `head` has gone must fail.
    source = tmp_path / "many.jsonl"
    passages = [f"passage {i}: " + "words of a passage " * 20 for i in range(10)]
    source.write_bytes(b"".join(_record(f"query {i}", passages) for i in range(300)))
    command = shlex.join([*CLI, "rank", str(source), "--model", str(model_dir), "--include-text"])
    result = subprocess.run(
        ["bash", "-c", f"{command} 2>{tmp_path / 'err'} | head -1; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        env=child_env(),
        timeout=300,
    )
    assert (tmp_path / "err").read_text() == ""  # no "[Errno 32] Broken pipe", no traceback
    assert result.returncode == 141  # what the shell reports for coreutils there (128 + SIGPIPE)
    (line,) = result.stdout.decode().splitlines()
    assert json.loads(line)["line"] == 1


def _on_a_terminal(args: list[str]) -> tuple[int, list[str], bytes]:
    """Run the CLI with stderr on a pseudo-terminal of 100 columns and stdout on a pipe.

    Returns the exit code, stderr's lines as the terminal shows them (each carriage return
    overwrites the start of its line), and stdout.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(
        [*CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=child_env()
    ) as process:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.stdout is not None
        out = process.stdout.read()
    os.close(master)
    shown = []
    for raw in b"".join(chunks).decode("utf-8").replace("\r\n", "\n").split("\n"):
        line = ""
        for part in raw.split("\r"):
            line = part + line[len(part) :]
        shown.append(line.rstrip())
    return process.returncode, [line for line in shown if line], out


def test_the_progress_bar_counts_to_the_file_total_and_leaves_no_fragment(
    model_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_bytes(
        _record(QUERY, PASSAGES) + b"{broken\n\n" + _record("Berlin", PASSAGES) + _record("x", [])
    )
    code, shown, out = _on_a_terminal(["rank", str(source), "--model", str(model_dir)])
    assert code == 2
    assert len(out.splitlines()) == 3
    bar = re.compile(r"^(Loading weights: +)?\d+%\|[^|]*\| \d+/\d+ \[.*\]$")
    messages = ["line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2"]
    messages.append("1 bad record(s), lines: 2")
    assert [line for line in shown if not bar.match(line)] == messages  # every other line is a whole bar
    assert shown[-2].startswith("100%|")
    assert " 4/4 [" in shown[-2]  # the total: the file's 4 records


def test_no_progress_silences_every_bar(model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_bytes(_record(QUERY, PASSAGES))
    code, shown, out = _on_a_terminal(["rank", str(source), "--model", str(model_dir), "--no-progress"])
    assert code == 0
    assert len(out.splitlines()) == 1
    assert shown == []  # not even the model-loading bar of transformers
    code, shown, _ = _on_a_terminal(["query", QUERY, *PASSAGES, "--model", str(model_dir), "--no-progress"])
    assert (code, shown) == (0, [])


def test_version() -> None:
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, env=child_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"bge-rerank {bge_rerank_integrations.__version__}"


def test_bench_is_gone_and_nothing_is_imported_from_the_working_folder(tmp_path: Path) -> None:
    # A folder with a benchmarks package (as a checkout, or anything else, may have): never run.
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    marker = tmp_path / "imported"
    (tmp_path / "benchmarks" / "run.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef main(args): return 0\n"
    )
    # -P: no working folder on sys.path, as for the installed `bge-rerank` script
    result = subprocess.run(
        [sys.executable, "-P", "-m", "bge_rerank_integrations", "bench"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
    )
    assert result.returncode == 2
    assert "invalid choice: 'bench'" in result.stderr
    assert not marker.exists()


def test_help_shows_the_cores_defaults_and_the_record_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["rank", "--help"])
    assert info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    defaults = RerankerConfig()
    for shown in [
        f"{setting_doc('max_batch_tokens')} (default: {defaults.max_batch_tokens})",  # never stale
        f"(default: {defaults.max_length})",
        f"(default: {defaults.model})",
        '"results": [{"index": I, "score": S, "text": "..." (with --include-text)}, ...]',
        "--local-files-only",
        'a field named "line" or "results" is a bad line',
    ]:
        assert "".join(shown.split()) in text, shown


def test_local_files_only_never_asks_the_hub(tmp_path: Path) -> None:
    with fake_hub(404) as hub:
        result = subprocess.run(
            [*CLI, "query", "q", "p", "--model", "some-org/some-reranker", "--local-files-only"],
            capture_output=True,
            text=True,
            env=online_env(hub, tmp_path / "cache"),
        )
    assert result.returncode == 1, result.stderr
    assert "it is not in the local Hugging Face cache" in result.stderr
    assert hub.requests == []


def test_a_mistyped_model_folder_is_named_at_once(model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "tiny")
    with fake_hub(404) as hub:
        result = subprocess.run(
            [*CLI, "query", "q", "p", "--model", "tiyn"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=online_env(hub, tmp_path / "cache"),
        )
    assert result.returncode == 1
    assert "Did you mean './tiny'?" in result.stderr
    assert hub.requests == []


def test_an_impossible_device_is_one_line_not_a_traceback(model_dir: Path) -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    result = subprocess.run(
        [*CLI, "query", "q", "p", "--model", str(model_dir), "--device", missing],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bge-rerank: device {missing!r} is not available on this machine")
    assert line.endswith("available: " + ", ".join(available_devices()))
