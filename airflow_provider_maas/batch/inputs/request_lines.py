"""What one request line must be: strict JSON (no NaN, duplicate keys or lone surrogates), the documented
shape, and the service's per-file limits.

An input line is ``{"request": {"contents": [...], ...}}``.
"""

from __future__ import annotations

import json
import math
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.batch.inputs.lines import iter_line_batches

# the service's limits per file, defined with the one table of bounds; still importable from here
from airflow_provider_maas.batch.int_settings import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE  # noqa: F401
from airflow_provider_maas.exceptions import MaaSInputError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


LINE_SHAPE = 'each line must be a JSON object like {"request": {"contents": [...]}}'
CONTENT_SHAPE = '{"role": "user", "parts": [{"text": "..."}]}'
PART_SHAPE = '{"text": "..."} or {"file_data": {"file_uri": "gs://...", "mime_type": "image/jpeg"}}'
_JSON_KINDS = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", type(None): "null"}


class _Refused(ValueError):
    """JSON that Python parses but the service may reject: NaN/Infinity, a repeated key, a lone surrogate."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON (the service rejects it); write null or a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON syntax, but no double holds it
        raise _Refused(f"the number {text[:40]} is out of range (it overflows to infinity); the service rejects it")
    return value


def _lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds an unpaired UTF-16 surrogate (from a ``\\uD800``-``\\uDFFF`` escape
    without its pair; the parser joins a valid pair). Call it for non-ASCII text only."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_error(text: str) -> _Refused:
    return _Refused(
        f"the string {text[:40]!r} holds a \\u escape of a lone UTF-16 surrogate (\\uD800-\\uDFFF "
        "without its pair), which is not valid Unicode; fix or remove that character"
    )


def _check_value(value: Any) -> None:
    """Refuse a lone surrogate in a string value or in the strings of an array (nested arrays too)."""
    kind = type(value)
    if kind is str:
        if not value.isascii() and _lone_surrogate(value):
            raise _surrogate_error(value)
    elif kind is list:
        for item in value:
            _check_value(item)


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build one JSON object, refusing repeated keys and lone surrogates (in its keys, its string
    values and the strings of its arrays; nested objects are checked when they are built).

    Called by the C parser for every object of every line: keep it lean (``isascii`` is O(1)).
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the key {key!r} appears twice in one object; keep one")
            seen.add(key)
    for key, value in pairs:
        if not key.isascii() and _lone_surrogate(key):
            raise _surrogate_error(key)
        _check_value(value)
    return obj


#: Strict JSON: NaN, Infinity, repeated keys and lone surrogates are refused (Python's json
#: accepts them, the service may not).
_DECODER = json.JSONDecoder(object_pairs_hook=_strict_object, parse_constant=_no_constant, parse_float=_finite_float)
# The C scanner behind it: scan(text, index) -> (value, end). Skips decode's Python wrapper.
scan_json: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


class RequestLine(NamedTuple):
    """One valid input line: ``raw`` is its bytes ending with ``b"\\n"``; ``request`` is its ``"request"`` object."""

    line_number: int
    raw: bytes
    request: dict[str, Any]


def line_error(line_number: int, message: str) -> MaaSInputError:
    return MaaSInputError(f"line {line_number}: {message}", line_number=line_number)


def size_text(size: int) -> str:
    """``size`` in bytes, with MiB from 1 MiB on."""
    if size < 1024 * 1024:
        return f"{size} bytes"
    return f"{size} bytes ({size / (1024 * 1024):.1f} MiB)"


def line_too_long(max_bytes: int) -> Callable[[int, int], MaaSInputError]:
    """``too_long(line_number, bytes_read)``: the error for a line over ``max_bytes`` with its newline."""

    def make(line_number: int, size: int) -> MaaSInputError:
        return line_error(
            line_number,
            f"is at least {size + 1} bytes with its newline, over the limit of {size_text(max_bytes)} per upload file;"
            " make this request smaller (e.g. refer to big media with file_data URIs, not inline data)",
        )

    return make


def validate_request_line(line: bytes, line_number: int) -> dict[str, Any]:
    """Check one input line and return it parsed (the whole line object, with its ``"request"``).

    :param line: The line's bytes (a trailing newline is allowed).
    :raises MaaSInputError: naming the line: not UTF-8, not JSON, not an object, no ``request``
        object, or ``request.contents`` not in the documented shape (:func:`contents_problem`).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise line_error(
            line_number,
            f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at offset {exc.start} of the line); save the file as UTF-8",
        ) from None
    try:
        try:  # the usual line: the scanner alone (decode() adds whitespace skipping and its checks)
            obj, end = scan_json(text, 0)
            if end != len(text):
                raise ValueError
        except (ValueError, StopIteration):  # anything else: decode() again, for its error message
            obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        if text.startswith("\ufeff"):
            message = "starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM"
        elif isinstance(exc, _Refused):
            message = f"{exc}; {LINE_SHAPE}"
        elif "integer string conversion" in str(exc):  # Python's int limit (4300 digits), not the user's to lift
            message = f"holds a number with more digits than any field can take; write it as a string; {LINE_SHAPE}"
        elif isinstance(exc, json.JSONDecodeError):
            message = f"not valid JSON: {exc.msg} (column {exc.colno}); {LINE_SHAPE}, one per line"
        else:
            message = f"not valid JSON: {exc}; {LINE_SHAPE}, one per line"
        raise line_error(line_number, message) from None
    if type(obj) is not dict:
        raise line_error(line_number, f"is a JSON {type(obj).__name__}, not an object; {LINE_SHAPE}")
    request = obj.get("request")
    if type(request) is not dict:
        what = 'missing "request"' if request is None else '"request" must be a JSON object'
        raise line_error(line_number, f"{what}; {LINE_SHAPE}")
    problem = contents_problem(request.get("contents"))
    if problem is not None:
        raise line_error(line_number, problem)
    return obj


def contents_problem(contents: Any) -> str | None:
    """What the service would refuse in ``request.contents``, or None if it has the documented shape:
    a non-empty list of content objects, each with a non-empty ``parts`` list of part objects
    (``{"role": "user", "parts": [{"text": ...}, {"file_data": {...}}]}``). What a content or part
    holds besides is the service's to judge."""
    if type(contents) is not list or not contents:
        return f'"request.contents" must be a non-empty list; {LINE_SHAPE}'
    for i, content in enumerate(contents):
        if type(content) is not dict:
            return f'"request.contents[{i}]" is a JSON {_kind(content)}; each content must be an object like {CONTENT_SHAPE}'
        parts = content.get("parts")
        if type(parts) is not list or not parts:
            what = 'has no "parts"' if parts is None else '"parts" must be a non-empty list'
            return f'"request.contents[{i}]" {what}; each content must be an object like {CONTENT_SHAPE}'
        for j, part in enumerate(parts):
            if type(part) is not dict:
                return (
                    f'"request.contents[{i}].parts[{j}]" is a JSON {_kind(part)}; each part must be an object '
                    f"like {PART_SHAPE}"
                )
    return None


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), "value")


def iter_request_lines(fileobj: IO[bytes], *, max_bytes: int | None = None) -> Iterator[RequestLine]:
    """Stream the valid lines of an input file, checking each (no count limit here).

    Blank lines are skipped (still counted in line numbers). A line that could not be uploaded
    (over ``max_bytes`` with its newline, default :data:`MAX_BYTES_PER_FILE`) is refused as soon as
    that many bytes of it are read: memory stays within ``max_bytes`` plus one read chunk, whatever
    the file holds (a multi-GB file without a newline included).

    :raises MaaSInputError: at the first bad line (see :func:`validate_request_line`) or line too long.
    """
    limit = max_bytes or MAX_BYTES_PER_FILE
    too_long = line_too_long(limit)
    line_number = 0
    for lines, _ in iter_line_batches(fileobj, max_line_bytes=limit, too_long=too_long):
        for line in lines:
            line_number += 1
            if len(line) >= limit:
                raise too_long(line_number, len(line))
            if line and not line.isspace():
                obj = validate_request_line(line, line_number)
                yield RequestLine(line_number, line + b"\n", obj["request"])
