"""One batch in one task, as steps: what the batch operator runs between its waits.

A :class:`BatchRun` is started (:meth:`BatchRun.start`) or resumed after a wait in the triggerer
(:meth:`BatchRun.resume`); each :meth:`BatchRun.step` moves the shards forward (uploads, creates,
downloads, lost parts fetched again, retry rounds) until there is nothing to do but wait, and
answers :class:`Wait` (these jobs, until the batch's deadline) or None: every job ended, the
outputs are due (:meth:`BatchRun.finish`, :meth:`BatchRun.check`, :meth:`BatchRun.close`). Nothing here knows
Airflow: the operator maps a wait to a deferral or a sleep, and the summary to XCom, lineage and
metrics; the transfers are the driver's (``batch/driver.py``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.summary import check_outcome, write_outputs
from airflow_provider_maas.batch.cost.bounds import refuse_unbounded_under_cap
from airflow_provider_maas.batch.cost.budget import SpendGate
from airflow_provider_maas.batch.driver import BatchDriver
from airflow_provider_maas.batch.inputs.rewrite import as_sent, remove_sent
from airflow_provider_maas.batch.pacing import MAX_NAMED_JOBS, check_deadline, fire_after, past_deadline
from airflow_provider_maas.batch.record.create_guard import clear_epoch
from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.record.ownership import LeaseLost, check_lease, record_writer
from airflow_provider_maas.batch.record.recovery import FinishedMeanwhile, finished_meanwhile
from airflow_provider_maas.batch.record.second_record import forget, remember, save_job_names
from airflow_provider_maas.batch.record.write_failures import StateRemoved
from airflow_provider_maas.batch.resume import resume_after_deferral, start_or_resume
from airflow_provider_maas.batch.round_files import next_round
from airflow_provider_maas.client.naming import task_identity
from airflow_provider_maas.exceptions import MaaSTimeoutError
from airflow_provider_maas.storage import to_path, uri_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from airflow_provider_maas.batch.answers.summary_types import BatchSummary
    from airflow_provider_maas.batch.driver import JobService, ShardNames
    from airflow_provider_maas.batch.record.state import BatchState
    from airflow_provider_maas.batch.settings import BatchSettings
    from airflow_provider_maas.client.states import JobOutcome

__all__ = [
    "TAKEN_OVER",
    "BatchJournal",
    "BatchRun",
    "Wait",
    "finished_elsewhere",
    "refuse_finished",
    "unless_finished_elsewhere",
]

log = logging.getLogger(__name__)

#: What stops a try because another try of this task instance took the batch over: it finished the
#: batch, took the state's lease, or removed the state.
TAKEN_OVER: tuple[type[Exception], ...] = (FinishedMeanwhile, LeaseLost, StateRemoved)


def refuse_finished(context: Any, journal: BatchJournal, *, this_epoch: bool = False) -> None:
    """Raise :class:`~airflow_provider_maas.batch.record.recovery.FinishedMeanwhile` if another try of this task instance finished this
    batch (in this clear epoch if ``this_epoch``: see :func:`~airflow_provider_maas.batch.record.recovery.finished_meanwhile`)."""
    if finished_meanwhile(context, journal, this_epoch=this_epoch):
        raise FinishedMeanwhile(journal.uri)


def finished_elsewhere(err: Exception, context: Any, journal: BatchJournal, *, this_epoch: bool = False) -> bool:
    """Whether ``err`` (one of :data:`TAKEN_OVER`) leaves this try nothing to do: another try finished
    the batch. False (raise it) when this try lost the batch while it is not known finished, or created
    jobs it could not record (the error names them: they are not hidden)."""
    if isinstance(err, FinishedMeanwhile):
        return True
    return not getattr(err, "job_names", None) and finished_meanwhile(context, journal, this_epoch=this_epoch)


#: What a try that finds the batch finished by another try logs (``this_epoch``: a start, or a resume).
_FINISHED_ELSEWHERE = {
    True: "An earlier try of this task instance finished this batch in this clear epoch (its success was not "
    "recorded: a worker lost after it, or a zombie's retry): the results are at %s. Nothing is paid again; clear "
    "the task to run the batch again.",
    False: "Another try of this task instance finished the batch while this one was deferred: the results are at "
    "%s. Nothing is left to do, and nothing was paid again.",
}


def unless_finished_elsewhere(
    work: Callable[[], str], context: Any, journal: BatchJournal, destination: Any, *, this_epoch: bool = False
) -> str:
    """``work()`` (a try's part of the batch: start or resume, steps, outputs), unless another try of
    this task instance finished the batch: seen before (:func:`refuse_finished`), or by ``work`` (one of
    :data:`TAKEN_OVER` that :func:`finished_elsewhere` accepts). Then nothing is paid again, and the
    answer is the URI of ``destination``, as ``work``'s. ``this_epoch``: a start (the other try ran in
    this clear epoch), not a resume after a wait."""
    try:
        refuse_finished(context, journal, this_epoch=this_epoch)
        return work()
    except TAKEN_OVER as err:
        if not finished_elsewhere(err, context, journal, this_epoch=this_epoch):
            raise
    dest_uri = uri_of(to_path(destination, what="destination"))
    log.warning(_FINISHED_ELSEWHERE[this_epoch], dest_uri)
    return dest_uri


@dataclass(frozen=True)
class Wait:
    """What a step asks for: wait for ``jobs`` (none: the service refused every create for now),
    until ``fire_after`` of them ended (None: all) or the absolute deadline ``until`` (epoch
    seconds; None: none). ``in_triggerer``: hand them to the trigger (the state is settled);
    otherwise sleep ``poll_interval`` and step again (the jobs are polled then)."""

    jobs: list[str]
    fire_after: int | None
    until: float | None
    in_triggerer: bool


class BatchRun:
    """The shards of one batch state moved forward; a context manager (the driver's thread pool).

    :param context: The task's context (read for the clear epoch and the second record of job
        names; see ``batch/record/second_record.py``).
    :param hook: The API calls (:class:`~airflow_provider_maas.batch.driver.JobService`).
    :param names: Upload and display names of a shard.
    :param gate: Budget cap, canary and answer checks (``batch/cost/budget.py``); None: none of them.
    """

    def __init__(
        self,
        context: Any,
        journal: BatchJournal,
        state: BatchState,
        settings: BatchSettings,
        *,
        hook: JobService,
        names: ShardNames,
        gate: SpendGate | None = None,
    ) -> None:
        self.context = context
        self.journal = journal
        self.state = state
        self.settings = settings
        self.gate = gate
        self._hook = hook
        self._names = names
        self._driver: BatchDriver | None = None
        self._ended: list[JobOutcome] | None = None  # the jobs the trigger saw end (a resume)
        self._begun = False
        self._poll_next: list[str] | None = None  # the jobs of the last sleep: polled by the next step

    @classmethod
    def start(cls, context: Any, journal: BatchJournal, settings: BatchSettings, **parts: Any) -> BatchRun:
        """A new batch, or the stored one resumed by a retry (``batch/resume.py`` decides). Before
        anything is uploaded: under ``max_cost_usd`` a request whose worst case is no bound stops it;
        the requests to send are written (``batch/inputs/rewrite.py``); the gate is built once the state is read."""
        refuse_unbounded_under_cap(settings)
        settings = as_sent(settings, journal, write=True)
        state = start_or_resume(context, journal, settings)
        return cls(context, journal, state, settings, gate=SpendGate.for_batch(settings, journal, state), **parts)

    @classmethod
    def resume(
        cls,
        context: Any,
        journal: BatchJournal,
        settings: BatchSettings,
        *,
        ended: Iterable[JobOutcome],
        running: Iterable[str],
        **parts: Any,
    ) -> BatchRun:
        """The stored batch, after the trigger saw ``ended`` end and ``running`` still run."""
        ended = list(ended)
        known = [o.job_name for o in ended] + list(running)  # named if the state is gone
        settings = as_sent(settings, journal, write=False)
        state = resume_after_deferral(context, journal, settings, known)
        run = cls(context, journal, state, settings, gate=SpendGate.for_batch(settings, journal, state), **parts)
        run._ended = ended
        return run

    def __enter__(self) -> BatchRun:
        self._driver = BatchDriver(
            hook=self._hook,
            journal=self.journal,
            state=self.state,
            settings=self.settings,
            names=self._names,
            clear_epoch=clear_epoch(self.context),
            gate=self.gate,
            save_job_names=functools.partial(save_job_names, self.context, self.journal.uri),
        )
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.__exit__(*exc)

    def step(self, *, deferrable: bool) -> Wait | None:
        """Move the batch forward until only waiting is left: a :class:`Wait`, or None once every
        job ended and no retry round is due. ``deferrable``: the wait may be in the triggerer."""
        driver = self._driver
        if driver is None:
            raise RuntimeError("BatchRun.step outside its 'with' block")
        if not self._begun:
            self._begun = True
            if self._ended is not None:
                driver.mark_seen(driver.running_jobs())  # the trigger saw them running just now
                driver.handle(self._ended)
            if self.gate is not None and self.settings.canary_requests:
                driver.refetch_lost_parts()  # the canary's verdict is read from its part: it must be there
        elif self._poll_next is not None:
            jobs, self._poll_next = self._poll_next, None
            driver.handle(driver.poll(jobs))
        state, poll_interval = self.state, self.settings.poll_interval
        while True:
            driver.pump()
            running = driver.running_jobs()
            if not running and state.finished:
                if driver.refetch_lost_parts():
                    continue
                if (self.gate is None or not self.gate.stopped(state)) and (
                    added := next_round(self.settings, self.journal, state)
                ):
                    driver.enqueue(added)
                    continue
                return None
            stale = driver.stale_jobs(poll_interval) if past_deadline(state) else []
            if stale and (ended := driver.poll(stale)):  # a retry after the timeout: ended since?
                driver.handle(ended)
                continue
            check_deadline(state, running, timeout=self.settings.timeout)
            wake = fire_after(
                state, running, max_active_jobs=self.settings.max_active_jobs, rate_limited=driver.rate_limited
            )
            if deferrable and running:
                stale = driver.stale_jobs(poll_interval)
                ended = driver.poll(stale) if stale else []
                if ended:  # never defer on jobs already seen ended
                    driver.handle(ended)
                    continue
                if driver.running_jobs() != running:  # a gone job's shard is due again
                    continue
                if driver.doubted():  # a job answered 404: polled again here, not in the trigger
                    return Wait(running, wake, state.deadline, in_triggerer=False)
                driver.preupload(wake or 0)
                self.journal.settle(state)
                return Wait(running, wake, state.deadline, in_triggerer=True)
            if not running:
                log.warning("The service refused every create for now (429); trying again in %ss", poll_interval)
            else:
                driver.preupload(wake or 0)
            self._poll_next = running
            return Wait(running, wake, state.deadline, in_triggerer=False)

    def finish(self) -> BatchSummary:
        """Write the destination and the failed file (if this try still holds the state: another
        live try that took it over writes them, not this one); returns the summary."""
        check_lease(self.journal)
        return write_outputs(self.settings, self.journal, self.state, self.gate)

    def check(self, summary: BatchSummary) -> None:
        """After the summary is published: raise if the budget stopped the batch (the state stays:
        a retry finds the spend) or if its outcome fails the task."""
        if self.gate is not None and (stopped := self.gate.stop_error(self.state, summary)) is not None:
            raise stopped
        check_outcome(summary, self.destination_uri, fail_on_partial=self.settings.fail_on_partial)

    def close(self) -> None:
        """The batch is over: record that, then remove its state (the requests as sent first: the
        state's folder is removed when empty)."""
        remove_sent(self.settings, self.journal)
        remember(self.context, self.journal, finished=True)  # first: a state gone on purpose is not "lost"
        record_writer(self.journal, task_identity(self.context), clear_epoch(self.context))
        try:
            self.journal.remove()
        except OSError as err:  # the results are written: a retry would find a half-removed state
            log.warning(
                "The results are written, but removing the batch state at %s failed (%s): delete that folder "
                "by hand (it is not needed any more)",
                self.journal.uri,
                err,
            )
        forget(self.context)  # the second record (an Airflow Variable before 3.3) is not needed any more

    def timed_out(self, message: str) -> MaaSTimeoutError:
        """The error of a wait the trigger ended at the deadline: its ``message`` and the jobs still running."""
        running = list(self.state.by_job())
        return MaaSTimeoutError(f"{message} Still running: {', '.join(running[:MAX_NAMED_JOBS])}")

    @property
    def destination_uri(self) -> str:
        """Where the results are written."""
        return uri_of(to_path(self.settings.destination, what="destination"))
