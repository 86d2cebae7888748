"""Job events shared by the trigger, the sensor and the operators: one shape, one validation."""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_maas._compat import AirflowSensorTimeout
from airflow_provider_maas.client.states import Outcome, job_outcome
from airflow_provider_maas.exceptions import MaaSError, MaaSJobFailedError

log = logging.getLogger(__name__)


def job_event(status: str, job_name: str, job: dict[str, Any] | None, message: str) -> dict[str, Any]:
    """The event payload shared by the trigger, sensor and operators."""
    return {
        "status": status,
        "job_name": job_name,
        "state": (job or {}).get("state"),
        "message": message,
        "job": job,
    }


def check_job_event(event: Any, *, fail_on_partial: bool = False) -> dict[str, Any]:
    """Validate a trigger event and return the final job JSON, or raise the matching error.

    Shared by the sensor and the operators' ``execute_complete``.
    """

    if not isinstance(event, dict) or event.get("status") not in {"success", "error", "timeout"}:
        raise MaaSError(f"Unexpected event from the MaaS trigger: {event!r}")
    job_name = event.get("job_name")
    if event["status"] == "timeout":
        raise AirflowSensorTimeout(event.get("message") or f"Timed out waiting for job {job_name}")
    job = event.get("job")
    if event["status"] == "error":
        if job:
            raise MaaSJobFailedError(
                event.get("message") or job_outcome(job, job_name).message,
                job_name=job_name,
                state=job.get("state"),
                job=job,
            )
        raise MaaSError(event.get("message") or f"Waiting for job {job_name} failed")
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
