"""Triggers that wait for MaaS batch jobs in the triggerer, without holding a worker slot.

Where the DAG is parsed, a trigger needs its arguments' checks only: the hook (with the client
modules), the job states and the event are imported by the first wait. ``MaaSHook`` and
``BatchJobsEvent`` stay attributes of this module, imported when first read (:func:`__getattr__`).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_maas.batch.int_settings import check_int
from airflow_provider_maas.batch.polling import (
    DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
    DEFAULT_MAX_PARALLEL_TRANSFERS,
    OneJobWait,
    first_poll_delay,
    min_first_poll_after,  # noqa: F401  (its earlier home: still importable from here)
    poll_errors_arg,
)
from airflow_provider_maas.exceptions import MaaSError, MaaSNotFoundError, MaaSRetryableError
from airflow_provider_maas.hooks.connection import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow_provider_maas.client.states import JobOutcome
    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.triggers.events import EventStatus, JobsEvent

    #: The batch trigger's event: the one :class:`~airflow_provider_maas.triggers.events.JobsEvent` (its old name).
    BatchJobsEvent = JobsEvent

#: This module's names imported when first read (PEP 562), not where the DAG is parsed: name -> (module, name there).
_ON_FIRST_USE = {
    "MaaSHook": ("airflow_provider_maas.hooks.maas", "MaaSHook"),
    "BatchJobsEvent": ("airflow_provider_maas.triggers.events", "JobsEvent"),
}


def __getattr__(name: str) -> Any:
    """``MaaSHook`` and ``BatchJobsEvent`` (the old name of the event class), imported when first read."""
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _ON_FIRST_USE[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


#: The old name of :data:`~airflow_provider_maas.batch.polling.DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS`.
DEFAULT_MAX_CONSECUTIVE_ERRORS = DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS
#: Polls in flight at once in one :class:`MaaSBatchJobsTrigger`: the operator's default
#: ``max_parallel_transfers`` (:data:`~airflow_provider_maas.batch.polling.DEFAULT_MAX_PARALLEL_TRANSFERS`).
DEFAULT_MAX_PARALLEL_POLLS = DEFAULT_MAX_PARALLEL_TRANSFERS


class _Ended:
    """A poller's final word: the job ended (``outcome`` and its JSON), or polling it failed (``error``).
    A plain class, not a dataclass: building one at import cost ~1 ms where the DAG is parsed."""

    __slots__ = ("error", "job", "job_name", "outcome")

    def __init__(
        self,
        job_name: str,
        outcome: JobOutcome | None = None,
        job: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        self.job_name = job_name
        self.outcome = outcome
        self.job = job
        self.error = error


class _JobPoller:
    """Polls one job with the hook's async call, under the wait policy (``batch.polling``): the
    error budget and "gone after three 404s in a row"."""

    def __init__(self, hook: MaaSHook, job_name: str, rule: OneJobWait, log: Any) -> None:
        self.hook = hook
        self.job_name = job_name
        self.rule = rule
        self.last_state: str | None = None
        self.started = time.monotonic()
        self.log = log

    async def poll(self) -> _Ended | None:
        """Poll once; None while the job is still going."""
        from airflow_provider_maas.client.states import job_outcome, log_state_change

        try:
            job = await self.hook.aget_batch_job(self.job_name)
        except (MaaSRetryableError, MaaSNotFoundError) as err:
            ending = self.rule.failed(self.job_name, err, self.log)
            return None if ending is None else _Ended(self.job_name, error=ending)
        except MaaSError as err:
            return _Ended(self.job_name, error=str(err))
        self.rule.answered(self.job_name)
        outcome = job_outcome(job, self.job_name)
        if outcome.state != self.last_state:
            log_state_change(self.log, self.job_name, outcome.state, time.monotonic() - self.started)
            self.last_state = outcome.state
        return _Ended(self.job_name, outcome, job) if outcome.ended else None


class _PollingTrigger(BaseTrigger):
    """What both triggers share: connection, poll interval, absolute deadline, the wait policy
    (``batch.polling``: error budget, 404s, first-poll delay), one shared aiohttp session for the
    whole wait, and the poll / deadline / sleep loop."""

    def __init__(
        self,
        maas_conn_id: str,
        endpoint: str | None,
        poll_interval: float,
        end_time: float | None,
        max_consecutive_poll_errors: int,
        first_poll_after: float | None,
    ) -> None:
        super().__init__()
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint
        self.poll_interval = float(poll_interval)
        self.end_time = end_time
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.first_poll_after = first_poll_after
        self.first_pause = first_poll_delay(self.poll_interval, first_poll_after)

    @property
    def max_consecutive_errors(self) -> int:
        """The old name of :attr:`max_consecutive_poll_errors`."""
        return self.max_consecutive_poll_errors

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
                "max_consecutive_poll_errors": self.max_consecutive_poll_errors,
                "first_poll_after": self.first_poll_after,
            },
        )

    def _job_names(self) -> list[str]:
        raise NotImplementedError

    def _fire(self, ended: list[_Ended], still_running: int) -> bool:
        """True when the jobs ended so far are enough to hand back to the task."""
        raise NotImplementedError

    def _event(
        self, status: EventStatus, ended: list[_Ended], message: str, last_states: dict[str, str | None]
    ) -> dict[str, Any]:
        raise NotImplementedError

    #: Polls in flight at once; None: all jobs at once.
    max_parallel_polls: int | None = None

    async def _poll_all(self, pollers: list[_JobPoller]) -> list[_Ended | None]:
        """One poll of each job, at most :attr:`max_parallel_polls` at a time; results in ``pollers``' order."""
        limit = self.max_parallel_polls
        if limit is None or len(pollers) <= limit:
            return list(await asyncio.gather(*(p.poll() for p in pollers)))
        results: list[_Ended | None] = [None] * len(pollers)
        queue = iter(enumerate(pollers))

        async def worker() -> None:
            for index, poller in queue:  # one shared iterator: each job is polled by one worker
                results[index] = await poller.poll()

        await asyncio.gather(*(worker() for _ in range(limit)))
        return results

    async def _pause(self, seconds: float | None = None) -> None:
        """Sleep ``seconds`` (one poll interval by default), or until the deadline if that comes first."""
        seconds = self.poll_interval if seconds is None else seconds
        remaining = None if self.end_time is None else self.end_time - time.time()
        await asyncio.sleep(seconds if remaining is None else max(0.0, min(seconds, remaining)))

    async def _wait(self) -> dict[str, Any]:
        hook_class = globals().get("MaaSHook") or __getattr__("MaaSHook")  # read here, so a test may replace it
        hook = hook_class(maas_conn_id=self.maas_conn_id, endpoint=self.endpoint)
        ended: list[_Ended] = []
        pollers: list[_JobPoller] = []
        try:
            async with hook.async_session_scope():  # the connection is looked up once per wait
                rule = OneJobWait(self.max_consecutive_poll_errors)
                pollers = [_JobPoller(hook, name, rule, self.log) for name in self._job_names()]
                await self._pause(self.first_pause)
                while True:
                    results = await self._poll_all(pollers)
                    pollers = [p for p, result in zip(pollers, results, strict=True) if result is None]
                    ended.extend(result for result in results if result is not None)
                    if any(e.error for e in ended):
                        errors = "; ".join(f"job {e.job_name}: {e.error}" for e in ended if e.error)
                        return self._event("error", ended, f"Waiting failed: {errors}", {})
                    if ended and self._fire(ended, len(pollers)):
                        return self._event("success", ended, f"{len(ended)} job(s) ended", {})
                    if self.end_time is not None and self.end_time <= time.time():
                        last = {p.job_name: p.last_state for p in pollers}
                        return self._event("timeout", ended, "", last)
                    await self._pause()
        except MaaSError as err:  # the connection itself is unusable (missing key, bad URL...)
            return self._event("error", ended, str(err), {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(await self._wait())

    async def on_kill(self) -> None:
        self.log.warning(
            "Task killed while waiting for job(s) %s: the MaaS API has no cancel call, so they keep "
            "running (and are billed) on the service.",
            ", ".join(self._job_names()),
        )


class MaaSBatchJobTrigger(_PollingTrigger):
    """Wait for one batch job to end.

    Yields exactly one event ``{"status": "success"|"error"|"timeout", "job_name", "state",
    "message", "job"}``: success on SUCCEEDED and PARTIALLY_SUCCEEDED, error on FAILED,
    CANCELLED, EXPIRED, a refused key, a job answering 404 on 3 polls in a row or too many failed
    polls in a row. The first poll waits as :class:`MaaSBatchJobsTrigger`'s does.

    :param job_name: The job to wait for.
    :param maas_conn_id: The Airflow connection (its id travels, never the key).
    :param endpoint: ENDPOINT id overriding the connection's.
    :param poll_interval: Seconds between polls.
    :param end_time: Absolute deadline (epoch seconds); survives a triggerer restart.
    :param max_consecutive_poll_errors: Failed polls in a row tolerated before an error event.
    :param first_poll_after: Seconds before the first poll; None: ``max(poll_interval, min_first_poll_after())``.
    :param max_consecutive_errors: Deprecated name of ``max_consecutive_poll_errors`` (kwargs
        serialised by earlier versions carry it).
    """

    def __init__(
        self,
        job_name: str,
        maas_conn_id: str = DEFAULT_CONN_ID,
        endpoint: str | None = None,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        max_consecutive_poll_errors: int = DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
        first_poll_after: float | None = None,
        max_consecutive_errors: int | None = None,
    ) -> None:
        errors = poll_errors_arg(max_consecutive_poll_errors, max_consecutive_errors, owner=type(self).__name__)
        super().__init__(maas_conn_id, endpoint, poll_interval, end_time, errors, first_poll_after)
        self.job_name = job_name

    def _own_kwargs(self) -> dict[str, Any]:
        return {"job_name": self.job_name}

    def _job_names(self) -> list[str]:
        return [self.job_name]

    def _fire(self, ended: list[_Ended], still_running: int) -> bool:
        return True

    def _event(
        self, status: EventStatus, ended: list[_Ended], message: str, last_states: dict[str, str | None]
    ) -> dict[str, Any]:
        from airflow_provider_maas.client.states import Outcome
        from airflow_provider_maas.triggers.events import job_event

        if status == "timeout":
            return job_event(
                "timeout",
                self.job_name,
                None,
                f"Job {self.job_name} did not end before the deadline (last state "
                f"{last_states.get(self.job_name)}); it keeps running on the service, which has no cancel call.",
            )
        if not ended or ended[0].outcome is None:
            return job_event("error", self.job_name, None, ended[0].error if ended and ended[0].error else message)
        outcome = ended[0].outcome
        if outcome.outcome is Outcome.FAILED:
            return job_event("error", self.job_name, ended[0].job, outcome.message)
        return job_event("success", self.job_name, ended[0].job, f"Job {self.job_name} ended in {outcome.state}")


class MaaSBatchJobsTrigger(_PollingTrigger):
    """Wait for several jobs at once; fires once ``fire_after`` of them ended, all ended, or the deadline.

    The event is a :class:`~airflow_provider_maas.triggers.events.JobsEvent` (as a dict): the compact outcome of each ended job, never
    the jobs' whole JSON. Used by
    :class:`~airflow_provider_maas.operators.maas.MaaSBatchPredictionOperator`, which sets
    ``fire_after`` so that it resumes only when enough slots are free to be worth refilling.

    The first poll comes ``first_poll_after`` seconds after the trigger starts (default: one
    ``poll_interval``, at least :func:`~airflow_provider_maas.batch.polling.min_first_poll_after`): the
    task has just seen every job running, and on Airflow 3.3 a trigger that fires before the scheduler
    has processed the end of the deferring worker process makes the scheduler fail the resumed try.

    :param job_names: The jobs to wait for (O(max_active_jobs) names: the only list in the kwargs).
    :param max_consecutive_poll_errors: Failed polls of one job in a row tolerated before an error event.
    :param fire_after: Fire once this many jobs ended; None: once all did.
    :param first_poll_after: Seconds before the first poll; None: ``max(poll_interval, min_first_poll_after())``.
    :param max_parallel_polls: Polls in flight at once (default :data:`DEFAULT_MAX_PARALLEL_POLLS`, 16);
        the others wait for a free place in the same round, so a round of N jobs takes about
        ``ceil(N / max_parallel_polls)`` answers. Kwargs serialised before this parameter existed
        get the default.
    :param max_consecutive_errors: Deprecated name of ``max_consecutive_poll_errors`` (kwargs
        serialised by earlier versions carry it).
    """

    def __init__(
        self,
        job_names: list[str],
        maas_conn_id: str = DEFAULT_CONN_ID,
        endpoint: str | None = None,
        poll_interval: float = 60.0,
        end_time: float | None = None,
        max_consecutive_poll_errors: int = DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
        fire_after: int | None = None,
        first_poll_after: float | None = None,
        max_parallel_polls: int = DEFAULT_MAX_PARALLEL_POLLS,
        max_consecutive_errors: int | None = None,
    ) -> None:
        errors = poll_errors_arg(max_consecutive_poll_errors, max_consecutive_errors, owner=type(self).__name__)
        super().__init__(maas_conn_id, endpoint, poll_interval, end_time, errors, first_poll_after)
        self.job_names = list(job_names)
        self.fire_after = fire_after
        self.max_parallel_polls = check_int("max_parallel_polls", max_parallel_polls, 1)

    def _own_kwargs(self) -> dict[str, Any]:
        return {
            "job_names": self.job_names,
            "fire_after": self.fire_after,
            "max_parallel_polls": self.max_parallel_polls,
        }

    def _job_names(self) -> list[str]:
        return self.job_names

    def _fire(self, ended: list[_Ended], still_running: int) -> bool:
        return still_running == 0 or (self.fire_after is not None and len(ended) >= self.fire_after)

    def _event(
        self, status: EventStatus, ended: list[_Ended], message: str, last_states: dict[str, str | None]
    ) -> dict[str, Any]:
        from airflow_provider_maas.triggers.events import JobsEvent

        if status == "timeout":
            message = (
                f"{len(last_states)} job(s) still running at the deadline; they keep running on the service, "
                "which has no cancel call."
            )
        outcomes = tuple(e.outcome for e in ended if e.outcome is not None)
        done = {e.job_name for e in ended}
        running = tuple(name for name in self.job_names if name not in done)
        return JobsEvent(status, message, outcomes, running).as_dict()
