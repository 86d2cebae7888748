"""Fail closed on the record of paid work: the batch state is whole, or the task stops and says so.

The service has no list call: the batch state beside the destination (:mod:`.journal`) is the only
record of which jobs were paid for. When any evidence of paid work is there (a pointer in
``task_state_store``, journal objects, job names saved after a failed write) and the record is not
whole, the task creates nothing and fails with :class:`~airflow_provider_maas.exceptions.MaaSStateError`
naming the state's location, what is wrong, every job name still known, and the way on:
``start_over=True`` (a person's explicit choice; the named jobs are abandoned, answers already
downloaded are kept and reused).

A second record (:data:`RECORD`, where :mod:`.task_record` decides: ``task_state_store`` on Airflow
>= 3.3, an Airflow Variable ``maas_batch.<digest>`` before): the state's location and the newest
journal object that held "creating" markers (:func:`remember`: a journal that ends before it lost
its newest objects, refused), and the job names a failed journal write could not store
(:func:`save_job_names`, in a compact form), to which the next try reattaches
(:func:`rescued_job_names`). The Variable is removed once the task succeeded (:func:`forget`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.create_guard import clear_round, cleared_since
from airflow_provider_maas.batch.journal import StateDamaged
from airflow_provider_maas.batch.ownership import destination_of, written_record
from airflow_provider_maas.batch.state import STATE_VERSION, ShardKey, ShardRecord, ShardStatus
from airflow_provider_maas.batch.task_record import BATCH_VARIABLE_PREFIX, forget_record, task_record
from airflow_provider_maas.exceptions import MaaSError, MaaSStateError, MaaSStateWriteError
from airflow_provider_maas.storage import to_path, uri_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from airflow_provider_maas.batch.journal import BatchJournal, MarkNotRecorded
    from airflow_provider_maas.batch.state import BatchState

log = logging.getLogger(__name__)

#: Key in ``context["task_state_store"]`` (Airflow >= 3.3): where the batch state is, and its format.
STATE_KEY = "maas_batch_state"
#: Key in ``task_state_store``: job names created but not yet journalled (a failed write).
JOBS_KEY = "maas_batch_jobs"
#: Largest value stored under :data:`JOBS_KEY` (Airflow warns above 65,535 bytes).
MAX_SAVED_BYTES = 60_000
#: The second record, as messages name it.
RECORD = "task_state_store (an Airflow Variable before Airflow 3.3)"
#: Job names quoted in a message (all of them are logged).
MAX_QUOTED_NAMES = 50

#: The documented way on, named by every :class:`MaaSStateError` about a state that is not whole.
WAY_ON = (
    "To start over anyway (a person's choice: the jobs named here are abandoned, keep running on the "
    "service and are billed; answers already downloaded are kept and reused), set start_over=True on "
    "the task (templated, e.g. start_over=\"{{ params.get('start_over', False) }}\") and clear it; "
    "set it back afterwards. See 'Damaged state' in docs/reliability.md."
)


def _store(context: Any) -> Any:
    return task_record(context, BATCH_VARIABLE_PREFIX)


def forget(context: Any) -> None:
    """The batch succeeded, its results are written: the Variable (Airflow < 3.3) goes."""
    forget_record(context, BATCH_VARIABLE_PREFIX)


def state_error(problem: str, journal: BatchJournal, context: Any, *names: Iterable[str]) -> MaaSStateError:
    """The error for a batch state that is not whole: ``problem``, the location, every job name
    known from the journal's readable objects, ``names`` and :data:`RECORD`, and the way on."""
    known: dict[str, None] = {}
    for group in (*names, journal.job_names_found(), _saved_names(context)):
        known.update(dict.fromkeys(group))
    listed = list(known)
    if listed:
        log.error("Job names known for the batch state at %s: %s", journal.uri, ", ".join(listed))
        shown = ", ".join(listed[:MAX_QUOTED_NAMES]) + (" ..." if len(listed) > MAX_QUOTED_NAMES else "")
        jobs = f"Jobs known to have been created for it ({len(listed)}): {shown}."
    else:
        jobs = "No job name survives in any record; jobs may still have been created (look for this task's display names in the vendor console)."
    return MaaSStateError(
        f"The batch state at {journal.uri} is not whole: {problem}. It is the only record of the jobs paid for "
        f"(the API has no list call), so this task creates nothing. {jobs} {WAY_ON}",
        job_names=listed,
    )


def load_whole(
    context: Any, journal: BatchJournal, *, start_over: bool, names: Iterable[str] = (), endpoint: str | None = None
) -> BatchState | None:
    """The stored state if it is whole; None if there is none (or ``start_over`` discards a state
    that is not whole); else :class:`MaaSStateError`. A ``task_state_store`` pointer at a state
    that is gone, or at another location, counts as evidence of paid work; so does a state whose
    jobs were created on another ``endpoint`` than this try's. ``start_over`` is
    honoured after a person's clear only (see :func:`_start_over_chosen`)."""
    chosen = start_over and _start_over_chosen(context)
    try:
        state = journal.load()
        if state is None and _finished_pointer(context, journal, this_round=True):
            raise FinishedMeanwhile(journal.uri)  # the other try removed the state after it read "unfinished"
        if state is None and _finished_pointer(context, journal, this_round=True, written=False):
            raise state_error(
                f"task_state_store says a try of this clear round finished this batch (and removed its state), but "
                f"its results at {uri_of(destination_of(journal))} are not there (deleted, or on the local disk of the "
                "worker that ran it); an automatic retry does not pay for the whole batch again. Find the results, "
                "or clear the task to run the batch again (paid again)",
                journal,
                context,
                names,
            )
        if state is not None and endpoint and state.endpoint and state.endpoint != endpoint:
            raise StateDamaged(
                f"its jobs were created on ENDPOINT {state.endpoint!r} and this try runs on {endpoint!r}, where they "
                "answer 404: they would be called gone and paid again, and two models' answers mixed in one "
                f"results file. Restore ENDPOINT {state.endpoint!r} (the connection's Endpoint field, or "
                "endpoint=) and clear the task to reattach to them"
            )
        if state is not None and (problem := _missing_round_file(state)):
            if any(r.file_name or r.job_name for r in state.shards.values()):
                raise StateDamaged(problem)
            log.info(
                "The batch state at %s was planned but nothing was uploaded (%s): planning again", journal.uri, problem
            )
            return None  # a try stopped between writing its plan and its round file
    except StateDamaged as err:
        if _finished_pointer(context, journal, this_round=True):  # half-removed by the try that finished it
            raise FinishedMeanwhile(journal.uri) from None
        if chosen:
            log.warning("start_over=True: discarding the batch state at %s (%s)", journal.uri, err.problem)
            return None
        raise state_error(err.problem + _NOT_CHOSEN * start_over, journal, context, names) from None
    store = _store(context)
    pointer = store.get(STATE_KEY) if store is not None else None
    if isinstance(pointer, dict) and not pointer.get("finished") and not chosen:
        location = pointer.get("location")
        if location != journal.uri:
            raise state_error(
                f"{RECORD} points at the state of an earlier try at {location} (the destination "
                "changed between tries?); its jobs would be abandoned",
                journal,
                context,
                names,
            )
        if state is None and "open" not in pointer and _written(journal):
            log.warning(
                "No batch state at %s, but the destination is written: an earlier version finished it", journal.uri
            )
        elif state is None:
            raise state_error(
                f"{RECORD} points at it, but it is gone (deleted by hand or by a lifecycle rule, or a "
                "destination on one worker's local disk while this try runs on another)" + _NOT_CHOSEN * start_over,
                journal,
                context,
                names,
            )
        marked = pointer.get("seq")
        if state is not None and isinstance(marked, int) and journal.seq < marked:
            raise state_error(
                f"its journal ends at object {journal.seq:010d}, but {RECORD} recorded that object {marked:010d} "
                "was written, with 'creating' markers: the newest journal objects were deleted (by hand or by a "
                "lifecycle rule), and the creates they recorded may have been sent and paid for"
                + _NOT_CHOSEN
                * start_over,
                journal,
                context,
                names,
            )
    if state is not None:
        journal.marked = journal.seq  # the journal reached here: it may not end before it later
    return state


def finished_meanwhile(context: Any, journal: BatchJournal, *, this_round: bool = False) -> bool:
    """Whether another try of this task instance finished this batch (its results written, its state
    removed): :data:`RECORD` says so for this location, or, with no such record (Airflow < 3.3: the
    Variable is removed on success), the destination's record (``.<name>.origin.json``) names this task
    instance and this clear round. ``this_round``: and in this clear round (a retry of a try that
    finished, not a person's clear, which runs the batch again)."""
    return _finished_pointer(context, journal, this_round=this_round) and not (journal.root / "manifest.json").exists()


class FinishedMeanwhile(MaaSError):
    """Another live try of this task instance finished the batch while this one read its state (results
    written, the state removed or being removed): nothing is left to do, and nothing may be paid again."""


def _finished_pointer(context: Any, journal: BatchJournal, *, this_round: bool, written: bool = True) -> bool:
    """:data:`RECORD` (or, without it, the destination's record) says the batch at this location
    finished (in this clear round if ``this_round``), and (if ``written``) its destination is written."""
    store = _store(context)
    pointer = store.get(STATE_KEY) if store is not None else None
    if pointer is None:
        record = written_record(journal)
        identity = record.get("identity")
        mine = isinstance(identity, list) and ".".join(map(str, identity)) == journal.root.name
        pointer = {"finished": mine, "location": journal.uri, "round": record.get("round")}
        this_round = True  # a record of an earlier clear round is not this batch's end
    return (
        isinstance(pointer, dict)
        and bool(pointer.get("finished"))
        and pointer.get("location") == journal.uri
        and (not this_round or (isinstance(pointer.get("round"), int) and not cleared_since(pointer["round"], context)))
        and (not written or _written(journal))
    )


_NOT_CHOSEN = (
    "; start_over=True is set, but no one cleared the task since this batch was last run (this is an "
    "automatic retry), so it is not applied: a value left set must not pay again on its own"
)


def _start_over_chosen(context: Any) -> bool:
    """``start_over`` is a person's choice made with a clear: not applied by an automatic retry in the
    clear round the batch last ran in (``round`` in the pointer), where a value left set on the task
    would discard a state damaged since and pay again. Without that record (Airflow < 3.3), applied."""
    store = _store(context)
    pointer = store.get(STATE_KEY) if store is not None else None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("round"), int):
        return True
    return cleared_since(pointer["round"], context)


def _written(journal: BatchJournal) -> bool:
    """Whether the destination of ``journal``'s batch exists (its state folder is ``.<name>.maas/<id>``)."""
    return destination_of(journal).exists()


def _missing_round_file(state: BatchState) -> str | None:
    """What is wrong if the requests of a round with shards still to upload are gone."""
    for round_ in state.rounds:
        to_upload = any(
            r.key.round == round_.number and r.status is ShardStatus.PENDING and not r.file_name
            for r in state.shards.values()
        )
        if round_.source and to_upload and not to_path(round_.source).exists():
            return f"{round_.source}, the requests of round {round_.number}, is missing"
    return None


def remember(context: Any, journal: BatchJournal, *, finished: bool = False) -> None:
    """Record where the state is in :data:`RECORD`, a few hundred bytes: its location, format and
    clear round; ``seq``, the newest journal object known to be written (``journal.marked``: rewritten
    with each flush of "creating" markers, one more write per batch of creates); ``finished`` once the
    results are written (the state is then removed on purpose)."""
    store = _store(context)
    # "open": written by a provider that marks the end ("finished"); older pointers have neither
    value: dict[str, Any] = {"location": journal.uri, "version": STATE_VERSION, "open": not finished}
    if (round_ := clear_round(context)) is not None:  # the clear round the batch last ran in
        value["round"] = round_
    if journal.marked and not finished:
        value["seq"] = journal.marked
    if finished:
        value["finished"] = True
    if store is not None and store.get(STATE_KEY) != value:
        store.set(STATE_KEY, value)


def record_mark(context: Any, journal: BatchJournal) -> None:
    """``journal.on_marked``: record the newest journal object with "creating" markers; for a new
    plan (``journal.marked`` is 0), drop an older mark, which must not outlive the objects it counted
    (no pointer is written where there was none: a plan removed at once leaves nothing behind)."""
    if journal.marked:
        remember(context, journal)
        return
    store = _store(context)
    pointer = store.get(STATE_KEY) if store is not None else None
    if isinstance(pointer, dict) and "seq" in pointer:
        store.set(STATE_KEY, {key: value for key, value in pointer.items() if key != "seq"})


# The second record of job names -----------------------------------------------------------------
def _saved(context: Any) -> dict[str, Any]:
    store = _store(context)
    value = store.get(JOBS_KEY) if store is not None else None
    return value if isinstance(value, dict) and isinstance(value.get("jobs"), dict) else {}


def _saved_names(context: Any) -> list[str]:
    return [name for name in _saved(context).get("jobs", {}).values() if isinstance(name, str)]


def save_job_names(context: Any, location: str, jobs: Iterable[tuple[ShardKey, str]]) -> bool:
    """Keep ``jobs`` (shard, job name) in :data:`RECORD` with those already kept for
    ``location``; False if there is no store (outside an Airflow worker), the value would exceed
    :data:`MAX_SAVED_BYTES`, or the store failed."""
    store = _store(context)
    if store is None:
        return False
    saved = _saved(context)
    kept = dict(saved.get("jobs", {})) if saved.get("location") == location else {}
    kept.update({f"{key.round}.{key.index}": name for key, name in jobs})
    value = {"location": location, "jobs": kept}
    if len(json.dumps(value)) > MAX_SAVED_BYTES:
        log.error("%d job names do not fit in %s (%d bytes at most)", len(kept), RECORD, MAX_SAVED_BYTES)
        return False
    try:
        store.set(JOBS_KEY, value)
    except Exception:  # the store is the fallback: its failure must not hide the write's
        log.exception("Saving the job names in %s failed too", RECORD)
        return False
    return True


def rescued_job_names(context: Any, location: str) -> dict[ShardKey, str]:
    """Job names :func:`save_job_names` kept for the state at ``location``."""
    saved = _saved(context)
    if saved.get("location") != location:
        return {}
    found = {}
    for key, name in saved["jobs"].items():
        round_, _, index = str(key).partition(".")
        if round_.isdigit() and index.isdigit() and isinstance(name, str):
            found[ShardKey(int(round_), int(index))] = name
    return found


def forget_job_names(context: Any) -> None:
    """The kept job names are in the journal now."""
    store = _store(context)
    if store is not None and _saved(context):
        store.set(JOBS_KEY, {})


def unrecorded_error(
    journal: BatchJournal,
    changes: list[ShardRecord],
    err: Exception,
    save: Callable[[list[tuple[ShardKey, str]]], bool] | None,
    state: BatchState | None = None,
) -> MaaSError:
    """The error for a journal write that failed: the job names it held are kept elsewhere
    (``save``, e.g. :func:`save_job_names`) so the next try reattaches, or named in the error.
    ``state``: this try's whole state, whose every job is named if the stored state was removed."""
    if state is not None and _removed(journal):
        return _removed_error(journal, state, err, save)
    jobs = [(r.key, r.job_name) for r in changes if r.job_name and r.status is ShardStatus.RUNNING]
    kept = bool(jobs) and save is not None and save(jobs)
    named = ", ".join(f"{name} (shard {key})" for key, name in jobs)
    if isinstance(err, MaaSStateError):  # the lease was taken by another live try
        if not jobs:
            return err
        log.error("Jobs this try created and could not record: %s (kept for the next try: %s)", named, kept)
        where = (
            f"their names are kept in {RECORD}: the next try reattaches to them"
            if kept
            else f"they are not in the batch state nor in {RECORD} (see the log): a later try refuses "
            "their shards rather than pay again; look these jobs up"
        )
        return type(err)(
            f"{err} This try created jobs it could not record: {named}; {where}.",
            job_names=[name for _, name in jobs],
        )
    what = f"Writing the batch state at {journal.uri} failed ({type(err).__name__}: {err})"
    markers = ", ".join(str(r.key) for r in changes if r.status is ShardStatus.CREATING)
    if not jobs and markers:  # a write may land and still report a failure (a PUT that timed out)
        return MaaSStateWriteError(
            f"{what} while storing the 'creating' markers of shards {markers}; no create was sent for them. If "
            "the write landed after all, the next try finds them 'creating' and stops rather than risk a second "
            "job: then clear the task (no job exists for them). Fix the storage first."
        )
    if not jobs:
        return MaaSStateWriteError(f"{what}; no job created by this try is missing from it: a retry goes on from it.")
    if kept:
        return MaaSStateWriteError(
            f"{what} after these jobs were created: {named}. Their names are kept in {RECORD}: a retry "
            "reattaches to them (fix the storage first: free space, or make it writable)."
        )
    return MaaSStateError(
        f"{what} after these jobs were created: {named}. They are not in the batch state and could not be kept "
        f"elsewhere ({RECORD} is not available to this process or failed; see the log), so the next try finds their shards 'creating' and "
        f"refuses to create them again. Fix the storage, then look these jobs up. {WAY_ON}",
        job_names=[name for _, name in jobs],
    )


def unmarked_error(
    journal: BatchJournal, shards: list[ShardKey], err: MarkNotRecorded, undo_err: Exception | None = None
) -> MaaSError:
    """The error for "creating" markers stored in journal object ``err.seq`` whose mark could not be
    recorded in :data:`RECORD` (``err.cause``): none of their creates was sent; the shards were returned
    to pending in one more object (else ``undo_err``: the next try stops on the markers)."""
    listed = ", ".join(map(str, shards)) or "none"
    what = (
        f"Recording in {RECORD} that journal object {err.seq:010d} of the batch state at {journal.uri} holds "
        f"'creating' markers failed ({type(err.cause).__name__}: {err.cause}). No create was sent for shards {listed}"
    )
    if undo_err is None:
        return MaaSError(
            f"{what}; they are back to pending in the batch state, which is whole: the retry goes on from it and "
            "sends them once. If this repeats, check that tasks can write their record (on Airflow 3.0-3.2 an "
            "Airflow Variable, through the Execution API on the API server)."
        )
    return MaaSError(
        f"{what}, and returning them to pending in the batch state failed too ({type(undo_err).__name__}: "
        f"{undo_err}). The next try finds them 'creating' and stops (MaaSJobCreationUncertainError): no job exists "
        "for them, so clear the task then (it sends them once). Fix the record and the storage first."
    )


class StateRemoved(MaaSStateError):
    """The stored state was removed while a try ran; the message names every job that try knew."""


def _removed(journal: BatchJournal) -> bool:
    """Whether the stored state is gone (its manifest, written when the batch was planned)."""
    try:
        return not (journal.root / "manifest.json").exists()
    except OSError:
        return False


def _removed_error(
    journal: BatchJournal,
    state: BatchState,
    err: Exception,
    save: Callable[[list[tuple[ShardKey, str]]], bool] | None,
) -> StateRemoved:
    """The stored state was removed while this try ran: every job it recorded, and the answers it had
    downloaded, are now known only to this try; they are named, and kept where possible."""
    jobs = sorted((r.key, r.job_name) for r in state.shards.values() if r.job_name)
    kept = bool(jobs) and save is not None and save(jobs)
    listed = [name for _, name in jobs]
    if jobs:
        log.error("Jobs of the removed batch state at %s: %s", journal.uri, ", ".join(listed))
        shown = ", ".join(f"{name} (shard {key})" for key, name in jobs[:MAX_QUOTED_NAMES])
        named = f"Jobs created for it ({len(jobs)}): {shown}{' ...' if len(jobs) > MAX_QUOTED_NAMES else ''}"
        named += f" (also kept in {RECORD})." if kept else "."
    else:
        named = "No job had been created for it yet."
    return StateRemoved(
        f"The batch state at {journal.uri} was removed while this try ran (by hand, by a lifecycle rule, or "
        f"the folder was cleaned up): writing it failed ({type(err).__name__}: {err}). It is the only record of "
        f"the jobs paid for, so this try creates nothing more. {named} {WAY_ON}",
        job_names=listed,
    )
