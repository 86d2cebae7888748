"""Batch job states (Vertex AI ``JobState`` names) and what they mean to whoever waits on a job.

Every text of the service kept in an outcome (state, error message and code, job name) is
neutralised (:func:`~airflow_provider_maas.redaction.neutralise`): it is logged and raised.

One place decides: :func:`job_outcome` turns a job's JSON into a :class:`JobOutcome` (keep waiting,
succeeded, partial, failed), used by the hook's wait, the triggers, the sensor and the batch
operator. A ``JobOutcome`` is also the compact form a trigger event carries (a few hundred bytes,
never the whole job JSON).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from airflow_provider_maas.redaction import neutralise

#: Longest service error message kept in an outcome (events and state stay small).
MAX_ERROR_MESSAGE = 500
#: Longest state, error code or job name taken from the service into an outcome.
MAX_STATE = 100


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


FAILED_STATES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})


class Outcome(str, Enum):
    """What a job's state means to whoever waits on it: keep waiting, or it ended one of three ways.
    With :class:`JobState` (the service's names) the one vocabulary of job states."""

    WAITING = "waiting"  # active or an undocumented state: poll again (until the deadline)
    SUCCEEDED = "succeeded"  # results hold every request
    PARTIAL = "partial"  # results exist, some requests failed
    FAILED = "failed"  # FAILED, CANCELLED or EXPIRED: no results


def documented(state: str | None) -> bool:
    """Whether ``state`` is one the service documents (an undocumented one is waited on, with a warning)."""
    try:
        JobState(state)
    except ValueError:
        return False
    return True


def classify_state(state: str | None) -> Outcome:
    """What a job state string, as returned by the service, means."""
    if not documented(state):
        return Outcome.WAITING
    known = JobState(state)
    if known is JobState.SUCCEEDED:
        return Outcome.SUCCEEDED
    if known is JobState.PARTIALLY_SUCCEEDED:
        return Outcome.PARTIAL
    if known in FAILED_STATES:
        return Outcome.FAILED
    return Outcome.WAITING


def _count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999 in the JSON is infinity
        return None


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """A job's state reduced to what a waiter needs; JSON round-trips with :meth:`as_dict`.

    :param error_code: ``error.code`` of a job that ended badly (the service's RPC status), if any.
    :param error_message: ``error.message``, cut to :data:`MAX_ERROR_MESSAGE` characters.
    :param successful: ``completionStats.successfulCount`` (the service sends strings or null).
    :param end_time: ``endTime`` of a job that ended (RFC 3339, as the service sent it), if given.
    """

    job_name: str
    state: str | None
    outcome: Outcome
    error_code: int | str | None = None
    error_message: str | None = None
    successful: int | None = None
    failed: int | None = None
    end_time: str | None = None

    @property
    def ended(self) -> bool:
        return self.outcome is not Outcome.WAITING

    @property
    def has_results(self) -> bool:
        return self.outcome in (Outcome.SUCCEEDED, Outcome.PARTIAL)

    @property
    def message(self) -> str:
        """One readable line: the state, and the service's error for a failed job."""
        if self.outcome is not Outcome.FAILED:
            return f"job {self.job_name} is {self.state}"
        if self.error_message or self.error_code is not None:
            code = f" (code {self.error_code})" if self.error_code is not None else ""
            return f"job {self.job_name} ended in {self.state}: {self.error_message or 'no message'}{code}"
        return f"job {self.job_name} ended in {self.state} and the service gave no error message"

    def ended_at(self, default: float) -> float:
        """:attr:`end_time` in epoch seconds; ``default`` when the service gave none (or not a time)."""
        if self.end_time:
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(self.end_time.replace("Z", "+00:00")).timestamp()
        return default

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set (a trigger event carries one per ended job: keep it small)."""
        data: dict[str, Any] = {"job_name": self.job_name, "state": self.state, "outcome": self.outcome.value}
        for name in ("error_code", "error_message", "successful", "failed", "end_time"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobOutcome:
        """Rebuild from :meth:`as_dict` (raises ``KeyError``/``ValueError`` on anything else)."""
        return cls(
            job_name=str(data["job_name"]),
            state=data.get("state"),
            outcome=Outcome(data["outcome"]),
            error_code=data.get("error_code"),
            error_message=data.get("error_message"),
            successful=data.get("successful"),
            failed=data.get("failed"),
            end_time=data.get("end_time"),
        )


def job_outcome(job: dict[str, Any], job_name: str | None = None) -> JobOutcome:
    """THE decision: what a job's JSON (as ``GET batchPredictionJobs/{name}`` returns it) means."""
    raw_state = job.get("state")
    state = neutralise(raw_state, MAX_STATE) if raw_state is not None else None
    error = job.get("error")
    code = message = None
    if isinstance(error, dict) and error:
        code = error.get("code")
        raw = error.get("message")
        message = neutralise(raw, MAX_ERROR_MESSAGE) if raw else None
    stats = job.get("completionStats") or {}
    if isinstance(code, str):
        code = neutralise(code, MAX_STATE)
    return JobOutcome(
        # the name asked for: a front may spell it otherwise
        job_name=job_name or neutralise(str(job.get("name")), MAX_STATE),
        state=state,
        outcome=classify_state(raw_state),
        error_code=code if isinstance(code, (int, str)) and not isinstance(code, bool) else None,
        error_message=message,
        successful=_count(stats.get("successfulCount")),
        failed=_count(stats.get("failedCount")),
        end_time=neutralise(end, MAX_STATE) if isinstance(end := job.get("endTime"), str) else None,
    )


def neutral_job(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` (a job's JSON) with its texts neutralised: the strings at its top level and in its
    ``error`` object (state, names, the error message...). The hook returns jobs this way, so a log
    line, an exception text or an XCom built from one holds no control character."""
    neutral: dict[str, Any] = {}
    for key, value in job.items():
        if isinstance(value, str):
            value = neutralise(value, MAX_JOB_TEXT)
        elif key == "error" and isinstance(value, dict):
            value = {k: neutralise(v, MAX_JOB_TEXT) if isinstance(v, str) else v for k, v in value.items()}
        neutral[key] = value
    return neutral


#: Longest text kept in a job's JSON as the hook returns it (:func:`neutral_job`).
MAX_JOB_TEXT = 2000


def log_state_change(log: Any, job_name: str, state: str | None, seconds: float | None = None) -> None:
    """Log a job's new state (info), warning on an undocumented one; waiters that poll call it on changes only."""
    if seconds is None:
        log.info("Job %s is %s", job_name, state)
    else:
        log.info("Job %s is %s (after %.0fs)", job_name, state, seconds)
    if not documented(state):
        log.warning("Job %s is in an undocumented state %r; still polling", job_name, state)
