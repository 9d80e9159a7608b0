"""The JSON Lines records of ``bge-rerank rank``: requests in, one result per good request out.

Input is read as bytes, one line at a time, so one bad line (broken JSON, bytes that are not
UTF-8, a lone surrogate, a missing field) is reported with its number and never costs the lines
before or after it. A UTF-8 byte-order mark at the very start of the input is skipped (editors on
Windows write one); anywhere else it is a bad line. Output is UTF-8 JSON, one object per line.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from bge_rerank_integrations.reranker import RerankResult

__all__ = [
    "OUTPUT_FIELDS",
    "BadRecord",
    "Request",
    "count_records",
    "parse_request",
    "read_lines",
    "result_line",
]

OUTPUT_FIELDS = ("line", "query", "id", "results")
"""Top-level fields of an output record (``id`` only when the input has one)."""

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class BadRecord(ValueError):
    """A line that is not a valid request; the message says what is wrong (the caller adds the line)."""


@dataclass(frozen=True)
class Request:
    """One good input record."""

    line: int
    """Its line number in the input, from 1."""
    query: str
    passages: list[str]
    fields: dict[str, Any] = field(default_factory=dict)
    """Fields carried to the output: ``id`` if present; with ``keep_fields`` all but query and passages."""


def read_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of ``stream`` with their numbers (from 1), a leading UTF-8 BOM removed."""
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if raw.strip():
            yield number, raw


def count_records(stream: IO[bytes]) -> int | None:
    """How many lines :func:`read_lines` will yield, for a regular file (then rewound); else ``None``."""
    try:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        start = stream.tell()
        total = sum(1 for _ in read_lines(stream))
        stream.seek(start)
    except (OSError, ValueError):  # no file descriptor, or not seekable after all
        return None
    return total


def parse_request(number: int, raw: bytes, *, keep_fields: bool = False) -> Request:
    """The request on line ``number``.

    Raises:
        BadRecord: the line is not UTF-8 or not JSON (``NaN``, a number beyond a double, an integer
            of more digits than Python reads, nesting too deep to parse all count as not JSON), or
            the record lacks a string ``query`` or a list of string ``passages``, or a string holds
            a lone surrogate (not valid Unicode), or (with ``keep_fields``) a field would overwrite
            ``line`` or ``results``.
    """
    text = _decode(number, raw).rstrip("\r\n")
    if text.startswith("\ufeff"):
        raise BadRecord(
            "a byte-order mark (U+FEFF) starts the line; only the input's first line may have one"
        )
    try:
        record = json.loads(
            text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float
        )
    except json.JSONDecodeError as exc:
        # Column only: the parser's own "line 1" (or "line 2" past a newline) means nothing here.
        raise BadRecord(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:  # [[[[...]]]] a thousand deep: Python's parser cannot follow it
        raise BadRecord("arrays or objects nested too deeply to read") from None
    if not isinstance(record, dict):
        raise BadRecord(f"a record must be a JSON object with 'query' and 'passages', got {_kind(record)}")
    if "query" not in record:
        raise BadRecord("'query' is missing")
    if "passages" not in record:
        raise BadRecord("'passages' is missing")
    query, passages = record["query"], record["passages"]
    if not isinstance(query, str):
        raise BadRecord(f"'query' must be a string, got {_kind(query)}")
    if not isinstance(passages, list):
        raise BadRecord(f"'passages' must be a list of strings, got {_kind(passages)}")
    for index, passage in enumerate(passages):
        if not isinstance(passage, str):
            raise BadRecord(f"passages[{index}] must be a string, got {_kind(passage)}")
    _check_unicode("'query'", query)
    for index, passage in enumerate(passages):
        _check_unicode(f"passages[{index}]", passage)
    carried = {
        name: value
        for name, value in record.items()
        if name == "id" or (keep_fields and name not in ("query", "passages"))
    }
    clash = sorted(carried.keys() & {"line", "results"})
    if clash:
        raise BadRecord(f"field {clash[0]!r} has the name of an output field: rename it to keep it")
    for name, value in carried.items():
        _check_unicode(f"field {name!r}", name)
        _check_unicode(f"field {name!r}", value)
    return Request(line=number, query=query, passages=passages, fields=carried)


def result_line(request: Request, results: Sequence[RerankResult], *, include_text: bool = False) -> bytes:
    """The output record of ``request``, as one UTF-8 line (newline included)."""
    out: dict[str, Any] = {"line": request.line, "query": request.query, **request.fields}
    out["results"] = [
        {"index": r.index, "score": r.score, "text": request.passages[r.index]}
        if include_text
        else {"index": r.index, "score": r.score}
        for r in results
    ]
    return json.dumps(out, ensure_ascii=False).encode("utf-8") + b"\n"


def _decode(number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if number == 1 and raw.startswith(_UTF16_BOMS):
            raise BadRecord(
                "the input is UTF-16 (it starts with a UTF-16 byte-order mark): convert it to UTF-8"
            ) from None
        byte = raw[exc.start]
        raise BadRecord(f"not valid UTF-8: byte 0x{byte:02x} at byte {exc.start + 1} of the line") from None


def _check_unicode(where: str, value: Any) -> None:
    """Refuse a lone surrogate (JSON's ``"\\ud800"``) anywhere in ``value``: UTF-8 cannot hold one.

    A walk with a list rather than recursion: a value nested as deep as the parser allows must not
    exhaust Python's stack here.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            for position, char in enumerate(item, start=1):
                if "\ud800" <= char <= "\udfff":
                    raise BadRecord(
                        f"{where} holds a lone surrogate (\\u{ord(char):04x}, character {position}), "
                        "which is not valid Unicode"
                    )
        elif isinstance(item, dict):
            for key, member in item.items():
                pending += (key, member)
        elif isinstance(item, list):
            pending += item


def _reject_constant(name: str) -> Any:
    raise BadRecord(f"not valid JSON: {name} is not a JSON number")


def _parse_int(digits: str) -> int:
    """A JSON integer; one longer than Python converts (4300 digits by default) is a bad record."""
    try:
        return int(digits)
    except ValueError:
        raise BadRecord(
            f"a number of {len(digits.lstrip('-'))} digits is longer than can be read "
            f"(at most {sys.get_int_max_str_digits()})"
        ) from None


def _parse_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one beyond a double's range (``1e400``) is a bad record.

    Read as infinity it would come out as ``Infinity``, which is not JSON.
    """
    value = float(text)
    if math.isinf(value):
        raise BadRecord(f"the number {text:.40} is too large for a double")
    return value


def _kind(value: object) -> str:
    """The JSON name of ``value``'s type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    kinds: list[tuple[type, str]] = [(str, "a string"), (int, "a number"), (float, "a number")]
    kinds += [(list, "an array"), (dict, "an object")]
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)
