"""Fail closed on the record of paid work: the batch state is whole, or the task stops and says so.

The service has no list call: the batch state beside the destination (:mod:`.journal`) is the only
record of which jobs were paid for. When any evidence of paid work is there (a pointer in
``task_state_store``, journal objects, job names saved after a failed write) and the record is not
whole, the task creates nothing and fails with :class:`~airflow_provider_maas.exceptions.MaaSStateError`
naming the state's location, what is wrong, every job name still known, and the way on:
``start_over=True`` (a person's explicit choice; the named jobs are abandoned, answers already
downloaded are kept and reused).

What the check reads beside the state: the second record (:mod:`.second_record`: the state's
location, the newest journal object that held "creating" markers, job names saved after a failed
write). What a failed write says is :mod:`.write_failures`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.record.create_guard import cleared_since
from airflow_provider_maas.batch.record.ownership import destination_of, written_record
from airflow_provider_maas.batch.record.second_record import RECORD, saved_job_names, state_pointer
from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.batch.record.state_objects import StateDamaged
from airflow_provider_maas.exceptions import MaaSError, MaaSStateError
from airflow_provider_maas.storage import to_path, uri_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState

log = logging.getLogger(__name__)

#: Job names quoted in a message (all of them are logged).
MAX_QUOTED_NAMES = 50

#: The documented way on, named by every :class:`MaaSStateError` about a state that is not whole.
WAY_ON = (
    "To start over anyway (a person's choice: the jobs named here are abandoned, keep running on the "
    "service and are billed; answers already downloaded are kept and reused), set start_over=True on "
    "the task (templated, e.g. start_over=\"{{ params.get('start_over', False) }}\") and clear it; "
    "set it back afterwards. See 'Damaged state' in docs/reliability.md."
)


#: The way on when ``start_over`` would discard a state that is not whole under ``max_cost_usd``.
WAY_ON_CAPPED = (
    "To go on: give the batch a destination of its own (this state stays for inspection) with max_cost_usd "
    "lowered by what the jobs named here cost (the vendor console shows it), or start over here without "
    "max_cost_usd (a person's choice: nothing caps the spend then). See 'Damaged state' in docs/reliability.md."
)


def state_error(
    problem: str, journal: BatchJournal, context: Any, *names: Iterable[str], way_on: str = WAY_ON
) -> MaaSStateError:
    """The error for a batch state that is not whole: ``problem``, the location, every job name
    known from the journal's readable objects, ``names`` and :data:`RECORD`, and the way on."""
    known: dict[str, None] = {}
    for group in (*names, journal.job_names_found(), saved_job_names(context)):
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
        f"(the API has no list call), so this task creates nothing. {jobs} {way_on}",
        job_names=listed,
    )


def load_whole(
    context: Any,
    journal: BatchJournal,
    *,
    start_over: bool,
    names: Iterable[str] = (),
    endpoint: str | None = None,
    capped: bool = False,
) -> BatchState | None:
    """The stored state if it is whole; None if there is none (or ``start_over`` discards a state
    that is not whole); else :class:`MaaSStateError`. A ``task_state_store`` pointer at a state
    that is gone, or at another location, counts as evidence of paid work; so does a state whose
    jobs were created on another ``endpoint`` than this try's. ``start_over`` is
    honoured after a person's clear only (see :func:`_start_over_chosen`), and not under a cap
    (``capped``: ``max_cost_usd``): what the discarded state's jobs cost is not known, and the cap
    would start again from $0 while they are billed."""
    chosen = start_over and _start_over_chosen(context)
    try:
        state = journal.load()
        if state is None and _finished_pointer(context, journal, this_epoch=True):
            raise FinishedMeanwhile(journal.uri)  # the other try removed the state after it read "unfinished"
        if state is None and _finished_pointer(context, journal, this_epoch=True, written=False):
            raise state_error(
                f"task_state_store says a try of this clear epoch finished this batch (and removed its state), but "
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
        if _finished_pointer(context, journal, this_epoch=True):  # half-removed by the try that finished it
            raise FinishedMeanwhile(journal.uri) from None
        if chosen:
            if capped:
                raise _uncounted_spend(err.problem, journal, context, names) from None
            log.warning("start_over=True: discarding the batch state at %s (%s)", journal.uri, err.problem)
            return None
        raise state_error(err.problem + _NOT_CHOSEN * start_over, journal, context, names) from None
    pointer = state_pointer(context)
    # a state gone that the pointer says is unfinished: refused, unless start_over is chosen without a cap
    if state is None and (capped or not chosen) and _points_at_lost_state(pointer, journal):
        if chosen:
            raise _uncounted_spend(f"{RECORD} points at it, but it is gone", journal, context, names)
        raise state_error(
            f"{RECORD} points at it, but it is gone (deleted by hand or by a lifecycle rule, or a "
            "destination on one worker's local disk while this try runs on another)" + _NOT_CHOSEN * start_over,
            journal,
            context,
            names,
        )
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
        if state is None:  # not lost (above): the destination is written, by a version before "open" was recorded
            log.warning(
                "No batch state at %s, but the destination is written: an earlier version finished it", journal.uri
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


def _points_at_lost_state(pointer: Any, journal: BatchJournal) -> bool:
    """:data:`RECORD` points at an unfinished state here, which (called where no state was loaded) is
    lost: the pointer was written by this version (``open``), or the destination is not written (else an
    earlier version, which did not record ``open``, finished the batch and removed its state)."""
    if not isinstance(pointer, dict) or pointer.get("finished") or pointer.get("location") != journal.uri:
        return False
    return "open" in pointer or not _written(journal)


def _uncounted_spend(problem: str, journal: BatchJournal, context: Any, names: Iterable[str]) -> MaaSStateError:
    """start_over would discard a state that is not whole while ``max_cost_usd`` is set: refused."""
    return state_error(
        f"{problem}; start_over=True would discard it, but max_cost_usd is set and what its jobs cost is not "
        "known from a state that is not whole: the cap would start again from $0 while they are billed",
        journal,
        context,
        names,
        way_on=WAY_ON_CAPPED,
    )


def finished_meanwhile(context: Any, journal: BatchJournal, *, this_epoch: bool = False) -> bool:
    """Whether another try of this task instance finished this batch (its results written, its state
    removed): :data:`RECORD` says so for this location, or, with no such record (Airflow < 3.3: the
    Variable is removed on success), the destination's record (``.<name>.origin.json``) names this task
    instance and this clear epoch. ``this_epoch``: and in this clear epoch (a retry of a try that
    finished, not a person's clear, which runs the batch again)."""
    return _finished_pointer(context, journal, this_epoch=this_epoch) and not (journal.root / "manifest.json").exists()


class FinishedMeanwhile(MaaSError):
    """Another live try of this task instance finished the batch while this one read its state (results
    written, the state removed or being removed): nothing is left to do, and nothing may be paid again."""


def _finished_pointer(context: Any, journal: BatchJournal, *, this_epoch: bool, written: bool = True) -> bool:
    """:data:`RECORD` (or, without it, the destination's record) says the batch at this location
    finished (in this clear epoch if ``this_epoch``), and (if ``written``) its destination is written."""
    pointer = state_pointer(context)
    if pointer is None:
        record = written_record(journal)
        identity = record.get("identity")
        mine = isinstance(identity, list) and ".".join(map(str, identity)) == journal.root.name
        pointer = {"finished": mine, "location": journal.uri, "round": record.get("round")}
        this_epoch = True  # a record of an earlier clear epoch is not this batch's end
    return (
        isinstance(pointer, dict)
        and bool(pointer.get("finished"))
        and pointer.get("location") == journal.uri
        and (not this_epoch or (isinstance(pointer.get("round"), int) and not cleared_since(pointer["round"], context)))
        and (not written or _written(journal))
    )


_NOT_CHOSEN = (
    "; start_over=True is set, but no one cleared the task since this batch was last run (this is an "
    "automatic retry), so it is not applied: a value left set must not pay again on its own"
)


def _start_over_chosen(context: Any) -> bool:
    """``start_over`` is a person's choice made with a clear: not applied by an automatic retry in the
    clear epoch the batch last ran in (``round`` in the pointer), where a value left set on the task
    would discard a state damaged since and pay again. Without that record (Airflow < 3.3), applied."""
    pointer = state_pointer(context)
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
