"""What a try of the batch operator does with the state an earlier try left beside the destination.

Same input and shard limits (same :func:`~airflow_provider_maas.batch.record.state.fingerprint`): the try
takes the state over and reattaches to its jobs, paying for nothing again. A different input
starts over, but not while jobs of an earlier try of the same clear epoch still run: they would be
abandoned and their requests paid again (:func:`refuse_abandoning_jobs`). Taking a state over
(:func:`take_over`) refuses a create an earlier try left in flight
(:mod:`~airflow_provider_maas.batch.record.create_guard`) and, after a person cleared the task, gives the
failed shards a new chance and restarts the ``timeout``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.cost.spend import count_as_lost
from airflow_provider_maas.batch.cost.spend_before import spend_left_behind
from airflow_provider_maas.batch.record.create_guard import (
    NOT_RECORDED,
    CreateInFlight,
    clear_epoch,
    cleared_since,
    refuse_uncertain_create,
)
from airflow_provider_maas.batch.record.ownership import (
    new_owner,
    refuse_shared_destination,
    refuse_written_by_other,
    take_lease,
)
from airflow_provider_maas.batch.record.recovery import load_whole, state_error
from airflow_provider_maas.batch.record.second_record import (
    STATE_KEY,
    forget_job_names,
    record_mark,
    remember,
    rescued_job_names,
)
from airflow_provider_maas.batch.record.state import BatchState, Round, ShardRecord, ShardStatus, fingerprint
from airflow_provider_maas.batch.round_files import copy_file, input_key, requests_to_send
from airflow_provider_maas.client.naming import task_identity
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import open_source, uri_of

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.batch.inputs.shards import ShardPlan
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.settings import BatchSettings

log = logging.getLogger(__name__)

__all__ = ["STATE_KEY", "remember", "resume_after_deferral", "start_or_resume"]


def start_or_resume(context: Any, journal: BatchJournal, settings: BatchSettings) -> BatchState:
    """The state this try goes on from: the stored one if it is for the same input, else a new plan.

    A stored state that is not whole stops the task (:func:`~airflow_provider_maas.batch.record.recovery.load_whole`), unless
    ``start_over``. Answers an abandoned state downloaded are kept and reused by the new plan.
    """
    refuse_shared_destination(journal)  # before anything is written
    refuse_written_by_other(journal, task_identity(context))
    take_lease(journal, new_owner(context))  # before reading: see batch/record/ownership.py
    journal.on_marked = lambda: record_mark(context, journal)
    state = load_whole(
        context,
        journal,
        start_over=settings.start_over,
        endpoint=settings.endpoint,
        capped=settings.max_cost_usd is not None,
    )
    key = input_key(settings)
    if state is not None and (state.input_key == key or _same_plans(state, settings)):
        take_over(context, journal, state, settings)
        log.info(
            "Resuming a previous try: %d shards done, %d jobs running; no job is recreated (%d shards, state at %s)",
            state.count(ShardStatus.DONE),
            state.count(ShardStatus.RUNNING),
            len(state.shards),
            journal.uri,
        )
    else:
        if state is not None:
            # A create left in flight by an earlier try of this clear epoch is refused all the
            # same: the job it may have made is for the same requests; and so are running jobs,
            # unless a person cleared the task since.
            refuse_abandoning_jobs(context, journal, state)
            take_over(context, journal, state, settings)
            log.warning("The input changed since the batch state at %s was written: starting over", journal.uri)
        # max_cost_usd: not a new budget (jobs of tries without the cap at their worst case, before the answers move)
        left = spend_left_behind(state, settings, journal.part) if state is not None else (0.0, None, None)
        if journal.keep_answers(state.endpoint if state is not None else None):
            log.info("Answers downloaded by the earlier plan are kept under %s and reused", journal.uri)
        state = _start_over(context, journal, settings, key, *left)
        refuse_shared_destination(journal, remove_plan=journal.remove_plan)
    remember(context, journal)
    return state


def _same_plans(state: BatchState, settings: BatchSettings) -> bool:
    """A state written before ``input_key`` was kept: whether round 0 would be planned the same."""
    if state.input_key is not None:
        return False
    with requests_to_send(settings) as to_send, open_source(to_send or settings.source) as handle:
        empty = to_send is not None and not os.path.getsize(to_send)
        return state.fingerprint == fingerprint([] if empty else settings.plan(handle))


def _start_over(
    context: Any,
    journal: BatchJournal,
    settings: BatchSettings,
    key: str,
    spent_before: float,
    prices: dict[str, float] | None,
    tokens: dict[str, int] | None = None,
) -> BatchState:
    with requests_to_send(settings) as to_send:
        with open_source(to_send or settings.source) as handle:
            empty = to_send is not None and not os.path.getsize(to_send)
            plans = [] if empty else settings.plan_first_round(handle)
        round_source = journal.root / "round-0.jsonl" if to_send else None
        state = start(
            context,
            journal,
            plans,
            round_source,
            settings,
            key,
            spent_before=spent_before,
            prices=prices,
            tokens=tokens,
        )
        if to_send and round_source is not None:
            copy_file(to_send, round_source)  # before any upload: a retry finds it
    return state


def resume_after_deferral(
    context: Any, journal: BatchJournal, settings: BatchSettings, job_names: list[str] | None = None
) -> BatchState:
    """The stored state, taken over by this try after the trigger fired (``job_names``: the jobs
    the trigger waited for, named if the state is not whole)."""
    take_lease(journal, new_owner(context))
    journal.on_marked = lambda: record_mark(context, journal)
    state = load_whole(context, journal, start_over=False, names=job_names or [], endpoint=settings.endpoint)
    if state is None:
        # Not retried automatically: a retry would find no state either and pay for every shard again.
        raise state_error(
            "the task resumed after a deferral, but the state is gone (removed by hand or by a lifecycle rule, "
            "or a destination on one worker's local disk while the task resumed on another)",
            journal,
            context,
            job_names or [],
        )
    state.resumes += 1
    take_over(context, journal, state, settings)
    return state


def start(
    context: Any,
    journal: BatchJournal,
    plans: list[ShardPlan],
    source: ObjectStoragePath | None,
    settings: BatchSettings,
    key: str | None = None,
    *,
    spent_before: float = 0.0,
    prices: dict[str, float] | None = None,
    tokens: dict[str, int] | None = None,
) -> BatchState:
    """A new state for ``plans`` (round 0's requests in ``source``, or the operator's source if
    None), stored in ``journal`` in place of any earlier one (``spent_before``: what that one spent,
    at ``prices``; ``tokens``: the worst case of its jobs no prices were known for)."""
    state = BatchState(
        fingerprint=fingerprint(plans),
        identity=".".join(task_identity(context)),
        rounds=[Round(0, tuple(plans), source=uri_of(source) if source is not None else None)],
        deadline=settings.new_deadline(),
        clear_epoch=clear_epoch(context),
        input_key=key,
        spent_before_usd=spent_before,
        endpoint=settings.endpoint,
        prices=prices,
        tokens_before=tokens,
    )
    forget_job_names(context)  # names saved for a discarded plan's shards must not reattach this plan's
    journal.create(state)
    log.info("Planned %d shards for %d requests; state at %s", len(plans), sum(p.requests for p in plans), journal.uri)
    return state


def refuse_abandoning_jobs(context: Any, journal: BatchJournal, state: BatchState) -> None:
    """The input or the shard settings changed since an earlier try of this clear epoch: its
    running jobs would be abandoned and their requests paid for again, so stop and say so."""
    running = sorted(state.with_status(ShardStatus.RUNNING), key=lambda r: r.key)
    if not running or cleared_since(state.clear_epoch, context):
        return
    raise MaaSInputError(
        f"The input or the shard settings (max_requests_per_file, max_bytes_per_file) changed since an "
        f"earlier try of this task created {len(running)} job(s) that are still running (e.g. job "
        f"{running[0].job_name} for shard {running[0].key}); starting over would pay for the same requests "
        f"again. Restore the input and settings to reattach to them, or clear the task to start over (the "
        f"running jobs keep running and are billed). Batch state: {journal.uri}"
    )


def take_over(context: Any, journal: BatchJournal, state: BatchState, settings: BatchSettings) -> None:
    """Make the stored state this try's: refuse creates left in flight (unless the task was
    cleared since); after a clear, failed shards get a new chance and the timeout restarts."""
    cleared = cleared_since(state.clear_epoch, context)
    changes = reattach_saved_jobs(context, journal, state)
    creating = sorted(state.with_status(ShardStatus.CREATING), key=lambda r: r.key)
    for record in creating:
        others = f" ({len(creating) - 1} more shard(s) are in the same case)" if len(creating) > 1 else ""
        marker = CreateInFlight(record.file_name, record.display_name, record.clear_epoch)
        refuse_uncertain_create(
            marker, context, what=f"shard {record.key} (file {record.file_name!r}){others}", unknown=NOT_RECORDED
        )
        # Cleared: the job may exist and be billed; its reservation stays spent (max_cost_usd).
        changes.append(count_as_lost(record).but(status=ShardStatus.PENDING))
    if cleared:
        log.info("The task was cleared since the last try: failed shards are submitted again")
        changes.extend(
            r.but(status=ShardStatus.PENDING, attempts=0, error=None) for r in state.with_status(ShardStatus.FAILED)
        )
        state.deadline = settings.new_deadline()
    state.clear_epoch = clear_epoch(context)
    state.endpoint = state.endpoint or settings.endpoint  # a state written before it was kept
    for record in changes:
        state.apply(record)
    journal.append(state, changes, meta=True)
    forget_job_names(context)


def reattach_saved_jobs(context: Any, journal: BatchJournal, state: BatchState) -> list[ShardRecord]:
    """Shards whose create answered but whose journal write failed get their job back from the
    names kept in ``task_state_store`` (applied to ``state``; returned to be journalled)."""
    changes = []
    for key, job_name in sorted(rescued_job_names(context, journal.uri).items()):
        record = state.shards.get(key)
        if record is not None and record.job_name != job_name and record.status is ShardStatus.CREATING:
            log.warning(
                "Shard %s: reattaching to job %s (kept in task_state_store after a failed write)", key, job_name
            )
            changes.append(record.but(status=ShardStatus.RUNNING, job_name=job_name))
            state.apply(changes[-1])
    return changes
