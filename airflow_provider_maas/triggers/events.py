"""The one event both triggers fire (:class:`JobsEvent`), and its checks for the sensor and the
operators: one shape, one validation, events of earlier versions accepted.

Shape: ``{"status", "message", "ended": [JobOutcome...], "running": [names]}``; the single-job
trigger adds ``job_name``, ``state`` and ``job`` (the final job JSON the sensor returns). Earlier
versions' single-job events (no ``ended``) and batch events (no ``running``) still load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

from airflow_provider_maas._compat import AirflowSensorTimeout
from airflow_provider_maas.client.states import JobOutcome, Outcome, job_outcome
from airflow_provider_maas.exceptions import MaaSError, MaaSJobFailedError

log = logging.getLogger(__name__)

#: What an event's ``status`` may be (a closed set: :meth:`JobsEvent.from_event` refuses any other).
EventStatus = Literal["success", "error", "timeout"]
EVENT_STATUSES: frozenset[str] = frozenset(get_args(EventStatus))


@dataclass(frozen=True, slots=True)
class JobsEvent:
    """What a trigger hands back to the task.

    :param status: ``success`` (the job, or enough jobs, ended), ``timeout`` (deadline) or ``error``
        (a job could not be polled, or the connection is unusable: ``message`` says which; for the
        single-job trigger, also a job that ended FAILED, CANCELLED or EXPIRED).
    :param ended: The compact outcome of every job that ended before the event, whatever the status.
    :param running: The jobs not seen ended (named by the task if its state is gone meanwhile).
    :param job_name: The single-job trigger's job; None for the batch trigger.
    :param job: The single-job trigger's final job JSON, if it ended; the batch trigger never sends job JSON.
    """

    status: EventStatus
    message: str
    ended: tuple[JobOutcome, ...] = ()
    running: tuple[str, ...] = ()
    job_name: str | None = None
    job: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "ended": [o.as_dict() for o in self.ended],
            "running": list(self.running),
        }
        if self.job_name is not None:
            data.update(job_name=self.job_name, state=(self.job or {}).get("state"), job=self.job)
        return data

    @classmethod
    def from_event(cls, event: Any) -> JobsEvent:
        """Validate what the task was resumed with; :class:`MaaSError` if it is not such an event."""
        try:
            if event["status"] not in EVENT_STATUSES:
                raise ValueError(event["status"])
            job = event.get("job")
            job_name = event.get("job_name")
            if job is not None and not isinstance(job, dict):
                raise TypeError(job)
            if "ended" in event:
                ended = tuple(JobOutcome.from_dict(item) for item in event["ended"])
            elif job_name is not None:  # a single-job event of an earlier version: no "ended"
                outcome = job_outcome(job, str(job_name)) if job else None
                ended = (outcome,) if outcome is not None and outcome.ended else ()
            else:
                raise KeyError("ended")
            running = tuple(str(name) for name in event.get("running") or ())
            return cls(
                status=event["status"],
                message=str(event.get("message") or ""),
                ended=ended,
                running=running,
                job_name=None if job_name is None else str(job_name),
                job=job,
            )
        except (TypeError, KeyError, ValueError):
            raise MaaSError(f"Unexpected event from the MaaS trigger: {event!r:.300}") from None


def job_event(status: EventStatus, job_name: str, job: dict[str, Any] | None, message: str) -> dict[str, Any]:
    """The single-job trigger's event (a :class:`JobsEvent` as a dict)."""
    outcome = job_outcome(job, job_name) if job else None
    ended = (outcome,) if outcome is not None and outcome.ended else ()
    running = () if ended else (job_name,)
    return JobsEvent(status, message, ended, running, job_name=job_name, job=job).as_dict()


def check_job_event(event: Any, *, fail_on_partial: bool = False) -> dict[str, Any]:
    """Validate a single-job trigger event and return the final job JSON, or raise the matching error.

    Shared by the sensor and the operators' ``execute_complete``.
    """
    resumed = JobsEvent.from_event(event)
    job_name, job = resumed.job_name, resumed.job
    if resumed.status == "timeout":
        raise AirflowSensorTimeout(resumed.message or f"Timed out waiting for job {job_name}")
    if resumed.status == "error":
        if job:
            raise MaaSJobFailedError(
                resumed.message or job_outcome(job, job_name).message,
                job_name=job_name,
                state=job.get("state"),
                job=job,
            )
        raise MaaSError(resumed.message or f"Waiting for job {job_name} failed")
    if not isinstance(job, dict):
        raise MaaSError(f"The MaaS trigger reported success for job {job_name} without the job JSON")
    return check_final_job(job, fail_on_partial=fail_on_partial)


def check_final_job(job: dict[str, Any], *, fail_on_partial: bool = False) -> dict[str, Any]:
    """Accept a job that ended with results; warn (or fail) on partial success."""
    outcome = job_outcome(job)
    state = outcome.state
    if outcome.outcome is Outcome.PARTIAL:
        ok, failed = outcome.successful, outcome.failed
        message = (
            f"Job {job.get('name')} PARTIALLY_SUCCEEDED: {ok if ok is not None else '?'} requests succeeded, "
            f"{failed if failed is not None else '?'} failed"
        )
        if fail_on_partial:
            raise MaaSJobFailedError(
                message + " (fail_on_partial=True)", job_name=job.get("name"), state=state, job=job
            )
        log.warning("%s; the failed requests are missing from the results.", message)
        return job
    if outcome.outcome is Outcome.FAILED:
        raise MaaSJobFailedError(outcome.message, job_name=job.get("name"), state=state, job=job)
    if outcome.outcome is not Outcome.SUCCEEDED:
        raise MaaSError(f"Job {job.get('name')} is {state}, not finished")
    return job
