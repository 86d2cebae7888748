"""Matching results to their requests, in input order, for results spread over several files.

The service keeps neither the input order nor the requests byte for byte (it echoes them with
``null`` fields added), so each result is found again by its normalised request. Memory-bounded:
an index entry per result line, never the lines themselves. No Airflow import.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.batch.lines import ResultsFormatError, iter_lines
from airflow_provider_maas.batch.results import (
    MISSING_STATUS,
    ResultRecord,
    load_result_object,
    request_digest,
    result_record,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping


class ResultLocation(NamedTuple):
    """Where one result line is: ``line_number`` and byte ``offset``/``length`` (no newline) in ``source_id``."""

    source_id: Hashable
    line_number: int
    offset: int
    length: int


_LINE_BITS, _OFFSET_BITS, _LENGTH_BITS = 40, 50, 40


class ResultIndex:
    """Which result line answers which request, for results spread over several files.

    ``add(source_id, fileobj)`` reads one results file and records, per request digest, the
    location of each line (about 130 bytes per line; lines are not kept). Identical requests
    queue up first in, first out, so they pair in any order. ``pop(request)`` takes the next
    location for a request; what is left after all requests are popped are results that match no
    input request: ``unmatched()`` lists them (lines without a ``request`` object included).
    """

    def __init__(self) -> None:
        self._sources: list[Hashable] = []
        self._labels: dict[Hashable, str] = {}
        self._by_digest: dict[bytes, int | deque[int]] = {}
        self._no_request: list[int] = []
        self._repeated: dict[bytes, int] = {}  # digest -> lines, for digests with more than one line
        self._size = 0

    def __len__(self) -> int:
        """Number of result lines indexed and not popped yet."""
        return self._size

    def _pack(self, source: int, line_number: int, offset: int, length: int) -> int:
        return (((source << _LINE_BITS | line_number) << _OFFSET_BITS | offset) << _LENGTH_BITS) | length

    def _unpack(self, packed: int) -> ResultLocation:
        packed, length = divmod(packed, 1 << _LENGTH_BITS)
        packed, offset = divmod(packed, 1 << _OFFSET_BITS)
        source, line_number = divmod(packed, 1 << _LINE_BITS)
        return ResultLocation(self._sources[source], line_number, offset, length)

    def add(self, source_id: Hashable, fileobj: IO[bytes], *, label: str | None = None) -> int:
        """Index every line of one results file; return how many result lines it holds.

        :param label: Names the file in errors (``<label> line N: ...``); default ``results <source_id>``.
        :raises ResultsFormatError: a line is not a JSON object (the message names source and line).
        """
        if source_id in self._sources:
            raise ValueError(f"results source {source_id!r} was already added")
        source = len(self._sources)
        self._sources.append(source_id)
        label = self._labels[source_id] = label or f"results {source_id}"
        count = 0
        for line_number, offset, line in iter_lines(fileobj, label):
            obj = load_result_object(line, f"{label} line {line_number}", line_number)
            packed = self._pack(source, line_number, offset, len(line))
            request = obj.get("request")
            count += 1
            if not isinstance(request, dict):
                self._no_request.append(packed)
                continue
            digest = request_digest(request)
            slot = self._by_digest.get(digest)
            if slot is None:
                self._by_digest[digest] = packed
            elif isinstance(slot, deque):
                slot.append(packed)
                self._repeated[digest] += 1
            else:
                self._by_digest[digest] = deque((slot, packed))
                self._repeated[digest] = 2
        self._size += count
        return count

    def label(self, source_id: Hashable) -> str:
        """How errors name the results file added as ``source_id``."""
        return self._labels[source_id]

    def pop(self, request: Any) -> ResultLocation | None:
        """Take the location of the next result for ``request`` (the input's request object), or None."""
        digest = request_digest(request)
        slot = self._by_digest.get(digest)
        if slot is None:
            return None
        if isinstance(slot, deque):
            packed = slot.popleft()
            if len(slot) == 1:
                self._by_digest[digest] = slot[0]
        else:
            packed = slot
            del self._by_digest[digest]
        self._size -= 1
        return self._unpack(packed)

    def repeats(self) -> int:
        """Unmatched lines for a request that did get a result: second answers (duplicates)."""
        total = 0
        for digest, lines in self._repeated.items():
            slot = self._by_digest.get(digest)
            left = 0 if slot is None else len(slot) if isinstance(slot, deque) else 1
            if left < lines:
                total += left
        return total

    def unmatched(self) -> list[ResultLocation]:
        """Locations not popped yet (results matching no input request), sorted by source and line."""
        packed = list(self._no_request)
        for slot in self._by_digest.values():
            packed.extend(slot if isinstance(slot, deque) else (slot,))
        return [self._unpack(p) for p in sorted(packed)]


@dataclass(frozen=True, slots=True)
class OrderedItem:
    """One input request and its result, as :func:`order_results` yields them.

    :param line_number: 1-based line number in the input file.
    :param request_raw: The input line's bytes, ending with ``b"\\n"`` (write it to the failed file).
    :param result_raw: The matched result line, ending with ``b"\\n"``; None if no result matched.
    :param record: The parsed result (``line_number`` = input line); for a missing result, a record
        with status :data:`MISSING_STATUS` and no response.
    """

    line_number: int
    request_raw: bytes
    result_raw: bytes | None
    record: ResultRecord = field(repr=False)

    @property
    def missing(self) -> bool:
        """True if no result line matched this request."""
        return self.result_raw is None

    @property
    def failed(self) -> bool:
        """True if this request belongs in the failed file (missing, or not succeeded)."""
        return not self.record.succeeded


def line_reader(files: Mapping[Any, IO[bytes]]) -> Callable[[Hashable, int, int], bytes]:
    """A ``read_line`` for :func:`order_results` over seekable binary files keyed by source id."""

    def read_line(source_id: Hashable, offset: int, length: int) -> bytes:
        fileobj = files[source_id]
        fileobj.seek(offset)
        return fileobj.read(length)

    return read_line


def order_results(
    request_lines: Iterable[tuple[int, bytes, dict[str, Any]]],
    index: ResultIndex,
    read_line: Callable[[Hashable, int, int], bytes],
) -> Iterator[OrderedItem]:
    """Pair each input request with its result, in input order.

    :param request_lines: ``(line_number, raw, request)`` per input line, e.g. the ``RequestLine``
        items of ``jsonl.iter_request_lines`` (``request`` is the line's ``"request"`` object).
    :param index: Results of every shard, added to a :class:`ResultIndex`.
    :param read_line: ``read_line(source_id, offset, length) -> bytes`` (see :func:`line_reader`).

    Write ``item.result_raw`` to the ordered output and ``item.request_raw`` to the failed file when
    ``item.failed``; ``ResultSummary.add(item.record)``. Afterwards ``index.unmatched()`` lists the
    results no input request claimed: report them, they are not in the output.
    """
    for line_number, raw, request in request_lines:
        if not raw.endswith(b"\n"):
            raw += b"\n"
        location = index.pop(request)
        if location is None:
            record = ResultRecord(line_number, request, None, MISSING_STATUS, None, None, {}, None)
            yield OrderedItem(line_number, raw, None, record)
            continue
        line = read_line(location.source_id, location.offset, location.length)
        label = f"{index.label(location.source_id)} line {location.line_number}"
        if len(line) != location.length:
            raise ResultsFormatError(
                f"{label}: read {len(line)} bytes, expected {location.length}; did the file change?",
                line_number=location.line_number,
            )
        record = result_record(load_result_object(line, label, location.line_number), line_number)
        yield OrderedItem(line_number, raw, line + b"\n", record)
