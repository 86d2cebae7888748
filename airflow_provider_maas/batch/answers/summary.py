"""The end of a batch: every answer written to the destination in input order, the summary that
counts them (XCom ``summary``), and whether the task fails.

A batch that sent every input request once, in round 0, is merged shard by shard (memory follows
the largest shard). Otherwise every request's best answer is chosen among the rounds, the reused
results and identical requests (:func:`~airflow_provider_maas.batch.answers.pay_once.merge_answers`).
:func:`check_outcome` runs once every output is written.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_provider_maas.batch.answers.merge import failed_path_for, merge_shard_results
from airflow_provider_maas.batch.answers.pay_once import answer_origins, merge_answers
from airflow_provider_maas.batch.answers.schema import count_invalid
from airflow_provider_maas.batch.cost.prices import usd
from airflow_provider_maas.batch.record.origin import count_answers, write_origin
from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.batch.round_files import all_round_results, answers_opener, check_source, write_failure_parts
from airflow_provider_maas.exceptions import MaaSJobFailedError
from airflow_provider_maas.storage import atomic_writer, open_source, to_path, uri_of
from airflow_provider_maas.storage.writes import atomic_writer_if_written

if TYPE_CHECKING:
    from airflow_provider_maas.batch.answers.summary_types import BatchSummary, CostFields, MergeSummary, Origins
    from airflow_provider_maas.batch.cost.budget import SpendGate
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState
    from airflow_provider_maas.batch.round_files import RoundResults
    from airflow_provider_maas.batch.settings import BatchSettings

log = logging.getLogger(__name__)

#: Shard errors quoted in the summary and in the error of a batch where nothing succeeded.
MAX_QUOTED_ERRORS = 5


def write_outputs(
    settings: BatchSettings, journal: BatchJournal, state: BatchState, gate: SpendGate | None = None
) -> BatchSummary:
    """Write the destination and the failed file of a finished batch; returns the summary, with what
    the budget, the canary and the answer checks of ``gate`` add (:func:`cost_fields`)."""
    records = sorted(state.shards.values(), key=lambda r: r.key)
    failed = [r for r in records if r.status is ShardStatus.FAILED]
    if len(state.rounds) == 1 and state.rounds[0].source is None:
        # Every input request was sent, once, in round 0: the shard-by-shard merge (memory
        # follows the largest shard) suffices.
        write_failure_parts(settings, journal, state, failed)
        plans = [state.plan(r.key) for r in records]
        parts = ((journal.part(r.key), plan.first_line, plan.last_line) for r, plan in zip(records, plans, strict=True))
        sha256 = [plan.sha256 for plan in plans]  # the source must still hold the requests that were sent
        merged = merge_shard_results(parts, settings.source, settings.destination, sha256=sha256)
        origins = answer_origins(merged, prices=settings.prices)
        round_succeeded = [merged["succeeded"]]
    else:
        check_source(settings, state, before="before writing the results")
        merged, origins, round_succeeded = merge_rounds(settings, all_round_results(settings, journal, state))
    others = settings.reuse_of_other_models()
    skipped = count_answers(others)
    if others:
        log.warning(
            "%d answers of reuse_results were not reused: %s were written by another ENDPOINT (another model); "
            "set reuse_other_models=True to reuse them",
            skipped,
            ", ".join(uri_of(path) for path in others),
        )
    write_origin(settings.destination, settings)
    return {
        **merged,
        **origins,
        "reuse_skipped_other_model": skipped,
        "shards": len(records),
        "failed_shards": len(failed),
        "shard_errors": [f"shard {r.key}: {r.error}" for r in failed[:MAX_QUOTED_ERRORS]],
        "jobs": sum(r.attempts for r in records),
        "sent": sum(state.plan(r.key).requests * r.attempts for r in records),  # every create sent, retries included
        "resumes": state.resumes,
        "retry_rounds": [
            {"round": n, "retried": sum(p.requests for p in state.rounds[n].plans), "succeeded": succeeded}
            for n, succeeded in enumerate(round_succeeded)
            if n
        ],
        **cost_fields(settings, gate, state),
    }


def cost_fields(settings: BatchSettings, gate: SpendGate | None, state: BatchState) -> CostFields:
    """What the summary adds with a ``gate`` (``batch/cost/budget.py``): spend, reservation, cap, canary;
    with ``response_schema``, ``invalid_output``: the answers in the destination that failed it."""
    if gate is None:
        return {}
    fields = gate.summary_fields(state)
    if settings.response_schema is not None:
        with open_source(settings.destination) as handle:
            fields["invalid_output"] = count_invalid(handle)
    return fields


def merge_rounds(settings: BatchSettings, results: list[RoundResults]) -> tuple[MergeSummary, Origins, list[int]]:
    """Every request's best answer in input order (see ``answers.pay_once.merge_answers``), atomically: what
    it counted, where the answers came from, each round's successes."""
    dest = to_path(settings.destination, what="destination")
    failed = failed_path_for(dest)
    with (
        open_source(settings.source) as source,
        atomic_writer(dest) as out,
        atomic_writer_if_written(failed) as failed_out,
    ):
        counts, origins, round_succeeded = merge_answers(
            source,
            out,
            failed_out,
            reuse=settings.reuse_paths(),
            results=[item.path for item in results],
            rounds=[item.round for item in results],
            opener=answers_opener(settings),
            deduplicate=settings.deduplicate,
            prices=settings.prices,
        )
    failed_uri = uri_of(failed) if failed_out.written else None  # no failed file when none failed
    summary: MergeSummary = {**counts, "failed_uri": failed_uri}
    if summary["unmatched"]:
        log.warning(
            "%d result lines match no request of the input; they are not in %s", summary["unmatched"], uri_of(dest)
        )
    if summary["failed"]:
        log.warning(
            "%d of %d requests failed or are missing; they are in %s",
            summary["failed"],
            summary["requests"],
            summary["failed_uri"],
        )
    if origins["reused"] or origins["deduplicated"]:
        log.info(
            "Answers: %d reused from reuse_results, %d shared by identical requests",
            origins["reused"],
            origins["deduplicated"],
        )
    if "cost_usd" in origins and "cost_avoided_usd" in origins:
        avoided = origins["cost_avoided_usd"]
        log.info(
            "Cost at the given prices: %s (avoided: %s by reuse, %s by sending identical requests once)",
            *(usd(value) for value in (origins["cost_usd"], avoided["reused"], avoided["deduplicated"])),
        )
    if summary["cost_unknown_answers"]:
        log.warning(
            "%d answers have no usable token counts (no usageMetadata, or a count that is negative or not an "
            "integer): token totals leave them out and the cost is unknown",
            summary["cost_unknown_answers"],
        )
    return summary, origins, round_succeeded


def check_outcome(summary: BatchSummary, dest_uri: str, *, fail_on_partial: bool) -> None:
    """Once every output is written: log the failed shards; raise :class:`MaaSJobFailedError` if no
    request succeeded, or (``fail_on_partial``) if any failed."""
    failed, shards, reasons = summary["failed_shards"], summary["shards"], "; ".join(summary["shard_errors"])
    if failed:
        log.error("%d of %d shards failed: %s", failed, shards, reasons)
    if summary["requests"] and not summary["succeeded"]:
        raise MaaSJobFailedError(
            f"No request succeeded: {failed} of {shards} shards failed ({reasons}). "
            f"Every request is in {summary['failed_uri']} with its reason in {dest_uri}. Clearing the task "
            "submits the failed shards again."
        )
    if fail_on_partial and summary["failed"]:
        raise MaaSJobFailedError(
            f"{summary['failed']} of {summary['requests']} requests failed (fail_on_partial=True); "
            f"results are in {dest_uri}, failed requests in {summary['failed_uri']}"
        )
