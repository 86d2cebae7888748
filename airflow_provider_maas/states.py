"""Batch job states (Vertex AI ``JobState`` names) and how the provider classifies them.

One place decides what a state means; the hook, sensor, trigger and operators all use it.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """The job states the service documents."""

    UNSPECIFIED = "JOB_STATE_UNSPECIFIED"
    QUEUED = "JOB_STATE_QUEUED"
    PENDING = "JOB_STATE_PENDING"
    RUNNING = "JOB_STATE_RUNNING"
    SUCCEEDED = "JOB_STATE_SUCCEEDED"
    FAILED = "JOB_STATE_FAILED"
    CANCELLING = "JOB_STATE_CANCELLING"
    CANCELLED = "JOB_STATE_CANCELLED"
    PAUSED = "JOB_STATE_PAUSED"
    EXPIRED = "JOB_STATE_EXPIRED"
    UPDATING = "JOB_STATE_UPDATING"
    PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"


class StateKind(str, Enum):
    """What a state means for a caller waiting on the job."""

    ACTIVE = "active"  # still going: keep polling
    SUCCEEDED = "succeeded"  # done, every request answered
    PARTIAL = "partial"  # done, some requests failed (results exist)
    FAILED = "failed"  # done, no usable results: FAILED, CANCELLED, EXPIRED
    UNKNOWN = "unknown"  # not a documented state: log it, keep polling until the deadline


ACTIVE_STATES = frozenset(
    {
        JobState.UNSPECIFIED,
        JobState.QUEUED,
        JobState.PENDING,
        JobState.RUNNING,
        JobState.CANCELLING,
        JobState.PAUSED,
        JobState.UPDATING,
    }
)
FAILED_STATES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})

#: States after which a job never changes again.
TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, *FAILED_STATES})

#: States in which results can be downloaded.
RESULT_STATES = frozenset({JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED})


def classify_state(state: str | None) -> StateKind:
    """Classify a job state string as returned by the service."""
    try:
        known = JobState(state)
    except ValueError:
        return StateKind.UNKNOWN
    if known is JobState.SUCCEEDED:
        return StateKind.SUCCEEDED
    if known is JobState.PARTIALLY_SUCCEEDED:
        return StateKind.PARTIAL
    if known in FAILED_STATES:
        return StateKind.FAILED
    return StateKind.ACTIVE


def job_error_message(job: dict) -> str:
    """A readable message for a job that ended badly, from its ``error`` object when present."""
    state = job.get("state")
    error = job.get("error")
    if isinstance(error, dict) and error:
        code = error.get("code")
        message = error.get("message") or "no message"
        return f"job {job.get('name')} ended in {state}: {message}" + (f" (code {code})" if code else "")
    return f"job {job.get('name')} ended in {state} and the service gave no error message"


def completion_counts(job: dict) -> tuple[int | None, int | None]:
    """``(successful, failed)`` from ``completionStats``; the service sends strings or null."""
    stats = job.get("completionStats") or {}

    def _int(value: object) -> int | None:
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None

    return _int(stats.get("successfulCount")), _int(stats.get("failedCount"))
