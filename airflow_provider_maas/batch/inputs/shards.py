"""A request file as shards within the service's limits: validated in one pass, planned as byte ranges,
copied out without parsing again.

The vendor allows at most ``MAX_REQUESTS_PER_FILE`` lines and ``MAX_BYTES_PER_FILE`` bytes per uploaded
file, so big inputs are planned as shards (:func:`plan_shards`) and each shard is copied byte for byte
(:func:`copy_shard`).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.batch.inputs.lines import iter_line_batches
from airflow_provider_maas.batch.inputs.request_lines import (
    LINE_SHAPE,
    MAX_BYTES_PER_FILE,
    MAX_REQUESTS_PER_FILE,
    contents_problem,
    line_too_long,
    scan_json,
    size_text,
    validate_request_line,
)
from airflow_provider_maas.batch.int_settings import check_shard_limits
from airflow_provider_maas.exceptions import MaaSInputChangedError, MaaSInputError
from airflow_provider_maas.storage import (
    CHUNK_SIZE,
    atomic_writer,
    check_destination,
    open_source,
    remove_stale_parts,
    to_path,
    uri_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


"""Most requests (lines) one uploaded file may hold."""
"""Most bytes one uploaded file may hold: the vendor's "50 MB", read as MiB like the emulator."""
_SPLIT = "split it with MaaSSplitRequestsOperator, or send it whole with MaaSBatchPredictionOperator (any size)"


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


def _scan(
    fileobj: IO[bytes], max_requests: int, max_bytes: int, single: bool, validated: bool = False
) -> tuple[list[ShardPlan], int]:
    """Validate every line and plan shards; return the plans and the input's size.

    With ``single``, going over a limit raises instead of starting a new shard (and stops reading).
    With ``validated``, the lines are not parsed again (only their size is checked).
    """
    check_shard_limits(max_requests, max_bytes, upload=False)
    plans: list[ShardPlan] = []
    line_number = offset = 0
    count = size = first = last = start = end = 0
    clean = gap = False
    digest = hashlib.sha256()
    too_long = line_too_long(max_bytes)
    validate = validate_request_line
    scan = scan_json

    for lines, terminated in iter_line_batches(fileobj, max_line_bytes=max_bytes, too_long=too_long):
        for line in lines:
            line_number += 1
            length = len(line) + 1
            if length > max_bytes:
                raise too_long(line_number, length - 1)
            # Fast path for the usual line: the decoder's scanner, without json.loads' wrapper. Any
            # doubt (blank line, surrounding whitespace, bad line) goes the slow, thorough way.
            if validated:
                fast = bool(line) and not line.isspace()
            else:
                try:
                    text = line.decode("utf-8")
                    obj, stop = scan(text, 0)
                    contents = obj["request"]["contents"]
                    fast = stop == len(text) and type(obj) is dict and type(obj["request"]) is dict
                    fast = fast and contents_problem(contents) is None
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
                        f"the file is over the limit of {size_text(max_bytes)} per upload: its first {count + 1} "
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
        raise MaaSInputError(f"the file contains no requests ({what}); {LINE_SHAPE}, one per line")
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
    fileobj: IO[bytes],
    *,
    max_requests: int = MAX_REQUESTS_PER_FILE,
    max_bytes: int = MAX_BYTES_PER_FILE,
    validated: bool = False,
) -> list[ShardPlan]:
    """Pass 1 of splitting: validate every line and plan shards of consecutive lines.

    Each shard holds at most ``max_requests`` requests and ``max_bytes`` bytes; a shard is closed
    when the next line would go over either limit. The plan depends only on the input bytes.

    :param validated: The file was written from lines :func:`~airflow_provider_maas.batch.inputs.request_lines.iter_request_lines`
        validated (``answers.pay_once.write_requests_to_send``): they are not parsed again (the same plan).
    :raises MaaSInputError: empty file, a bad line, or one line over ``max_bytes`` (naming it).
    """
    return _scan(fileobj, max_requests, max_bytes, single=False, validated=validated)[0]


def source_label(source: Any, what: str) -> str:
    """How errors name a file: ``<what> <uri>`` (its ``name``, if any, for an open file object)."""
    if hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        name = getattr(source, "name", None)
        return f"{what} {name}" if isinstance(name, str) else what
    return f"{what} {uri_of(to_path(source, what=what))}"


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


def copy_shard(fileobj: IO[bytes], plan: ShardPlan, out: IO[bytes], *, label: str = "the input file") -> int:
    """Pass 2 of splitting: write the shard's bytes to ``out``; return how many were written.

    ``fileobj`` must be the same input, seekable. A clean shard is copied as a byte range in 1 MiB
    chunks; otherwise it is copied line by line, without blank lines and with a final newline.
    What was written is checked against the plan's size and SHA-256, so a caller that sends
    ``out`` only once this returns never sends bytes the plan did not validate.

    :param label: Names the input in the error (e.g. its URI).
    :raises MaaSInputChangedError: the bytes differ from the plan (the input changed since it was planned).
    """
    fileobj.seek(plan.start_offset)
    reader = _Range(fileobj, plan.end_offset - plan.start_offset)
    digest = hashlib.sha256()
    written = 0
    if plan.clean:
        while chunk := reader.read(CHUNK_SIZE):
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    else:
        for lines, _ in iter_line_batches(reader):
            kept = [line for line in lines if line and not line.isspace()]
            if kept:
                kept.append(b"")
                data = b"\n".join(kept)
                out.write(data)
                digest.update(data)
                written += len(data)
    if written != plan.bytes or digest.hexdigest() != plan.sha256:
        raise MaaSInputChangedError(
            f"{label} changed since it was planned: shard {plan.index} (lines {plan.first_line}-{plan.last_line}) "
            f"now holds {written} bytes with SHA-256 {digest.hexdigest()[:16]}..., the plan {plan.bytes} bytes "
            f"with SHA-256 {plan.sha256[:16]}... (did an upstream task rewrite it?). Nothing was sent for this "
            "shard. Restore the file as it was, or start over with the new one: run the split again, or clear "
            "the batch task (jobs already created for the old file keep running and are billed)"
        )
    return written


class _Discard:
    """A writable that keeps nothing (what :func:`check_unchanged` copies shards to)."""

    def write(self, data: bytes, /) -> int:
        return len(data)


def check_unchanged(source: Any, plans: Iterable[ShardPlan]) -> None:
    """Check that ``source`` still holds the bytes of every shard of ``plans``, without keeping them.

    :raises MaaSInputChangedError: naming the source and the first shard that differs.
    """
    label = source_label(source, "source")
    with open_source(source) as handle:
        for plan in plans:
            copy_shard(handle, plan, _Discard(), label=label)  # type: ignore[arg-type]


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
    if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
        raise MaaSInputError(
            f"shard name prefix {prefix!r} must name the file, e.g. {SHARD_PREFIX!r} (shards are named "
            f"<prefix>-00000.jsonl...); put the folder in the destination instead"
        )
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"shard index {index} is not in 0..{total - 1}")
    width = max(5, len(str(total - 1)))
    return f"{prefix}-{index:0{width}d}.jsonl"


def write_shards(source: Any, prefix: Any, *, max_requests: int, max_bytes: int, log: Any) -> list[str]:
    """Validate ``source`` completely, then write its shards under ``prefix``; return their URIs."""

    check_shard_limits(max_requests, max_bytes)
    root = check_destination(prefix, what="destination prefix", folder=True)
    with open_source(source) as handle:
        plans = plan_shards(handle, max_requests=max_requests, max_bytes=max_bytes)
        remove_stale_parts(root)  # once for the folder, not once per shard
        uris = []
        for plan in plans:
            path = root / shard_name(SHARD_PREFIX, plan.index, len(plans))
            with atomic_writer(path, clean=False) as out:
                copy_shard(handle, plan, out, label=source_label(source, "source"))
            uris.append(uri_of(path))
    log.info("Split into %d shards under %s", len(uris), uri_of(root))
    return uris
