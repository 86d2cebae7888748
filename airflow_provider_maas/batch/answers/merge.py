"""Results files as people use them: summarised, in input order, failures set aside to resubmit.

Used by the download, merge and one-task operators alike. Works on any storage
(local paths, URIs, ``ObjectStoragePath``); every output is written atomically.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

from airflow_provider_maas.batch.answers.answer_lines import Answer, reader
from airflow_provider_maas.batch.answers.matching import AnswerStore
from airflow_provider_maas.batch.answers.results import (
    ResultRecord,
    ResultSummary,
    extract_images,
    load_result_object,
    missing_record,
    normalise_request,
    request_digest,
    result_record,
    status_line,
)
from airflow_provider_maas.batch.inputs.lines import ResultsFormatError, Writable, iter_lines
from airflow_provider_maas.batch.inputs.request_lines import RequestLine, iter_request_lines
from airflow_provider_maas.batch.inputs.shards import source_label
from airflow_provider_maas.client.states import job_outcome
from airflow_provider_maas.exceptions import MaaSInputChangedError, MaaSInputError, MaaSIntegrityError
from airflow_provider_maas.storage import atomic_writer, open_source, to_path, uri_of
from airflow_provider_maas.storage.paths import untracked
from airflow_provider_maas.storage.writes import atomic_writer_if_written

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from airflow_provider_maas.batch.answers.summary_types import MergeSummary, ResultsSummary

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def results_from_service(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """The one place where a damaged results file becomes a provider error.

    The readers (``lines``, ``results``, ``matching``) load no Airflow, so they raise
    ``ResultsFormatError`` (a ``ValueError``) naming the file and line. The functions the operators
    call to read results are wrapped with this decorator, which raises it again as a
    :class:`~airflow_provider_maas.exceptions.MaaSIntegrityError` (a ``MaaSError``: the results are
    not what the service writes) with the same text; the original is its ``__cause__`` (with
    ``line_number``).
    """

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except ResultsFormatError as err:
            raise MaaSIntegrityError(str(err)) from err

    return wrapper


def failed_path_for(destination: Any) -> Any:
    """``<destination stem>.failed.jsonl`` beside the destination."""
    path = to_path(destination, what="destination")
    return path.parent / f"{path.stem}.failed.jsonl"


def _log_failures(summary: ResultSummary, where: str) -> None:
    if summary.failed:
        log.warning(
            "%d of %d requests failed or are missing in %s; first reasons: %s",
            summary.failed,
            summary.requests,
            where,
            "; ".join(f"line {line}: {error}" for line, error in summary.failure_samples),
        )


@results_from_service
def summarise_results(results: Any, *, failed_destination: Any | None = None) -> ResultsSummary:
    """Summarise one results file; write its failed requests (input format) when asked.

    Failed requests are written as ``{"request": ...}`` lines with the service's null-valued
    fields removed, ready to resubmit. A line that repeats an earlier line byte for byte is counted
    in ``duplicates`` only, not as another request (``matching``; remembered on disk, not in memory).
    ``failed_uri`` is None when no failed file was asked for or none failed.
    """

    summary = ResultSummary()
    duplicates = 0
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(AnswerStore())
        failed_path = to_path(failed_destination) if failed_destination else None
        failed_out = stack.enter_context(atomic_writer_if_written(failed_path)) if failed_path else None
        handle = stack.enter_context(open_source(results, what="results file"))
        label = source_label(results, "results file")
        for line_number, _, line in iter_lines(handle, label):
            if store.repeats_a_line(line):
                duplicates += 1
                continue
            record = result_record(load_result_object(line, f"{label} line {line_number}", line_number), line_number)
            summary.add(record)
            if failed_out is not None and not record.succeeded and record.request is not None:
                failed_out.write(
                    json.dumps({"request": normalise_request(record.request)}, ensure_ascii=False).encode() + b"\n"
                )
        size = handle.tell() if handle.seekable() else 0
    _log_failures(summary, "the results")
    failed_uri = None
    if failed_path is not None and failed_out is not None and failed_out.written:
        failed_uri = uri_of(failed_path)
    return {
        **summary.as_dict(),
        "missing": summary.missing,
        "duplicates": duplicates,
        "bytes": size,
        "failed_uri": failed_uri,
    }


def compare_with_job(
    summary: ResultsSummary | MergeSummary, job: dict[str, Any], *, ordered: bool
) -> tuple[int | None, list[str]]:
    """Check a download's summary against the job's ``completionStats``: the service's count of
    requests (None when it sent none: the summary's ``expected_requests``) and the differences.

    Requests the service counted but the results file does not hold are added to ``missing`` and
    ``failed`` (and ``requests``) unless ``ordered`` (then the input file already counted them).
    A null ``failedCount`` beside a ``successfulCount`` is 0, as the service sends it.
    """
    outcome = job_outcome(job)
    succeeded, failed = outcome.successful, outcome.failed
    if succeeded is not None and failed is None:
        failed = 0
    expected = succeeded + failed if succeeded is not None and failed is not None else None
    differences: list[str] = []
    if expected is not None:
        if not ordered and expected > summary["requests"]:
            absent = expected - summary["requests"]
            summary.update(
                {"requests": expected, "failed": summary["failed"] + absent, "missing": summary["missing"] + absent}
            )
        if summary["requests"] != expected:
            differences.append(f"the job counts {expected} requests, the results {summary['requests']}")
        if summary["succeeded"] != succeeded:
            differences.append(f"the job counts {succeeded} succeeded, the results {summary['succeeded']}")
        if summary["failed"] != failed:
            differences.append(f"the job counts {failed} failed, the results {summary['failed']} (missing included)")
    if summary["missing"]:
        differences.append(f"{summary['missing']} requests have no result line")
    if summary.get("duplicates"):
        differences.append(f"{summary['duplicates']} result lines repeat an earlier line (counted once)")
    if isinstance(unmatched := summary.get("unmatched"), int) and unmatched:  # merged in input order
        differences.append(f"{unmatched} result lines match no request of the input")
    return expected, differences


@results_from_service
def extract_images_beside(results: Any) -> list[str]:
    """Write the inline images of ``results`` to ``<stem>_images/`` beside it; return their URIs."""

    path = to_path(results, what="results file")
    folder = path.parent / f"{path.stem}_images"
    uris: list[str] = []

    def write(name: str, data: bytes) -> None:
        target = folder / name
        with atomic_writer(target) as out:
            out.write(data)
        uris.append(uri_of(target))

    with open_source(path, what="results file") as handle:
        extract_images(handle, write, label=source_label(path, "results file"))
    if uris:
        log.info("Extracted %d images to %s", len(uris), uri_of(folder))
    return uris


@results_from_service
def merge_results(sources: list[Any], requests: Any, destination: Any) -> MergeSummary:
    """Merge shard results into ``destination`` in the order of the ``requests`` file.

    Each request is matched to its result by normalised request (``matching``: a success first,
    identical requests each take their own). Requests that failed or have no result are written, as their original input lines, to
    ``<destination stem>.failed.jsonl``. Results matching no request are counted (``unmatched``)
    and logged, never silently dropped from the count. Returns the summary dict plus ``missing``,
    ``unmatched``, ``bytes`` and ``failed_uri`` (None, and no file, when every request succeeded).

    One index of every result line, on disk (``matching``); when the results of each shard are known
    to answer one range of input lines, :func:`merge_shard_results` keeps that index small.

    No ``sources`` (an empty list: a mapped upstream that produced none) raises
    :class:`~airflow_provider_maas.exceptions.MaaSInputError` and writes nothing: every request would
    be written as missing, and the task would succeed with nothing merged.
    """
    sources = list(sources)
    if not sources:
        raise MaaSInputError(
            f"No results files to merge into the order of the {source_label(requests, 'requests file')}: "
            "every request would be written as missing, so nothing was written. Give the shards' results "
            "files (the merge operator's results, e.g. download.output); an empty list comes from an "
            "upstream task that produced none (a mapped download with no shard to map over): check it ran"
        )
    dest = to_path(destination, what="destination")
    failed = failed_path_for(dest)
    merge = OrderedWriter()
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(AnswerStore())
        files = {}
        for number, source in enumerate(sources):
            what = f"results file #{number}"
            files[number] = handle = stack.enter_context(open_source(source, what=what))
            store.add(source_label(source, what), handle)
        requests_handle = stack.enter_context(open_source(requests, what="requests file"))
        out = stack.enter_context(atomic_writer(dest))
        failed_out = stack.enter_context(atomic_writer_if_written(failed))
        read = reader({number: untracked(handle) for number, handle in files.items()}, store.sources)
        merge.write(store, read, iter_request_lines(requests_handle), out, failed_out)
        merge.leftovers(store)
    return merge.report(dest, failed if failed_out.written else None)


@results_from_service
def merge_shard_results(
    parts: Iterable[tuple[Any, int, int]], requests: Any, destination: Any, *, sha256: Sequence[str] | None = None
) -> MergeSummary:
    """:func:`merge_results` for results known shard by shard: memory follows the largest shard.

    :param parts: ``(results, first_line, last_line)`` per shard, in input order: the shard's
        results file answers the requests on lines ``first_line`` to ``last_line`` (1-based, as
        ``ShardPlan`` counts them) of ``requests``. Requests on no shard's lines are missing.

    :param sha256: The plan's SHA-256 of each shard's request lines (``ShardPlan.sha256``): a shard
        whose lines in ``requests`` hash otherwise raises
        :class:`~airflow_provider_maas.exceptions.MaaSInputChangedError` (the file changed since the
        shards were sent: its answers would be paired with other requests), and nothing is written.

    The requests file is read once; each shard's results are indexed alone, paired with its lines,
    written, and dropped. A result line of one shard is never matched to a request of another:
    it is counted in ``unmatched``. Returns the same summary as :func:`merge_results`.
    """
    dest = to_path(destination, what="destination")
    failed = failed_path_for(dest)
    merge = OrderedWriter()
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(AnswerStore())
        requests_handle = stack.enter_context(open_source(requests, what="requests file"))
        out = stack.enter_context(atomic_writer(dest))
        failed_out = stack.enter_context(atomic_writer_if_written(failed))
        lines = _LineRange(iter_request_lines(requests_handle))
        previous = 0
        for number, (source, first_line, last_line) in enumerate(parts):
            if first_line <= previous or last_line < first_line:
                raise ValueError(
                    f"shard #{number} covers lines {first_line}-{last_line}, after line {previous}: "
                    "parts must be in input order and not overlap"
                )
            previous = last_line
            what = f"results of shard #{number}"
            digest = hashlib.sha256()
            store.clear()  # a result line of one shard never answers a request of another
            with open_source(source, what=what) as opened:
                handle = _in_memory_if_small(opened)
                store.add(source_label(source, what), handle)
                read = reader({len(store.sources) - 1: untracked(handle)}, store.sources)
                merge.write(store, read, _hashed(lines.upto(last_line), digest), out, failed_out)
            if sha256 is not None and digest.hexdigest() != sha256[number]:
                raise MaaSInputChangedError(
                    f"{source_label(requests, 'requests file')} changed since it was planned: the requests of shard "
                    f"{number} (lines {first_line}-{last_line}) are not the ones sent, so their answers cannot be "
                    "placed. Nothing was written; the answers downloaded so far are kept in the batch state. Restore "
                    "the file and clear the task to write the results (nothing is paid again)"
                )
            merge.leftovers(store)
        store.clear()
        merge.write(store, reader({}, store.sources), lines.upto(None), out, failed_out)
    return merge.report(dest, failed if failed_out.written else None)


#: A shard's results up to this size are read in one call and paired from memory: a seek and a read
#: per answer through the storage layer's file object (remote, or tracked for lineage) cost more
#: than pairing them.
SMALL_SHARD_BYTES = 1024 * 1024


def _in_memory_if_small(handle: IO[bytes]) -> IO[bytes]:
    """``handle``'s bytes in memory when there are at most :data:`SMALL_SHARD_BYTES`, else ``handle`` rewound."""
    data = handle.read(SMALL_SHARD_BYTES + 1)
    if len(data) <= SMALL_SHARD_BYTES:
        return io.BytesIO(data)
    handle.seek(0)
    return handle


def line_digest(line: RequestLine) -> bytes:
    """The digest a request line is matched by (of its ``request`` object)."""
    return request_digest(line.request)


def _hashed(lines: Iterable[RequestLine], digest: Any) -> Iterator[RequestLine]:
    """``lines``, each one's bytes added to ``digest`` on the way (as ``ShardPlan.sha256`` counts them)."""
    for line in lines:
        digest.update(line.raw)
        yield line


class _LineRange:
    """Hands out the request lines of one file range by range, reading the file once."""

    def __init__(self, lines: Iterator[RequestLine]) -> None:
        self._lines = lines
        self._next: RequestLine | None = None

    def upto(self, last_line: int | None) -> Iterator[RequestLine]:
        """The lines up to ``last_line`` included (all that are left when None)."""
        while True:
            line = self._next if self._next is not None else next(self._lines, None)
            self._next = None
            if line is None:
                return
            if last_line is not None and line.line_number > last_line:
                self._next = line
                return
            yield line


class OrderedWriter:
    """The output side of every merge: ordered results and failed lines written, totals kept."""

    def __init__(self) -> None:
        self.summary = ResultSummary()
        self.written = 0
        self.duplicates = 0
        self.unmatched = 0
        self.first_unmatched = ""

    def write(
        self,
        store: AnswerStore,
        read: Callable[[Answer], bytes],
        lines: Iterable[RequestLine],
        out: IO[bytes],
        failed_out: Writable,
        *,
        shared: bool = False,
        each: Callable[[ResultRecord, Answer | None, bool], None] | None = None,
    ) -> None:
        """Every request of ``lines`` gets one line of ``out``: its best answer in ``store``, or (none)
        its request with ``MISSING_STATUS``; those that did not succeed go to ``failed_out`` as they are.

        :param shared: Identical requests share one answer (see :meth:`AnswerStore.match`).
        :param each: Called with each request's record, answer and whether an identical one came before.
        """
        for line, answer, repeated in store.match(lines, line_digest, shared=shared):
            if answer is None:
                record = missing_record(line.line_number, line.request)
                raw = status_line(line.request, record.status)
            else:
                raw = read(answer) + b"\n"
                label = f"{store.sources[answer.source]} line {answer.line}"
                record = result_record(load_result_object(raw, label, answer.line), line.line_number)
            self.summary.add(record)
            out.write(raw)
            self.written += len(raw)
            if not record.succeeded:
                failed_out.write(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n")
            if each is not None:
                each(record, answer, repeated)

    def leftovers(self, store: AnswerStore, first_source: int = 0, *, shared: bool = False) -> None:
        """Count the result lines of ``store`` no request used (``matching`` defines them)."""
        left = store.leftovers(first_source, shared=shared)
        self.duplicates += left.duplicates
        self.unmatched += left.unmatched
        if left.first_unmatched is not None and not self.first_unmatched:
            source, line = left.first_unmatched
            self.first_unmatched = f"{store.sources[source]} line {line}"

    def report(self, dest: Any, failed: Any) -> MergeSummary:
        if self.duplicates:
            log.warning(
                "%d result lines are second results of a request; kept once in %s", self.duplicates, uri_of(dest)
            )
        if self.unmatched:
            log.warning(
                "%d result lines match no request of the input (first left over: %s); they are not in %s",
                self.unmatched,
                self.first_unmatched,
                uri_of(dest),
            )
        _log_failures(self.summary, uri_of(dest))
        return {
            **self.summary.as_dict(),
            "missing": self.summary.missing,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
            "bytes": self.written,
            "failed_uri": None if failed is None else uri_of(failed),
        }
