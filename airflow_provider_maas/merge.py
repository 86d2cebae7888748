"""Results files as people use them: summarised, in input order, failures set aside to resubmit.

Used by the download, merge and one-task operators alike. Works on any storage
(local paths, URIs, ``ObjectStoragePath``); every output is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from airflow_provider_maas.jsonl import iter_request_lines
from airflow_provider_maas.ordering import ResultIndex, line_reader, order_results
from airflow_provider_maas.results import (
    ResultSummary,
    iter_lines,
    normalise_request,
    parse_result_line,
)
from airflow_provider_maas.storage import atomic_writer, open_source, to_path, uri_of

log = logging.getLogger(__name__)


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


def summarise_results(results: Any, *, failed_destination: Any | None = None) -> dict[str, Any]:
    """Summarise one results file; write its failed requests (input format) when asked.

    Failed requests are written as ``{"request": ...}`` lines with the service's null-valued
    fields removed, ready to resubmit. A line that repeats an earlier line byte for byte is counted
    in ``duplicates`` only, not as another request. Returns the summary dict (see
    ``ResultSummary``) plus ``missing``, ``duplicates`` and ``bytes``.
    """
    import hashlib

    summary = ResultSummary()
    seen: set[bytes] = set()
    duplicates = 0
    with contextlib.ExitStack() as stack:
        failed_out = stack.enter_context(atomic_writer(to_path(failed_destination))) if failed_destination else None
        handle = stack.enter_context(open_source(results, what="results file"))
        for line_number, _, line in iter_lines(handle):
            digest = hashlib.blake2b(line, digest_size=16).digest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            record = parse_result_line(line, line_number)
            summary.add(record)
            if failed_out is not None and not record.succeeded and record.request is not None:
                failed_out.write(
                    json.dumps({"request": normalise_request(record.request)}, ensure_ascii=False).encode() + b"\n"
                )
        size = handle.tell() if handle.seekable() else 0
    _log_failures(summary, "the results")
    result: dict[str, Any] = summary.as_dict()
    result.update(missing=summary.missing, duplicates=duplicates, bytes=size)
    return result


def compare_with_job(summary: dict[str, Any], job: dict[str, Any], *, ordered: bool) -> list[str]:
    """Check a download's summary against the job's ``completionStats``; return the differences.

    Requests the service counted but the results file does not hold are added to ``missing`` and
    ``failed`` (and ``requests``) unless ``ordered`` (then the input file already counted them).
    Sets ``expected_requests`` (the service's count, or None when it sent none). A null
    ``failedCount`` beside a ``successfulCount`` is 0, as the service sends it.
    """
    from airflow_provider_maas.states import completion_counts

    succeeded, failed = completion_counts(job)
    if succeeded is not None and failed is None:
        failed = 0
    expected = succeeded + failed if succeeded is not None and failed is not None else None
    summary["expected_requests"] = expected
    differences: list[str] = []
    if expected is not None:
        if not ordered and expected > summary["requests"]:
            absent = expected - summary["requests"]
            summary.update(requests=expected, failed=summary["failed"] + absent, missing=summary["missing"] + absent)
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
    if summary.get("unmatched"):
        differences.append(f"{summary['unmatched']} result lines match no request of the input")
    return differences


def extract_images_beside(results: Any) -> list[str]:
    """Write the inline images of ``results`` to ``<stem>_images/`` beside it; return their URIs."""
    from airflow_provider_maas.results import extract_images

    path = to_path(results, what="results file")
    folder = path.parent / f"{path.stem}_images"
    uris: list[str] = []

    def write(name: str, data: bytes) -> None:
        target = folder / name
        with atomic_writer(target) as out:
            out.write(data)
        uris.append(uri_of(target))

    with open_source(path, what="results file") as handle:
        extract_images(handle, write)
    if uris:
        log.info("Extracted %d images to %s", len(uris), uri_of(folder))
    return uris


def merge_results(sources: list[Any], requests: Any, destination: Any) -> dict[str, Any]:
    """Merge shard results into ``destination`` in the order of the ``requests`` file.

    Each request is matched to its result by normalised request (identical requests pair in any
    order). Requests that failed or have no result are written, as their original input lines, to
    ``<destination stem>.failed.jsonl``. Results matching no request are counted (``unmatched``)
    and logged, never silently dropped from the count. Returns the summary dict plus ``missing``,
    ``unmatched``, ``bytes`` and ``failed_uri``.
    """
    dest = to_path(destination, what="destination")
    failed = failed_path_for(dest)
    index = ResultIndex()
    summary = ResultSummary()
    written = 0
    with contextlib.ExitStack() as stack:
        files = {}
        for number, source in enumerate(sources):
            handle = stack.enter_context(open_source(source, what=f"results file #{number}"))
            index.add(number, handle)
            files[number] = handle
        requests_handle = stack.enter_context(open_source(requests, what="requests file"))
        out = stack.enter_context(atomic_writer(dest))
        failed_out = stack.enter_context(atomic_writer(failed))
        for item in order_results(iter_request_lines(requests_handle), index, line_reader(files)):
            summary.add(item.record)
            if item.result_raw is not None:
                out.write(item.result_raw)
                written += len(item.result_raw)
            if item.failed:
                failed_out.write(item.request_raw)
        unmatched = index.unmatched()
        duplicates = index.repeats()
    if duplicates:
        log.warning("%d result lines are second results of a request; kept once in %s", duplicates, uri_of(dest))
    if len(unmatched) > duplicates:
        log.warning(
            "%d result lines match no request of the input (first left over: results #%s line %d); they are not in %s",
            len(unmatched) - duplicates,
            unmatched[0].source_id,
            unmatched[0].line_number,
            uri_of(dest),
        )
    _log_failures(summary, uri_of(dest))
    result: dict[str, Any] = summary.as_dict()
    result.update(
        missing=summary.missing,
        duplicates=duplicates,
        unmatched=len(unmatched) - duplicates,
        bytes=written,
        failed_uri=uri_of(failed),
    )
    return result
