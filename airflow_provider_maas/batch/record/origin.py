"""Which ENDPOINT (and so which model) wrote a results file: a small record beside it, so that
``reuse_results`` takes answers of the same model only.

The results file keeps the service's bytes exactly; the batch and download operators write
``.<name>.origin.json`` (``{"endpoint": ...}``) beside it. A results file whose record names
another ENDPOINT holds answers of another model (the ENDPOINT fixes the model): by default they are
left unused, and counted. A file without a record (written by hand or another tool, by a provider
version before the record, or copied without it) stops the task before anything is sent
(:func:`refuse_unknown_origin`): its model is not known, and neither reusing it nor paying again
for its answers is safe to decide alone. ``reuse_other_models=True`` reuses both kinds.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.answer_lines import OK_TAILS
from airflow_provider_maas.batch.inputs.lines import iter_line_batches
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import atomic_writer, to_path, uri_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

#: Largest record read (a record is a few dozen bytes; with ``written_by``, a few hundred).
MAX_RECORD = 4096
#: The record's name inside a ``kept/<n>/`` folder of answers a start-over kept.
KEPT_RECORD = "origin.json"


def origin_path(results: Any) -> ObjectStoragePath:
    """Where the record of the results file ``results`` is: ``.<name>.origin.json`` beside it."""
    path = to_path(results, what="results file")
    return path.parent / f".{path.name}.origin.json"


def write_origin(results: Any, endpoint: Any) -> None:
    """Record that ``endpoint`` (a string, or anything with an ``endpoint`` attribute) wrote
    ``results``. Never fails the task: a missing record only means the file's model is not known later."""
    _write_record(origin_path(results), endpoint)


def _write_record(record: ObjectStoragePath, endpoint: Any) -> None:
    try:
        endpoint = endpoint if isinstance(endpoint, str) or endpoint is None else endpoint.endpoint
        if not endpoint:
            return
        with atomic_writer(record) as out:
            out.write(json.dumps({"endpoint": endpoint}).encode())
    except Exception as err:
        log.warning("Could not record the ENDPOINT in %s: %s: %s", uri_of(record), type(err).__name__, err)


def read_origin(results: Any) -> str | None:
    """The ENDPOINT recorded for ``results``, or None (no record, or one that cannot be read)."""
    return _read_record(origin_path(results))


def kept_record(folder: ObjectStoragePath) -> ObjectStoragePath:
    """The record of the ENDPOINT that paid for the answers a start-over kept in ``folder``
    (``kept/<n>/`` of a batch state, :meth:`~airflow_provider_maas.batch.record.journal.BatchJournal.keep_answers`)."""
    return folder / KEPT_RECORD


def write_kept_origin(folder: ObjectStoragePath, endpoint: str | None) -> None:
    """Record that ``endpoint`` paid for the answers kept in ``folder`` (nothing if not known:
    such answers are then of unknown model, see :func:`refuse_unknown_origin`)."""
    _write_record(kept_record(folder), endpoint)


def kept_origin(part: ObjectStoragePath) -> str | None:
    """The ENDPOINT that paid for a kept results part (its folder's record), or None."""
    return _read_record(kept_record(part.parent))


def _read_record(path: ObjectStoragePath) -> str | None:
    try:
        with path.open("rb") as handle:
            record = json.loads(handle.read(MAX_RECORD))
    except Exception:
        return None
    endpoint = record.get("endpoint") if isinstance(record, dict) else None
    return endpoint if isinstance(endpoint, str) else None


def of_other_models(paths: Sequence[ObjectStoragePath], endpoint: str | None) -> list[ObjectStoragePath]:
    """The files of ``paths`` whose record names an ENDPOINT other than ``endpoint``."""
    if endpoint is None:
        return []
    return [path for path in paths if read_origin(path) not in (None, endpoint)]


def split_kept(
    parts: Sequence[ObjectStoragePath], endpoint: str | None
) -> tuple[list[ObjectStoragePath], list[ObjectStoragePath]]:
    """The kept results ``parts`` (answers of abandoned plans of this batch) paid for on ``endpoint``,
    and those of another ENDPOINT; stops (before anything is sent) on parts whose folder has no record."""
    folders = {uri_of(part.parent): kept_origin(part) for part in parts}  # one record per folder
    origins = {part: folders[uri_of(part.parent)] for part in parts}
    unknown = sorted(folder for folder, origin in folders.items() if origin is None)
    if unknown:
        raise MaaSInputError(
            f"Answers kept by a start-over under {', '.join(unknown)}: no record of the ENDPOINT (model) that paid for "
            f"them ({KEPT_RECORD} in the folder; absent when kept by an earlier provider version or when it could not "
            "be written). Answers of another model are not reused by default. If they are of this batch's model, set "
            "reuse_other_models=True; otherwise delete the folder. Nothing was sent."
        )
    same = [part for part, origin in origins.items() if origin == endpoint]
    return same, [part for part in parts if origins[part] != endpoint]


def refuse_unknown_origin(paths: Sequence[ObjectStoragePath]) -> None:
    """Stop (before anything is sent) on files of ``paths`` that carry no record of their ENDPOINT."""
    unknown = of_unknown_origin(paths)
    if unknown:
        raise MaaSInputError(
            f"reuse_results {', '.join(uri_of(path) for path in unknown)}: no record of the ENDPOINT (model) that "
            "wrote it (.<name>.origin.json beside the file, written by this provider's batch and download "
            "operators; absent for a file written by hand, by another tool or an earlier provider version, or "
            "copied without it). Answers of another model are not reused by default. If its answers are of this "
            "batch's model, set reuse_other_models=True; otherwise remove it from reuse_results. Nothing was sent."
        )


def of_unknown_origin(paths: Sequence[ObjectStoragePath]) -> list[ObjectStoragePath]:
    """The files of ``paths`` without a record of the ENDPOINT that wrote them (their model is not known)."""
    return [path for path in paths if read_origin(path) is None]


def count_answers(paths: Sequence[ObjectStoragePath]) -> int:
    """Successful result lines in ``paths`` (the service's own layout, read as bytes)."""
    count = 0
    for path in paths:
        with path.open("rb") as handle:
            for lines, _ in iter_line_batches(handle):
                count += sum(1 for line in lines if line.rstrip().endswith(OK_TAILS))
    return count
