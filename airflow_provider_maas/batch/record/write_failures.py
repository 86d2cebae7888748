"""What a failed write of the batch state says, and what it keeps of the jobs it could not record.

A journal write that fails after jobs were created (:func:`unrecorded_error`) keeps their names in
the second record (:mod:`.second_record`) for the next try, or names them in the error; "creating"
markers whose mark could not be recorded are undone (:func:`unmarked_error`); a state removed while
the try ran (:class:`StateRemoved`) names every job that try knew.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_provider_maas._compat import AirflowFailException
from airflow_provider_maas.batch.record.ownership import LeaseLost
from airflow_provider_maas.batch.record.recovery import MAX_QUOTED_NAMES, WAY_ON
from airflow_provider_maas.batch.record.second_record import RECORD
from airflow_provider_maas.batch.record.state import ShardKey, ShardRecord, ShardStatus
from airflow_provider_maas.exceptions import MaaSError, MaaSStateError, MaaSStateWriteError

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_maas.batch.record.journal import BatchJournal, MarkNotRecorded
    from airflow_provider_maas.batch.record.state import BatchState

log = logging.getLogger(__name__)


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
            "reattaches to them (fix the storage first: free space, or make it writable).",
            job_names=[name for _, name in jobs],
        )
    return MaaSStateError(
        f"{what} after these jobs were created: {named}. They are not in the batch state and could not be kept "
        f"elsewhere ({RECORD} is not available to this process or failed; see the log), so the next try finds their shards 'creating' and "
        f"refuses to create them again. Fix the storage, then look these jobs up. {WAY_ON}",
        job_names=[name for _, name in jobs],
    )


def after_first_error(first: BaseException | None, second: MaaSError) -> BaseException | None:
    """What to raise when the answers that came after a first error of the driver (``first``) could not
    be recorded either (``second``, from :func:`unrecorded_error`). None: raise ``first`` (``second``
    names no job, and is logged; or ``first`` is not one of the provider's errors: an interrupt, a
    timeout or a termination keeps its own course). Else one error with the text of both and the jobs
    of both: of the type that stops the task if either does (another try's or a removed state's first,
    then :class:`MaaSStateError`), else ``second``'s (their names are kept: a retry reattaches). A first
    error about a write of markers only says no job exists for its shards; ``second`` names the jobs
    created meanwhile."""
    if isinstance(second, StateRemoved) and not isinstance(first, MaaSError):
        return second  # it names every job this try knew
    if not isinstance(first, MaaSError) or not isinstance(second, (MaaSStateError, MaaSStateWriteError)):
        return None
    if not second.job_names and not isinstance(second, StateRemoved):
        return None
    jobs = list(dict.fromkeys([*second.job_names, *(getattr(first, "job_names", None) or [])]))

    def rank(err: BaseException) -> int:
        if isinstance(err, (StateRemoved, LeaseLost)):  # what happened to the state: read it first
            return 0
        return 1 if isinstance(err, MaaSStateError) else 2 if isinstance(err, AirflowFailException) else 3

    stops = min((second, first), key=rank)  # a tie: second, the error naming the jobs just created
    kind = type(stops) if isinstance(stops, (MaaSStateError, MaaSStateWriteError)) else MaaSStateError
    other = first if stops is second else second
    return kind(f"{stops} With it: {other}", job_names=jobs)


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
