"""``bge-rerank``: rerank from the shell.

    bge-rerank query "what is a panda?" "The giant panda is a bear." "Paris is in France."
    bge-rerank rank requests.jsonl > ranked.jsonl      # {"query": ..., "passages": [...]} per line
    bge-rerank make-test-model ./tiny-reranker         # a small random model, built offline

Exit codes: 0 success, 1 the model could not be loaded, 2 bad arguments or bad input records
(the good records of a file are still written; the bad line numbers go to stderr), 141 the reader
of the output went away (``| head -1``; what the shell reports for coreutils there, 128 + SIGPIPE),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from types import UnionType
from typing import IO, Any, Literal, Union, get_args, get_origin

from bge_rerank_integrations import __version__
from bge_rerank_integrations.adapter_support import Setting, model_settings
from bge_rerank_integrations.config import RerankerConfig
from bge_rerank_integrations.errors import ModelLoadError
from bge_rerank_integrations.reranker import Reranker, check_top

__all__ = ["main"]

EXIT_OK, EXIT_LOAD_ERROR, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141

RANK_FORMAT = """\
input: JSON Lines in UTF-8, one request per line (blank lines skipped; a byte-order mark at the
start of the input is skipped):
  {"query": "...", "passages": ["...", ...], "id": ... (optional, any JSON), other fields}
output: one line per good request, in input order:
  {"line": N, "query": "...", "id": ... (if given), other fields (with --keep-fields),
   "results": [{"index": I, "score": S, "text": "..." (with --include-text)}, ...]}
  results are best first; index is the passage's position in "passages" (from 0); score is in
  0..1 (the sigmoid of the logit), or the raw logit with --raw. With --keep-fields, a request
  with a field named "line" or "results" is a bad line (rename the field to keep it).
A bad line (not UTF-8, not JSON, a missing or mistyped field, a lone surrogate such as "\\ud800")
is reported on stderr with its number and skipped; the others are still written, and the exit
code is 2."""


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars on stderr (model loading included); they show only on a terminal anyway",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-n", type=int, default=None, help="keep only the best N passages")
    parser.add_argument("--raw", action="store_true", help="raw logits instead of sigmoid scores in 0..1")
    settings = parser.add_argument_group(
        "settings", "the core's settings (bge_rerank_integrations.RerankerConfig); not given: the default"
    )
    for setting in model_settings():
        _setting_option(settings, setting)


def _setting_option(group: argparse._ArgumentGroup, setting: Setting) -> None:
    """The option of one declared setting: its flag, type, default and help all from the declaration.

    ``int``, ``float`` and ``str`` settings take a value of that type, ``bool`` ones a flag and its
    ``--no-`` form, ``Literal`` ones a name (the core checks it and accepts its aliases, such as
    ``fp16``), and tuple ones a comma-separated list (``--device cuda:0,cuda:1``).
    """
    flag = "--" + setting.name.replace("_", "-")
    args = [a for a in get_args(setting.annotation) if a is not type(None)]
    if get_origin(setting.annotation) not in (UnionType, Union):
        args = [setting.annotation]
    tuples = [get_args(a)[0] for a in args if get_origin(a) is tuple and get_args(a)[1:] == (...,)]
    options: dict[str, Any] = {"default": setting.default, "help": setting.doc.replace("%", "%%")}
    if args == [bool]:
        options["action"] = argparse.BooleanOptionalAction
    elif len(args) == 1 and get_origin(args[0]) is Literal:
        options["metavar"] = "{" + ",".join(map(str, get_args(args[0]))) + "}"
    elif len(tuples) == 1 and tuples[0] in (int, str) and len(set(args) - {tuples[0]}) == 1:
        options["type"] = _comma_list(tuples[0], single=tuples[0] in args)
        options["help"] += " Several as a comma-separated list."
    elif len(args) == 1 and args[0] in (int, float, str):
        options["type"] = args[0]
    else:
        raise TypeError(f"the CLI has no option for setting {setting.name!r} of type {setting.annotation}")
    if setting.default is not None:
        options["help"] += " (default: %(default)s)"
    group.add_argument(flag, **options)


def _comma_list(element: Callable[[str], object], *, single: bool) -> Callable[[str], object]:
    """Parse ``a,b,c`` into a tuple of ``element`` values; with ``single``, one value stays itself."""

    def parse(text: str) -> object:
        items = tuple(element(item.strip()) for item in text.split(","))
        return items[0] if single and len(items) == 1 else items

    parse.__name__ = f"comma-separated {getattr(element, '__name__', 'value')}"  # argparse's error names it
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bge-rerank",
        description="Rerank passages with bge-reranker-v2-m3.",
        epilog="It needs the model: from the Hugging Face hub (downloaded once), or a local folder given "
        "with --model. Offline: `bge-rerank make-test-model ./tiny` and --model ./tiny.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    query = commands.add_parser("query", help="rank passages given on the command line")
    query.add_argument("query")
    query.add_argument("passages", nargs="+")
    _model_options(query)
    _progress_option(query)

    rank = commands.add_parser(
        "rank",
        help="rank a JSONL file of {query, passages} records to JSONL on stdout",
        description="Rank each request of a JSON Lines file; results go to stdout as JSON Lines.",
        epilog=RANK_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rank.add_argument("file", help="JSONL file, or - for standard input")
    rank.add_argument("--include-text", action="store_true", help='add each passage\'s "text" to its result')
    rank.add_argument(
        "--keep-fields",
        action="store_true",
        help="copy every other field of a request (all but query and passages) to its output; "
        '"id" is always copied',
    )
    _model_options(rank)
    _progress_option(rank)

    build = commands.add_parser("make-test-model", help="write a small random reranker for offline tries")
    build.add_argument("folder")
    _progress_option(build)
    return parser


def _bars_wanted(args: argparse.Namespace) -> bool:
    """Progress bars are for a person watching: only when stderr is a terminal, unless turned off."""
    return not args.no_progress and sys.stderr.isatty()


@contextlib.contextmanager
def _library_bars_off() -> Iterator[None]:
    """Turn off the bars of ``transformers`` and ``huggingface_hub`` (model loading, downloads,
    writing weights) for the duration, and restore them after."""
    from huggingface_hub.utils.tqdm import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with disable_progress_bars():
            yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _reranker(args: argparse.Namespace) -> Reranker:
    check_top("top_n", args.top_n)  # before anything loads
    settings = {setting.name: getattr(args, setting.name) for setting in model_settings()}
    return Reranker.from_config(RerankerConfig(**settings, normalize=not args.raw))


def _cmd_query(args: argparse.Namespace) -> int:
    reranker = _reranker(args)
    results = reranker.rank(args.query, args.passages, top_n=args.top_n)
    for rank, result in enumerate(results, start=1):
        print(f"{rank:>3}  {result.score:9.4f}  [{result.index}] {args.passages[result.index]}")
    return EXIT_OK


def _cmd_rank(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bge_rerank_integrations.jsonl import BadRecord, count_records, parse_request, read_lines, result_line

    reranker = _reranker(args)
    # The bar only when the results go elsewhere: on the same terminal they would cut through it.
    progress = _bars_wanted(args) and not sys.stdout.isatty()
    stream: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    out: IO[bytes] = sys.stdout.buffer
    bad: list[int] = []
    with stream:
        reranker.load()  # a load error comes first and alone, before any bar or record
        total = count_records(stream) if progress else None
        with tqdm(total=total, unit="query", file=sys.stderr, disable=not progress) as bar:
            for number, raw in read_lines(stream):
                try:
                    request = parse_request(number, raw, keep_fields=args.keep_fields)
                except BadRecord as exc:
                    bar.write(f"line {number}: {exc}", file=sys.stderr)
                    bad.append(number)
                else:
                    results = reranker.rank(request.query, request.passages, top_n=args.top_n)
                    out.write(result_line(request, results, include_text=args.include_text))
                    out.flush()  # a reader downstream sees each result as soon as it is ready
                bar.update(1)
    if bad:
        print(f"{len(bad)} bad record(s), lines: {', '.join(map(str, bad))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _cmd_make_test_model(args: argparse.Namespace) -> int:
    from bge_rerank_integrations.testing import build_test_model

    print(build_test_model(args.folder))
    return EXIT_OK


def _quiet_stdout() -> None:
    """After the reader of stdout went away: send what is still buffered nowhere, without an error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured in-process)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bge-rerank`` command line; returns the exit code."""
    args = _parser().parse_args(argv)
    command = {
        "query": _cmd_query,
        "rank": _cmd_rank,
        "make-test-model": _cmd_make_test_model,
    }[args.command]
    loads_model = args.command == "make-test-model" or args.backend == "local"
    try:
        with _library_bars_off() if loads_model and not _bars_wanted(args) else contextlib.nullcontext():
            return command(args)
    except BrokenPipeError:  # `bge-rerank rank ... | head -1`: stop quietly, as coreutils do
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("bge-rerank: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModelLoadError as exc:
        print(f"bge-rerank: {exc}", file=sys.stderr)
        return EXIT_LOAD_ERROR
    except (ValueError, TypeError, OSError) as exc:
        print(f"bge-rerank: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
