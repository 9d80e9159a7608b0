"""``bge-rerank``: rerank from the shell.

    bge-rerank query "what is a panda?" "The giant panda is a bear." "Paris is in France."
    bge-rerank rank requests.jsonl > ranked.jsonl      # {"query": ..., "passages": [...]} per line
    bge-rerank make-test-model ./tiny-reranker         # a small random model, built offline

Exit codes: 0 success, 1 the model could not be loaded, 2 bad arguments or bad input records
(the good records of a file are still written; the bad line numbers go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

from bge_rerank_integrations.config import BACKENDS, DEFAULT_MODEL
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.reranker import Reranker

__all__ = ["main"]

EXIT_OK, EXIT_LOAD_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model id or local folder (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cuda, cuda:1, mps or cpu (default: the best available); cuda:0,cuda:1 runs a replica on each",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (fp16 on CUDA, fp32 elsewhere), float32, float16, bfloat16, int8 (CPU only)",
    )
    parser.add_argument("--max-length", type=int, default=512, help="tokens per (query, passage) pair")
    parser.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    parser.add_argument("--top-n", type=int, default=None, help="keep only the best N passages")
    parser.add_argument("--raw", action="store_true", help="raw logits instead of sigmoid scores in 0..1")
    parser.add_argument(
        "--long-passages",
        choices=["truncate", "window"],
        default="truncate",
        help="window: score overlapping windows of long passages and keep the best (slower)",
    )
    parser.add_argument("--backend", choices=list(BACKENDS), default="local", help="where to score")
    parser.add_argument("--base-url", default=None, help="serving engine URL (remote backends)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the API key")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-rerank", description="Rerank passages with bge-reranker-v2-m3."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    query = commands.add_parser("query", help="rank passages given on the command line")
    query.add_argument("query")
    query.add_argument("passages", nargs="+")
    _model_options(query)

    rank = commands.add_parser(
        "rank", help="rank a JSONL file of {query, passages} records to JSONL on stdout"
    )
    rank.add_argument("file", help="JSONL file, or - for standard input")
    rank.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _model_options(rank)

    build = commands.add_parser("make-test-model", help="write a small random reranker for offline tries")
    build.add_argument("folder")

    # Listed for --help only: main() hands everything after "bench" to the suite's own parser.
    commands.add_parser(
        "bench",
        help="run the CPU benchmark against FlagReranker and CrossEncoder (from a source checkout); "
        "`bge-rerank bench --help` lists its options",
    )
    return parser


def _reranker(args: argparse.Namespace) -> Reranker:
    device = args.device.split(",") if args.device and "," in args.device else args.device
    return Reranker(
        args.model,
        device=device,
        dtype=args.dtype,
        max_length=args.max_length,
        max_batch_tokens=args.max_batch_tokens,
        normalize=not args.raw,
        long_passages=args.long_passages,
        backend=args.backend,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
    )


def _cmd_query(args: argparse.Namespace) -> int:
    results = _reranker(args).rank(args.query, args.passages, top_n=args.top_n)
    for rank, result in enumerate(results, start=1):
        print(f"{rank:>3}  {result.score:9.4f}  [{result.index}] {args.passages[result.index]}")
    return EXIT_OK


def _records(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


def _parse_record(line: str) -> tuple[str, list[str], Any]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("a record must be a JSON object with 'query' and 'passages'")
    query, passages = record.get("query"), record.get("passages")
    if not isinstance(query, str):
        raise ValueError("'query' must be a string")
    if not isinstance(passages, list) or not all(isinstance(p, str) for p in passages):
        raise ValueError("'passages' must be a list of strings")
    return query, passages, record.get("id")


def _cmd_rank(args: argparse.Namespace) -> int:
    reranker = _reranker(args)
    stream: IO[str] = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    bad: list[int] = []
    with stream:
        records: Iterator[tuple[int, str]] = _records(stream)
        if not args.no_progress and sys.stderr.isatty():
            from tqdm import tqdm

            records = tqdm(records, unit="query", file=sys.stderr)
        for number, line in records:
            try:
                query, passages, record_id = _parse_record(line)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                print(f"line {number}: {exc}", file=sys.stderr)
                bad.append(number)
                continue
            results = reranker.rank(query, passages, top_n=args.top_n)
            out: dict[str, Any] = {"line": number, "query": query}
            if record_id is not None:
                out["id"] = record_id
            out["results"] = [{"index": r.index, "score": r.score} for r in results]
            print(json.dumps(out, ensure_ascii=False), flush=False)
    if bad:
        print(f"{len(bad)} bad record(s), lines: {', '.join(map(str, bad))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _cmd_make_test_model(args: argparse.Namespace) -> int:
    from bge_rerank_integrations.testing import build_test_model

    print(build_test_model(args.folder))
    return EXIT_OK


def _bench(suite_args: list[str]) -> int:
    if os.getcwd() not in sys.path:  # the console script's path starts at its own folder
        sys.path.insert(0, os.getcwd())
    try:
        from benchmarks.run import main as run_suite
    except ImportError:
        print(
            "bge-rerank bench runs the suite in benchmarks/ of a source checkout: clone the repository, "
            'run `pip install -e ".[dev]"` and call it from the checkout\'s root',
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if not any(a.startswith("--device") for a in suite_args):
        suite_args += ["--device", "cpu"]
    return run_suite(suite_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bge-rerank`` command line; returns the exit code."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["bench"]:
        return _bench(given[1:])
    args = _parser().parse_args(given)
    command = {
        "query": _cmd_query,
        "rank": _cmd_rank,
        "make-test-model": _cmd_make_test_model,
    }[args.command]
    try:
        return command(args)
    except ModelLoadError as exc:
        print(f"bge-rerank: {exc}", file=sys.stderr)
        return EXIT_LOAD_ERROR
    except (ValueError, TypeError, OSError) as exc:
        print(f"bge-rerank: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
