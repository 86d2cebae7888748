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

from airflow_provider_maas.batch.lines import iter_line_batches
from airflow_provider_maas.batch.matching import OK_TAILS
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import atomic_writer, to_path, uri_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

#: Largest record read (a record is a few dozen bytes; with ``written_by``, a few hundred).
MAX_RECORD = 4096


def origin_path(results: Any) -> ObjectStoragePath:
    """Where the record of the results file ``results`` is: ``.<name>.origin.json`` beside it."""
    path = to_path(results, what="results file")
    return path.parent / f".{path.name}.origin.json"


def write_origin(results: Any, endpoint: Any) -> None:
    """Record that ``endpoint`` (a string, or anything with an ``endpoint`` attribute) wrote
    ``results``. Never fails the task: a missing record only means the file's model is not known later."""
    try:
        endpoint = endpoint if isinstance(endpoint, str) else endpoint.endpoint
        if not endpoint:
            return
        with atomic_writer(origin_path(results)) as out:
            out.write(json.dumps({"endpoint": endpoint}).encode())
    except Exception as err:
        log.warning("Could not record the ENDPOINT of %s: %s: %s", uri_of(to_path(results)), type(err).__name__, err)


def read_origin(results: Any) -> str | None:
    """The ENDPOINT recorded for ``results``, or None (no record, or one that cannot be read)."""
    try:
        with origin_path(results).open("rb") as handle:
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
