"""Validate and split JSONL request files for the MaaS batch API.

An input line is ``{"request": {"contents": [...], ...}}``. The vendor allows at most
:data:`MAX_REQUESTS_PER_FILE` lines and :data:`MAX_BYTES_PER_FILE` bytes per uploaded file, so big
inputs are split into shards.

Bytes that get uploaded: each non-blank line, with exactly one ``b"\\n"`` after it. Blank
(whitespace-only) lines are skipped but still counted in line numbers, and a missing final newline
is added. A UTF-8 byte order mark is an error (not stripped): the service would see it in the
uploaded bytes, so the user is told to save the file without it.

Splitting is two passes, so nothing is written unless the whole input is valid:
:func:`plan_shards` reads everything once (each line parsed once with ``json.loads``) and returns a
small :class:`ShardPlan` per shard; :func:`copy_shard` then copies each shard's bytes (a raw byte
range when the shard is "clean", line by line otherwise). :func:`iter_shards` does both. Memory
stays flat: files are read in 8 MiB chunks and one plan record is kept per shard.

All functions take binary file objects (local files, fsspec / ``ObjectStoragePath`` files).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.results import iter_line_batches, normalise_request, request_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "MAX_BYTES_PER_FILE",
    "MAX_REQUESTS_PER_FILE",
    "SHARD_PREFIX",
    "FileStats",
    "RequestLine",
    "Shard",
    "ShardPlan",
    "copy_shard",
    "iter_request_lines",
    "iter_shards",
    "normalise_request",
    "plan_shards",
    "request_key",
    "shard_name",
    "validate_file",
    "validate_request_line",
]

MAX_REQUESTS_PER_FILE = 100
"""Most requests (lines) one uploaded file may hold."""
MAX_BYTES_PER_FILE = 50 * 1024 * 1024
"""Most bytes one uploaded file may hold: the vendor's "50 MB", read as MiB like the emulator."""

_SHAPE = 'each line must be a JSON object like {"request": {"contents": [...]}}'
_SPLIT = "split it with MaaSSplitRequestsOperator"
_COPY_CHUNK = 1024 * 1024


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
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


class RequestLine(NamedTuple):
    """One valid input line: ``raw`` is its bytes ending with ``b"\\n"``; ``request`` is its ``"request"`` object."""

    line_number: int
    raw: bytes
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FileStats:
    """What :func:`validate_file` found.

    :param bytes: Size of the bytes to upload (the non-blank lines, each ending with a newline).
    :param sha256: Hex SHA-256 of those bytes.
    :param clean: True if the file's bytes are exactly those bytes (no blank line, final newline
        present), so the file itself can be uploaded as it is.
    """

    requests: int
    bytes: int
    sha256: str
    clean: bool = True


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """One shard of an input file, as :func:`plan_shards` planned it.

    :param index: 0-based shard number.
    :param first_line: 1-based line number of the shard's first request; ``last_line`` of its last.
    :param start_offset: Byte offset of the first request in the input; ``end_offset`` is just past
        the last request (past its newline, if it has one).
    :param requests: Number of requests in the shard.
    :param bytes: Size of the shard as uploaded; ``sha256`` (hex) of those bytes.
    :param clean: True if ``input[start_offset:end_offset]`` is exactly the shard (no blank lines
        inside, final newline present), so it can be copied as one byte range.
    """

    index: int
    first_line: int
    last_line: int
    start_offset: int
    end_offset: int
    requests: int
    bytes: int
    sha256: str
    clean: bool


class Shard(NamedTuple):
    """A planned shard and its bytes (at most ``max_bytes``), as :func:`iter_shards` yields them."""

    plan: ShardPlan
    data: bytes


def _size(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size} bytes"
    return f"{size} bytes ({size / (1024 * 1024):.1f} MiB)"


def _fail(line_number: int, message: str) -> MaaSInputError:
    return MaaSInputError(f"line {line_number}: {message}", line_number=line_number)


def validate_request_line(line: bytes, line_number: int) -> dict[str, Any]:
    """Check one input line and return it parsed (the whole line object, with its ``"request"``).

    :param line: The line's bytes (a trailing newline is allowed).
    :raises MaaSInputError: naming the line: not UTF-8, not JSON, not an object, no ``request``
        object, or ``request.contents`` not a non-empty list.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(
            line_number,
            f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at offset {exc.start} of the line); save the file as UTF-8",
        ) from None
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        if text.startswith("\ufeff"):
            message = "starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM"
        elif isinstance(exc, _Refused):
            message = f"{exc}; {_SHAPE}"
        elif isinstance(exc, json.JSONDecodeError):
            message = f"not valid JSON: {exc.msg} (column {exc.colno}); {_SHAPE}, one per line"
        else:
            message = f"not valid JSON: {exc}; {_SHAPE}, one per line"
        raise _fail(line_number, message) from None
    if type(obj) is not dict:
        raise _fail(line_number, f"is a JSON {type(obj).__name__}, not an object; {_SHAPE}")
    request = obj.get("request")
    if type(request) is not dict:
        what = 'missing "request"' if request is None else '"request" must be a JSON object'
        raise _fail(line_number, f"{what}; {_SHAPE}")
    contents = request.get("contents")
    if type(contents) is not list or not contents:
        raise _fail(line_number, f'"request.contents" must be a non-empty list; {_SHAPE}')
    return obj


def iter_request_lines(fileobj: IO[bytes]) -> Iterator[RequestLine]:
    """Stream the valid lines of an input file, checking each (no count or size limit here).

    Blank lines are skipped (still counted in line numbers).

    :raises MaaSInputError: at the first bad line (see :func:`validate_request_line`).
    """
    line_number = 0
    for lines, _ in iter_line_batches(fileobj):
        for line in lines:
            line_number += 1
            if line and not line.isspace():
                obj = validate_request_line(line, line_number)
                yield RequestLine(line_number, line + b"\n", obj["request"])


def _check_limits(max_requests: int, max_bytes: int) -> None:
    if max_requests < 1 or max_bytes < 2:
        raise ValueError(f"max_requests ({max_requests}) must be >= 1 and max_bytes ({max_bytes}) >= 2")


def _line_too_long(max_bytes: int) -> Any:
    def make(line_number: int, size: int) -> MaaSInputError:
        return _fail(
            line_number,
            f"is at least {size + 1} bytes with its newline, over the limit of {_size(max_bytes)} per upload file;"
            " make this request smaller (e.g. refer to big media with file_data URIs, not inline data)",
        )

    return make


def _scan(fileobj: IO[bytes], max_requests: int, max_bytes: int, single: bool) -> tuple[list[ShardPlan], int]:
    """Validate every line and plan shards; return the plans and the input's size.

    With ``single``, going over a limit raises instead of starting a new shard (and stops reading).
    """
    _check_limits(max_requests, max_bytes)
    plans: list[ShardPlan] = []
    line_number = offset = 0
    count = size = first = last = start = end = 0
    clean = gap = False
    digest = hashlib.sha256()
    too_long = _line_too_long(max_bytes)
    validate = validate_request_line
    scan = _SCAN

    for lines, terminated in iter_line_batches(fileobj, max_line_bytes=max_bytes, too_long=too_long):
        for line in lines:
            line_number += 1
            length = len(line) + 1
            if length > max_bytes:
                raise too_long(line_number, length - 1)
            # Fast path for the usual line: the decoder's scanner, without json.loads' wrapper. Any
            # doubt (blank line, surrounding whitespace, bad line) goes the slow, thorough way.
            try:
                text = line.decode("utf-8")
                obj, stop = scan(text, 0)
                contents = obj["request"]["contents"]
                fast = stop == len(text) and type(obj) is dict and type(obj["request"]) is dict
                fast = fast and type(contents) is list and len(contents) > 0
            except Exception:
                fast = False
            if not fast:
                if not line or line.isspace():
                    offset += length
                    gap = True
                    continue
                validate(line, line_number)
            if count and (count == max_requests or size + length > max_bytes):
                if single and count == max_requests:
                    raise MaaSInputError(
                        f"the file has more than {max_requests} requests (request {count + 1} is on line "
                        f"{line_number}); one upload holds at most {max_requests}: {_SPLIT}",
                        line_number=line_number,
                    )
                if single:
                    raise MaaSInputError(
                        f"the file is over the limit of {_size(max_bytes)} per upload: its first {count + 1} "
                        f"requests (up to line {line_number}) already take {size + length} bytes; {_SPLIT}",
                        line_number=line_number,
                    )
                plans.append(ShardPlan(len(plans), first, last, start, end, count, size, digest.hexdigest(), clean))
                count = 0
            if count:
                clean = clean and not gap
            else:
                first, start, size, clean = line_number, offset, 0, True
                digest = hashlib.sha256()
            gap = False
            digest.update(line)
            digest.update(b"\n")
            count += 1
            size += length
            last = line_number
            offset += length
            end = offset
        if not terminated:  # the file's last line has no newline
            offset -= 1
            if last == line_number:
                end -= 1
                clean = False
    if not count:
        what = f"{line_number} line{'s' * (line_number != 1)}, all blank" if line_number else "it is empty"
        raise MaaSInputError(f"the file contains no requests ({what}); {_SHAPE}, one per line")
    plans.append(ShardPlan(len(plans), first, last, start, end, count, size, digest.hexdigest(), clean))
    return plans, offset


def validate_file(
    fileobj: IO[bytes], *, max_requests: int = MAX_REQUESTS_PER_FILE, max_bytes: int = MAX_BYTES_PER_FILE
) -> FileStats:
    """Check a whole input file that is to be uploaded as one file.

    Reading stops as soon as a limit is exceeded.

    :raises MaaSInputError: empty file, a bad line (the first one), more than ``max_requests``
        requests, or more than ``max_bytes`` bytes.
    """
    plans, size = _scan(fileobj, max_requests, max_bytes, single=True)
    plan = plans[0]
    clean = plan.clean and plan.start_offset == 0 and plan.end_offset == size
    return FileStats(plan.requests, plan.bytes, plan.sha256, clean)


def plan_shards(
    fileobj: IO[bytes], *, max_requests: int = MAX_REQUESTS_PER_FILE, max_bytes: int = MAX_BYTES_PER_FILE
) -> list[ShardPlan]:
    """Pass 1 of splitting: validate every line and plan shards of consecutive lines.

    Each shard holds at most ``max_requests`` requests and ``max_bytes`` bytes; a shard is closed
    when the next line would go over either limit. The plan depends only on the input bytes.

    :raises MaaSInputError: empty file, a bad line, or one line over ``max_bytes`` (naming it).
    """
    return _scan(fileobj, max_requests, max_bytes, single=False)[0]


class _Range:
    """Reads at most ``left`` bytes from a file object."""

    def __init__(self, fileobj: IO[bytes], left: int) -> None:
        self.fileobj = fileobj
        self.left = left

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > self.left:
            size = self.left
        data = self.fileobj.read(size) if size else b""
        self.left -= len(data)
        return data


def copy_shard(fileobj: IO[bytes], plan: ShardPlan, out: IO[bytes]) -> int:
    """Pass 2 of splitting: write the shard's bytes to ``out``; return how many were written.

    ``fileobj`` must be the same input, seekable. A clean shard is copied as a byte range in 1 MiB
    chunks; otherwise it is copied line by line, without blank lines and with a final newline.

    :raises MaaSInputError: if the bytes copied differ in size from the plan (the input changed).
    """
    fileobj.seek(plan.start_offset)
    reader = _Range(fileobj, plan.end_offset - plan.start_offset)
    written = 0
    if plan.clean:
        while chunk := reader.read(_COPY_CHUNK):
            out.write(chunk)
            written += len(chunk)
    else:
        for lines, _ in iter_line_batches(reader):
            kept = [line for line in lines if line and not line.isspace()]
            if kept:
                kept.append(b"")
                data = b"\n".join(kept)
                out.write(data)
                written += len(data)
    if written != plan.bytes:
        raise MaaSInputError(
            f"shard {plan.index} (lines {plan.first_line}-{plan.last_line}): copied {written} bytes but planned "
            f"{plan.bytes}; the input file changed while it was being split: run the split again"
        )
    return written


def iter_shards(
    fileobj: IO[bytes], *, max_requests: int = MAX_REQUESTS_PER_FILE, max_bytes: int = MAX_BYTES_PER_FILE
) -> Iterator[Shard]:
    """Validate the whole (seekable) input, then yield each shard with its bytes.

    Nothing is yielded unless every line is valid: :func:`plan_shards` runs before the first shard.
    """
    for plan in plan_shards(fileobj, max_requests=max_requests, max_bytes=max_bytes):
        buffer = io.BytesIO()
        copy_shard(fileobj, plan, buffer)
        yield Shard(plan, buffer.getvalue())


#: Shard files are ``part-00000.jsonl``, ``part-00001.jsonl``...
SHARD_PREFIX = "part"


def shard_name(prefix: str, index: int, total: int) -> str:
    """Deterministic shard file name: ``shard_name("part", 0, 3) == "part-00000.jsonl"``.

    The number is zero-padded to at least 5 digits (more if ``total`` needs it), so names sort.
    """
    if not prefix or prefix.endswith("/"):
        raise ValueError(f"shard name prefix {prefix!r} must name the file, e.g. {SHARD_PREFIX!r}")
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"shard index {index} is not in 0..{total - 1}")
    width = max(5, len(str(total - 1)))
    return f"{prefix}-{index:0{width}d}.jsonl"
