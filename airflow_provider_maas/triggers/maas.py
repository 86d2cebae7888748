"""Triggers that wait for MaaS batch jobs in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_maas.events import job_event
from airflow_provider_maas.exceptions import MaaSError, MaaSRetryableError
from airflow_provider_maas.states import StateKind, classify_state, job_error_message

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: Consecutive failed polls (each already retried by the hook) tolerated before giving up.
DEFAULT_MAX_CONSECUTIVE_ERRORS = 5


class _JobPoller:
    """Polls one job with the hook's async call, tracking consecutive transient errors."""

    def __init__(self, hook: Any, job_name: str, max_consecutive_errors: int, log: Any) -> None:
        self.hook = hook
        self.job_name = job_name
        self.max_errors = max_consecutive_errors
        self.errors = 0
        self.last_state: str | None = None
        self.started = time.monotonic()
        self.log = log

    async def poll(self) -> dict[str, Any] | None:
        """Poll once; returns a final event payload, or None to keep waiting."""
        try:
            job = await self.hook.aget_batch_job(self.job_name)
        except MaaSRetryableError as err:
            self.errors += 1
            if self.errors >= self.max_errors:
                return job_event("error", self.job_name, None, f"{self.errors} polls in a row failed: {err}")
            self.log.warning("Polling job %s failed (%d in a row): %s", self.job_name, self.errors, err)
            return None
        except MaaSError as err:
            return job_event("error", self.job_name, None, str(err))
        self.errors = 0
        state = job.get("state")
        kind = classify_state(state)
        if state != self.last_state:
            self.log.info("Job %s is %s (after %.0fs)", self.job_name, state, time.monotonic() - self.started)
            if kind is StateKind.UNKNOWN:
                self.log.warning("Job %s is in an undocumented state %r; still polling", self.job_name, state)
            self.last_state = state
        if kind in (StateKind.SUCCEEDED, StateKind.PARTIAL):
            return job_event("success", self.job_name, job, f"Job {self.job_name} ended in {state}")
        if kind is StateKind.FAILED:
            return job_event("error", self.job_name, job, job_error_message(job))
        return None


class _PollingTrigger(BaseTrigger):
    """What both triggers share: connection, poll interval, absolute deadline, error tolerance,
    one shared aiohttp session for the whole wait, and the poll / deadline / sleep loop."""

    def __init__(
        self,
        maas_conn_id: str,
        endpoint: str | None,
        poll_interval: float,
        end_time: float | None,
        max_consecutive_errors: int,
    ) -> None:
        super().__init__()
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint
        self.poll_interval = float(poll_interval)
        self.end_time = end_time
        self.max_consecutive_errors = max_consecutive_errors

    def _own_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self._own_kwargs(),
                "maas_conn_id": self.maas_conn_id,
                "endpoint": self.endpoint,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "max_consecutive_errors": self.max_consecutive_errors,
            },
        )

    def _pollers(self, hook: Any) -> list[_JobPoller]:
        raise NotImplementedError

    def _finished(self, ended: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def _timed_out(self, pollers: list[_JobPoller]) -> dict[str, Any]:
        raise NotImplementedError

    def _failed(self, message: str) -> dict[str, Any]:
        raise NotImplementedError

    async def _wait(self) -> dict[str, Any]:
        from airflow_provider_maas.hooks.maas import MaaSHook

        hook = MaaSHook(maas_conn_id=self.maas_conn_id, endpoint=self.endpoint, max_attempts=3)
        try:
            async with hook.async_session_scope():  # the connection is looked up once per wait
                pollers = self._pollers(hook)
                while True:
                    results = await asyncio.gather(*(p.poll() for p in pollers))
                    ended = [event for event in results if event is not None]
                    if ended:
                        return self._finished(ended)
                    remaining = None if self.end_time is None else self.end_time - time.time()
                    if remaining is not None and remaining <= 0:
                        return self._timed_out(pollers)
                    await asyncio.sleep(self.poll_interval if remaining is None else min(self.poll_interval, remaining))
        except MaaSError as err:  # the connection itself is unusable (missing key, bad URL...)
            return self._failed(str(err))


class MaaSBatchJobTrigger(_PollingTrigger):
    """Wait for one batch job to end.

    Yields exactly one event ``{"status": "success"|"error"|"timeout", "job_name", "state",
    "message", "job"}``: success on SUCCEEDED and PARTIALLY_SUCCEEDED, error on FAILED,
    CANCELLED, EXPIRED, a refused key, an unknown job or too many failed polls in a row.

    :param job_name: The job to wait for.
    :param maas_conn_id: The Airflow connection (its id travels, never the key).
    :param endpoint: ENDPOINT id overriding the connection's.
    :param poll_interval: Seconds between polls.
    :param end_time: Absolute deadline (epoch seconds); survives a triggerer restart.
    :param max_consecutive_errors: Failed polls in a row tolerated before an error event.
    """

    def __init__(
        self,
        job_name: str,
        maas_conn_id: str = "maas_default",
        endpoint: str | None = None,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
    ) -> None:
        super().__init__(maas_conn_id, endpoint, poll_interval, end_time, max_consecutive_errors)
        self.job_name = job_name

    def _own_kwargs(self) -> dict[str, Any]:
        return {"job_name": self.job_name}

    def _pollers(self, hook: Any) -> list[_JobPoller]:
        return [_JobPoller(hook, self.job_name, self.max_consecutive_errors, self.log)]

    def _finished(self, ended: list[dict[str, Any]]) -> dict[str, Any]:
        return ended[0]

    def _timed_out(self, pollers: list[_JobPoller]) -> dict[str, Any]:
        return job_event(
            "timeout",
            self.job_name,
            None,
            f"Job {self.job_name} did not end before the deadline (last state {pollers[0].last_state}); "
            "it keeps running on the service, which has no cancel call.",
        )

    def _failed(self, message: str) -> dict[str, Any]:
        return job_event("error", self.job_name, None, message)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(await self._wait())

    async def on_kill(self) -> None:
        self.log.warning(
            "Task killed while waiting for job %s: the MaaS API has no cancel call, so the job keeps "
            "running (and is billed) on the service.",
            self.job_name,
        )


class MaaSBatchJobsTrigger(_PollingTrigger):
    """Wait for several jobs at once; fires as soon as at least one of them ends (or the deadline).

    Event: ``{"status": "success"|"error"|"timeout", "events": [<one job event per ended job>],
    "message", "payload"}``; ``payload`` is handed back unchanged, so the resumed operator gets its
    state even where the deferral's kwargs are not passed on (``dag.test()``). Used by
    :class:`~airflow_provider_maas.operators.maas.MaaSBatchPredictionOperator` to keep
    ``max_active_jobs`` in flight with a single deferral.
    """

    def __init__(
        self,
        job_names: list[str],
        maas_conn_id: str = "maas_default",
        endpoint: str | None = None,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        payload: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(maas_conn_id, endpoint, poll_interval, end_time, max_consecutive_errors)
        self.job_names = list(job_names)
        self.payload = payload

    def _own_kwargs(self) -> dict[str, Any]:
        return {"job_names": self.job_names, "payload": self.payload}

    def _pollers(self, hook: Any) -> list[_JobPoller]:
        return [_JobPoller(hook, name, self.max_consecutive_errors, self.log) for name in self.job_names]

    def _finished(self, ended: list[dict[str, Any]]) -> dict[str, Any]:
        return {"status": "success", "events": ended, "message": f"{len(ended)} job(s) ended"}

    def _timed_out(self, pollers: list[_JobPoller]) -> dict[str, Any]:
        return {
            "status": "timeout",
            "events": [],
            "message": f"{len(pollers)} job(s) still running at the deadline; they keep running "
            "on the service, which has no cancel call.",
        }

    def _failed(self, message: str) -> dict[str, Any]:
        return {"status": "error", "events": [], "message": message}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({**await self._wait(), "payload": self.payload})

    async def on_kill(self) -> None:
        self.log.warning(
            "Task killed while waiting for jobs %s: the MaaS API has no cancel call, so they keep "
            "running (and are billed) on the service.",
            ", ".join(self.job_names),
        )
