"""The files of each round of a batch: what round 0 sends, what each round answered, what the next
round sends.

Round 0 sends the input less the requests ``reuse_results`` answers and the repeats of identical
requests (:func:`requests_to_send`). Once every shard is done, the requests that failed for a reason
worth retrying, or got no result, make the next round (:func:`next_round`), up to
``request_retries`` rounds. :mod:`~airflow_provider_maas.batch.answers.pay_once` holds the stream logic; this
module gives it its inputs and keeps its outputs in files beside the batch state.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.batch.answers.parts import concatenate, write_failure_part
from airflow_provider_maas.batch.answers.pay_once import all_succeeded, write_requests_to_send, write_retries
from airflow_provider_maas.batch.inputs.lines import ResultsFormatError
from airflow_provider_maas.batch.inputs.rewrite import write_rewritten
from airflow_provider_maas.batch.inputs.shards import check_unchanged, source_label
from airflow_provider_maas.batch.record.state import Round, ShardKey, ShardStatus
from airflow_provider_maas.exceptions import MaaSInputChangedError, MaaSInputError
from airflow_provider_maas.storage import CHUNK_SIZE, atomic_writer, open_source, uri_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState, ShardRecord
    from airflow_provider_maas.batch.settings import BatchSettings

log = logging.getLogger(__name__)


def input_key(settings: BatchSettings) -> str:
    """Digest of the raw input and of the settings that shape round 0 (not of ``reuse_results``: the
    round-0 requests a state stores stay valid when the reused files change between tries). One
    streaming SHA-256 pass over the source, in :data:`CHUNK_SIZE` chunks: constant memory."""
    digest = hashlib.sha256(
        f"{settings.max_requests_per_file}:{settings.max_bytes_per_file}:{settings.deduplicate};".encode()
    )
    with open_source(settings.source) as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def check_source(settings: BatchSettings, state: BatchState, *, before: str) -> None:
    """The source still holds the requests this batch planned, ``before`` a step that reads it (a
    retry round's requests, the merge's pairing): round 0 planned over the source itself is checked
    shard by shard against the plan's SHA-256; a filtered round 0 (``reuse_results``, ``deduplicate``)
    against the digest of the whole source kept in the state (``input_key``).

    :raises MaaSInputChangedError: naming the source; nothing is sent or written.
    """
    if state.rounds[0].source is None:
        check_unchanged(settings.source, state.rounds[0].plans)
    elif state.input_key is not None and input_key(settings) != state.input_key:
        raise MaaSInputChangedError(
            f"{source_label(settings.source, 'source')} changed since it was planned (the SHA-256 of the whole "
            f"file differs from the one recorded when round 0 was sent; did an upstream task rewrite it?), so "
            f"this task stops {before}: answers would be paired with requests that were not sent. The answers "
            "downloaded so far are kept in the batch state. Restore the file and clear the task (nothing is paid "
            "again), or clear it with the new file to start over (jobs already created keep running and are billed)"
        )


#: Opens a results file (reused, or of a round) for the stream logic.
open_results = functools.partial(open_source, what="results file")


def answers_opener(settings: BatchSettings) -> Callable[[Any], Any]:
    """How the rounds and the merge open results files: ``reuse_results`` files with their
    requests given this run's rewrite (``settings.rewrite``: the ceiling of a cap, the schema; see
    :mod:`~airflow_provider_maas.batch.inputs.rewrite`), then through the ``response_schema`` check (an
    earlier answer that does not match it is not reused); the batch's own results (already
    checked when downloaded) as they are."""
    steps: list[Callable[[IO[bytes], IO[bytes]], int]] = []
    if settings.rewrite:
        steps.append(functools.partial(write_rewritten, rewrite=settings.rewrite, reused=True))
    if settings.response_schema is not None:
        from airflow_provider_maas.batch.answers.schema import AnswerCheck

        steps.append(AnswerCheck(settings.response_schema).check_lines)
    if not steps:
        return open_results
    reused = {uri_of(path) for path in settings.reuse_paths()}

    @contextlib.contextmanager
    def opener(item: Any) -> Iterator[Any]:
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(open_results(item))
            for step in steps if uri_of(item) in reused else ():
                copy = stack.enter_context(tempfile.TemporaryFile())
                step(handle, copy)
                copy.seek(0)
                handle = copy
            yield handle

    return opener


class RoundResults(NamedTuple):
    """One results file of a round: what its jobs answered, or (``jobs_failed``) the requests of
    its shards whose every job failed."""

    round: int
    path: ObjectStoragePath
    jobs_failed: bool


@contextlib.contextmanager
def _scratch_file(prefix: str) -> Iterator[str]:
    """A local temporary ``.jsonl`` file's path, removed on exit."""
    handle, path = tempfile.mkstemp(prefix=prefix, suffix=".jsonl")
    os.close(handle)
    try:
        yield path
    finally:
        os.unlink(path)


def copy_file(local: str, target: ObjectStoragePath) -> None:
    """Copy a local file to ``target``, atomically."""
    with open(local, "rb") as handle, atomic_writer(target) as out:
        shutil.copyfileobj(handle, out, CHUNK_SIZE)


@contextlib.contextmanager
def requests_to_send(settings: BatchSettings) -> Iterator[str | None]:
    """Round 0's requests in a local temporary file, when reuse or deduplication leaves some out;
    None when every input request is to be sent (the source is then uploaded as it is)."""
    reuse = settings.reuse_paths()
    with _scratch_file("maas-send-") as path:
        with open(path, "wb") as out, open_source(settings.source) as source:
            try:
                coverage = write_requests_to_send(
                    source, out, reuse=reuse, opener=answers_opener(settings), deduplicate=settings.deduplicate
                )
            except ResultsFormatError as err:
                raise MaaSInputError(f"reuse_results: {err}") from None
        if coverage.reused or coverage.deduplicated:
            log.info(
                "%d requests: %d answered by reuse_results, %d identical to an earlier one (sent once), %d to send",
                coverage.requests,
                coverage.reused,
                coverage.deduplicated,
                coverage.to_send,
            )
        yield path if coverage.reused or coverage.deduplicated else None


def write_failure_parts(
    settings: BatchSettings, journal: BatchJournal, state: BatchState, records: Iterable[ShardRecord]
) -> None:
    """The results part of each shard of ``records`` (whose every job failed): each of its
    requests with the job's error as its status."""
    for record in records:
        source = state.rounds[record.key.round].source or settings.source
        write_failure_part(source, state.plan(record.key), record.error or "the job failed", journal.part(record.key))


def round_results(settings: BatchSettings, journal: BatchJournal, state: BatchState, number: int) -> list[RoundResults]:
    """Round ``number``'s results in one file per kind: the parts its jobs answered, then (if
    any) those of its shards whose every job failed, each request carrying the job's error."""
    records = sorted((r for r in state.shards.values() if r.key.round == number), key=lambda r: r.key)
    failed = [r for r in records if r.status is ShardStatus.FAILED]
    write_failure_parts(settings, journal, state, failed)
    files = []
    for kind, chosen in (
        ("answered", [r for r in records if r.status is not ShardStatus.FAILED]),
        ("failed", failed),
    ):
        if chosen or kind == "answered":
            combined = journal.root / f"results-r{number}-{kind}.jsonl"
            concatenate((journal.part(r.key) for r in chosen), combined)
            files.append(RoundResults(number, combined, jobs_failed=kind == "failed"))
    return files


def all_round_results(settings: BatchSettings, journal: BatchJournal, state: BatchState) -> list[RoundResults]:
    """The results files of every round so far, in round order."""
    return [item for n in range(len(state.rounds)) for item in round_results(settings, journal, state, n)]


def next_round(settings: BatchSettings, journal: BatchJournal, state: BatchState) -> list[ShardKey]:
    """Once every shard is done: gather the requests to retry into a new round, stored in the
    journal; returns its shards (none when no round is due or nothing is to retry)."""
    number = len(state.rounds)
    if number > settings.request_retries:
        return []
    check_source(settings, state, before=f"before retry round {number}")  # its requests are read from it
    results = all_round_results(settings, journal, state)
    last = results[-1]  # the last round's answered results; a failed shard adds a file after it
    with open_source(last.path) as handle_last:
        if not last.jobs_failed and all_succeeded(handle_last, sum(p.requests for p in state.rounds[-1].plans)):
            return []  # every request of the last round answered: nothing to retry
    with _scratch_file("maas-retry-") as path:
        with open(path, "wb") as out, open_source(settings.source) as source:
            count = write_retries(
                source,
                out,
                reuse=settings.reuse_paths(),
                results=[item.path for item in results],
                opener=answers_opener(settings),
                should_retry=settings.retries,
                final=[index for index, item in enumerate(results) if item.jobs_failed],
                deduplicate=settings.deduplicate,
            )
        if not count:
            return []
        with open(path, "rb") as handle_in:
            plans = settings.plan(handle_in)
        target = journal.root / f"round-{number}.jsonl"
        copy_file(path, target)
    journal.add_round(state, Round(number, tuple(plans), source=uri_of(target)))
    log.warning(
        "Retry round %d of %d: %d failed or missing requests sent again in %d shards",
        number,
        settings.request_retries,
        count,
        len(plans),
    )
    return [ShardKey(number, plan.index) for plan in plans]
