"""Job records of the emulator: time-driven lifecycle, forced states and the job resource."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.emulator.config import (
    JOB_STATE_CANCELLED,
    JOB_STATE_EXPIRED,
    JOB_STATE_FAILED,
    JOB_STATE_PARTIALLY_SUCCEEDED,
    JOB_STATE_PENDING,
    JOB_STATE_RUNNING,
    RESULT_STATES,
    TERMINAL_STATES,
)
from airflow_provider_maas.emulator.faults import ApiError
from airflow_provider_maas.emulator.objects import rfc3339_us

if TYPE_CHECKING:
    import asyncio

#: ``error`` of a job ending in each failed state (Google RPC status: code + message).
DEFAULT_ERRORS: dict[str, dict[str, Any]] = {
    JOB_STATE_FAILED: {"code": 13, "message": "Internal error occurred during batch prediction (emulated)."},
    JOB_STATE_CANCELLED: {"code": 1, "message": "The batch prediction job was cancelled (emulated)."},
    JOB_STATE_EXPIRED: {
        "code": 4,
        "message": "The batch prediction job expired before it could run (emulated).",
    },
}
_CREATE_FIELDS = {"displayName", "inputConfig", "outputConfig"}
_INPUT_FIELDS = {"instancesFormat", "gcsSource"}
_OUTPUT_FIELDS = {"predictionsFormat"}
_NOT_STARTED = frozenset({JOB_STATE_PENDING, "JOB_STATE_QUEUED", "JOB_STATE_UNSPECIFIED"})


@dataclass
class JobTimes:
    state: str
    start: float | None
    end: float | None
    update: float


@dataclass
class JobRecord:
    """One batch job. ``state`` is computed lazily from the clock unless a state was forced."""

    name: str
    ordinal: int
    endpoint: str
    display_name: str
    model: str
    file_name: str
    file_path: str
    request_count: int
    created_at: float
    duration: float
    final_state: str
    fail_every: int
    #: Requests that fail on top of ``fail_every`` (the ``fail-requests`` fault).
    extra_failed: frozenset[int] = frozenset()
    #: Failed requests the results file leaves out (the ``partial-missing`` fault).
    missing: frozenset[int] = frozenset()
    #: Result lines written twice (the ``duplicate-lines`` fault).
    duplicate_lines: int = 0
    forced: JobTimes | None = None
    forced_error: dict[str, Any] | None = None
    results_path: str | None = None
    results_meta: dict[str, Any] | None = None
    results_expired: bool = False
    results_task: asyncio.Future[dict[str, Any]] | None = field(default=None, repr=False)

    def times(self, now: float | None = None) -> JobTimes:
        if self.forced is not None:
            return self.forced
        now = time.time() if now is None else now
        start = self.created_at + self.duration / 4
        end = self.created_at + self.duration
        if now >= end:
            return JobTimes(self.final_state, start, end, end)
        if now >= start:
            return JobTimes(JOB_STATE_RUNNING, start, None, start)
        return JobTimes(JOB_STATE_PENDING, None, None, self.created_at)

    @property
    def state(self) -> str:
        return self.times().state

    def force(self, state: str, error: dict[str, Any] | str | None = None) -> None:
        now = time.time()
        current = self.times(now)
        start = current.start
        if start is None and state not in _NOT_STARTED:
            start = now
        end = None
        if state in TERMINAL_STATES:
            end = current.end if current.end is not None and current.state == state else now
        self.forced = JobTimes(state, start if state not in _NOT_STARTED else None, end, now)
        if isinstance(error, str):
            error = {"code": 13, "message": error}
        self.forced_error = error

    def failed_positions(self, state: str) -> frozenset[int]:
        """0-based input positions of the requests that fail (every ``fail_every``-th one)."""
        if state not in RESULT_STATES:
            return frozenset()
        if self.missing:
            return self.missing | self.extra_failed
        return self._every_kth(state) | self.extra_failed

    def _every_kth(self, state: str) -> frozenset[int]:
        k = self.fail_every or (2 if state == JOB_STATE_PARTIALLY_SUCCEEDED else 0)
        if not k:
            return frozenset()
        failed = frozenset(i for i in range(self.request_count) if (i + 1) % k == 0)
        if not failed and state == JOB_STATE_PARTIALLY_SUCCEEDED:
            failed = frozenset({self.request_count - 1})
        return failed

    def error_for(self, state: str) -> dict[str, Any] | None:
        if self.forced is not None and self.forced_error is not None:
            return self.forced_error
        return DEFAULT_ERRORS.get(state)

    def completion_stats(self, state: str) -> dict[str, str | None]:
        if state in RESULT_STATES:
            failed = len(self.failed_positions(state))
            return {
                "successfulCount": str(self.request_count - failed),
                "failedCount": str(failed) if failed else None,
            }
        if state == JOB_STATE_FAILED:
            return {"successfulCount": "0", "failedCount": str(self.request_count)}
        return {"successfulCount": "0", "failedCount": None}

    def create_resource(self) -> dict[str, Any]:
        """The answer to the create call."""
        stamp = rfc3339_us(self.created_at)
        return {
            "name": self.name,
            "displayName": self.display_name,
            "model": self.model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [self.file_name]}},
            "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": "response"}},
            "state": JOB_STATE_PENDING,
            "createTime": stamp,
            "updateTime": stamp,
            "modelVersionId": "1",
        }

    def resource(self, base_url: str, now: float | None = None) -> dict[str, Any]:
        """The answer to the get call, in the key order of the documented example."""
        t = self.times(now)
        res: dict[str, Any] = {
            "name": self.name,
            "displayName": self.display_name,
            "model": self.model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [self.file_name]}},
            "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": "response"}},
        }
        terminal = t.state in TERMINAL_STATES
        if t.state in RESULT_STATES:
            res["outputInfo"] = {
                "gcsOutputDirectory": (
                    f"{base_url}/v1/ai/batch/gemini/{self.endpoint}/batchPredictionJobs/{self.name}/content"
                )
            }
        res["state"] = t.state
        if terminal:
            res["error"] = self.error_for(t.state)
            res["completionStats"] = self.completion_stats(t.state)
        elif self.forced is not None and self.forced_error is not None:
            res["error"] = self.forced_error
        res["createTime"] = rfc3339_us(self.created_at)
        if t.start is not None:
            res["startTime"] = rfc3339_us(t.start)
        if t.end is not None:
            res["endTime"] = rfc3339_us(t.end)
        res["updateTime"] = rfc3339_us(t.update)
        res["modelVersionId"] = "1"
        return res


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def _check_fields(obj: dict[str, Any], known: set[str], prefix: str = "") -> None:
    for key in obj:
        if key not in known:
            raise _invalid(f'Invalid JSON payload received. Unknown name "{prefix}{key}": Cannot find field.')


def parse_create_body(raw: bytes) -> tuple[str, str]:
    """Check a create-job body is exactly the documented one; return its display name and file name."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received. Expected an object.")
    _check_fields(body, _CREATE_FIELDS)
    display_name = body.get("displayName")
    if not isinstance(display_name, str) or not display_name.strip():
        raise _invalid("displayName is required.")
    if len(display_name) > 128:
        raise _invalid("displayName must be at most 128 characters.")
    input_config = body.get("inputConfig")
    output_config = body.get("outputConfig")
    if not isinstance(input_config, dict):
        raise _invalid("inputConfig is required.")
    if not isinstance(output_config, dict):
        raise _invalid("outputConfig is required.")
    _check_fields(input_config, _INPUT_FIELDS, "inputConfig.")
    _check_fields(output_config, _OUTPUT_FIELDS, "outputConfig.")
    if input_config.get("instancesFormat") != "jsonl":
        raise _invalid("inputConfig.instancesFormat must be 'jsonl'.")
    if output_config.get("predictionsFormat") != "jsonl":
        raise _invalid("outputConfig.predictionsFormat must be 'jsonl'.")
    source = input_config.get("gcsSource")
    if not isinstance(source, dict) or set(source) != {"uris"} or not isinstance(source["uris"], str):
        raise _invalid("inputConfig.gcsSource.uris must be the name of an uploaded file (a string).")
    if not source["uris"]:
        raise _invalid("inputConfig.gcsSource.uris must not be empty.")
    return display_name, source["uris"]
