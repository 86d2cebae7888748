"""The one line reader: JSONL files read in big chunks, a line at a time, with a bounded line length.

Every reader of request and results files goes through here (validation, sharding, matching,
merging, summaries), so line numbers, byte offsets, blank lines and the longest line are counted
the same way everywhere. Pure Python: no Airflow import.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

READ_SIZE = 8 * 1024 * 1024
"""Bytes asked of the file object per read when reading lines: larger than ``storage.CHUNK_SIZE``
(what a copy reads at a time), so that a line costs fewer joins of partial chunks."""

MAX_RESULT_LINE_BYTES = 100 * 1024 * 1024
"""Longest results line read: one request (at most 50 MiB, the upload limit) and its answer. A
longer line is refused as soon as that much of it is read, so a file that is not a results file
(a multi-GB file without a newline) cannot exhaust memory."""


class Readable(Protocol):
    """Anything with ``read(size) -> bytes``: binary files, fsspec files, ``io.BytesIO``."""

    def read(self, size: int, /) -> bytes: ...


class Writable(Protocol):
    """Anything with ``write(data) -> int``: binary files, a failed file written only if needed."""

    def write(self, data: bytes, /) -> int: ...


class ResultsFormatError(ValueError):
    """A results file is not what the service writes (a line is not a JSON object, bad base64...).

    A ``ValueError``, not a ``MaaSError``: this module loads no Airflow. Where the operators read
    results (``merge.results_from_service``) it becomes a ``MaaSIntegrityError`` with the same text.

    :param line_number: 1-based line of the results file, if the error is about one line.
    """

    def __init__(self, message: str, *, line_number: int | None = None) -> None:
        super().__init__(message)
        self.line_number = line_number


def _input_error(message: str) -> ValueError:
    """``MaaSInputError(message)`` (a ``ValueError``): a bad argument of the caller. Imported when
    raised, not with this module, which must load no Airflow (the public results reader)."""
    from airflow_provider_maas.exceptions import MaaSInputError

    return MaaSInputError(message)


def iter_line_batches(
    fileobj: Readable,
    *,
    chunk_size: int | None = None,
    max_line_bytes: int | None = None,
    too_long: Callable[[int, int], Exception] | None = None,
) -> Iterator[tuple[list[bytes], bool]]:
    """Read a binary file object in big chunks and yield its lines, in batches.

    Yields ``(lines, terminated)``. ``lines`` holds every line of the file exactly once, in order,
    blank ones included, each WITHOUT its ``b"\\n"``; so a caller can count line numbers and byte
    offsets (``offset += len(line) + 1``). ``terminated`` is False only for a last batch holding the
    file's final line when that line has no ``b"\\n"``. Used for request files and results files alike.

    :param chunk_size: Bytes per read (default :data:`READ_SIZE`).
    :param max_line_bytes: If set, a line of ``max_line_bytes`` bytes or more (without its newline)
        raises ``too_long(line_number, bytes_read_so_far)`` (``MaaSInputError`` if not given) before
        it is fully read, which keeps memory bounded by ``max_line_bytes + chunk_size``.
    """
    chunk_size = chunk_size or READ_SIZE
    line_number = 1
    pending: list[bytes] = []
    pending_len = 0
    while True:
        data = fileobj.read(chunk_size)
        if not data:
            break
        if isinstance(data, str):
            raise _input_error("the file is open in text mode: open it in binary mode ('rb'), e.g. open(path, 'rb')")
        lines = data.split(b"\n")
        if len(lines) == 1:
            pending.append(data)
            pending_len += len(data)
            if max_line_bytes is not None and pending_len >= max_line_bytes:
                if too_long is None:
                    raise _input_error(f"line {line_number} is longer than {max_line_bytes} bytes")
                raise too_long(line_number, pending_len)
            continue
        if pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
            pending = []
            pending_len = 0
        tail = lines.pop()
        if tail:
            pending = [tail]
            pending_len = len(tail)
        line_number += len(lines)
        yield lines, True
    if pending:
        yield [b"".join(pending)], False


def result_line_too_long(label: str) -> Callable[[int, int], ResultsFormatError]:
    """``too_long(line_number, bytes_read)`` for results lines: names ``label`` and the line."""

    def make(line_number: int, size: int) -> ResultsFormatError:
        return ResultsFormatError(
            f"{label} line {line_number}: at least {size} bytes long, over the {MAX_RESULT_LINE_BYTES // 2**20} MiB a "
            "results line can hold (one request of at most 50 MiB and its answer); this is not a MaaS results file",
            line_number=line_number,
        )

    return make


def iter_result_batches(fileobj: Readable, label: str) -> Iterator[tuple[list[bytes], bool]]:
    """:func:`iter_line_batches` for a results file: a line over :data:`MAX_RESULT_LINE_BYTES` is
    refused (``ResultsFormatError`` naming ``label``) before it is whole, so memory stays bounded."""
    too_long = result_line_too_long(label)
    line_number = 0
    for lines, terminated in iter_line_batches(fileobj, max_line_bytes=MAX_RESULT_LINE_BYTES, too_long=too_long):
        # Only a batch's first line can be longer than one read chunk (it may continue the last one's tail).
        if len(lines[0]) >= MAX_RESULT_LINE_BYTES:
            raise too_long(line_number + 1, len(lines[0]))
        line_number += len(lines)
        yield lines, terminated


def iter_lines(fileobj: IO[bytes], label: str = "results") -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line_number, offset, line)`` for every non-blank line (``line`` without newline).

    :raises ResultsFormatError: a line over :data:`MAX_RESULT_LINE_BYTES` (naming ``label``).
    """
    line_number = 0
    offset = 0
    for lines, _ in iter_result_batches(fileobj, label):
        for line in lines:
            line_number += 1
            if line and not line.isspace():
                yield line_number, offset, line
            offset += len(line) + 1
