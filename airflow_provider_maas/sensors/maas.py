"""MaaSBatchJobSensor: wait for a batch job, in poke, reschedule or deferrable mode.

The hook (with the client modules), the job states, the trigger and its event are imported by the
first poke or execute, not where the DAG is parsed.
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_maas._compat import conf
from airflow_provider_maas.batch.int_settings import check_seconds
from airflow_provider_maas.batch.polling import (
    DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
    OneJobWait,
    poll_errors_arg,
    poll_job,
)
from airflow_provider_maas.flags import FlagParameters, parameter_flag
from airflow_provider_maas.hooks.connection import DEFAULT_CONN_ID
from airflow_provider_maas.plugins.links import MaaSProgressLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_maas.hooks.maas import MaaSHook


class MaaSBatchJobSensor(FlagParameters, BaseSensorOperator):
    """Wait for a MaaS batch job to end; returns the final job JSON (XCom ``return_value``).

    Succeeds on SUCCEEDED, and on PARTIALLY_SUCCEEDED with a warning giving the counts (unless
    ``fail_on_partial``). Raises :class:`MaaSJobFailedError` with the service's message on FAILED,
    CANCELLED or EXPIRED. Undocumented states are logged and polled until ``timeout``. Waits
    under the one wait policy (``batch.polling``) in poke, reschedule and deferrable modes alike: a
    job answering 404 on 3 polls in a row is gone (:class:`MaaSNotFoundError`).
    ``deferrable`` and ``fail_on_partial`` take a bool, or a string read as a flag where the sensor is
    made (:func:`~airflow_provider_maas.flags.parameter_flag`: ``"false"`` is false, a typo is refused).

    :param job_name: The job to wait for (templated), e.g. ``create.output``.
    :param poll_interval: Seconds between polls (also ``poke_interval``).
    :param deferrable: Wait in the triggerer, freeing the worker slot.
    :param fail_on_partial: Fail on PARTIALLY_SUCCEEDED instead of warning.
    :param max_consecutive_poll_errors: Give up after this many failed polls in a row (each poll is
        already retried by the hook; 408, 429, any 5xx, connection errors and timeouts count, a success
        resets the count), in every mode. Default 5; raise it to ride out an outage of a few
        minutes (about ``poll_interval`` seconds per failed poll).
    :param maas_conn_id: The Airflow connection of type ``maas``.
    :param endpoint: ENDPOINT id overriding the connection's (templated).
    """

    template_fields = ("job_name", "endpoint", "maas_conn_id")
    FLAGS = ("deferrable", "fail_on_partial")
    operator_extra_links = (MaaSProgressLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        job_name: str,
        poll_interval: float = 60,
        deferrable: bool | str = conf.getboolean("operators", "default_deferrable", fallback=False),
        fail_on_partial: bool | str = False,
        max_consecutive_poll_errors: int = DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
        maas_conn_id: str = DEFAULT_CONN_ID,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_seconds("poll_interval", poll_interval)
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.max_consecutive_poll_errors = poll_errors_arg(max_consecutive_poll_errors, None, owner=type(self).__name__)
        self.job_name = job_name
        self.poll_interval = poll_interval
        self.deferrable = parameter_flag(deferrable, what="deferrable")
        self.fail_on_partial = parameter_flag(fail_on_partial, what="fail_on_partial")
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint

    @cached_property
    def _wait_rule(self) -> OneJobWait:
        return OneJobWait(self.max_consecutive_poll_errors)

    @cached_property
    def hook(self) -> MaaSHook:
        from airflow_provider_maas.hooks.maas import MaaSHook

        return MaaSHook(maas_conn_id=self.maas_conn_id, endpoint=self.endpoint)

    def poke(self, context: Context) -> PokeReturnValue | bool:
        from airflow_provider_maas.client.states import job_outcome, log_state_change
        from airflow_provider_maas.triggers.events import check_final_job

        # The rule's counts live as long as this instance: one try in poke mode, one poke in reschedule mode.
        job = poll_job(self.hook.get_batch_job, self.job_name, self._wait_rule, self.log)
        if job is None:
            return False
        outcome = job_outcome(job, self.job_name)
        if not outcome.ended:
            log_state_change(self.log, self.job_name, outcome.state)
            return False
        return PokeReturnValue(is_done=True, xcom_value=check_final_job(job, fail_on_partial=self.fail_on_partial))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        result = self.poke(context)
        if isinstance(result, PokeReturnValue):
            return result.xcom_value

        from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger

        timeout = float(self.timeout) if self.timeout is not None else None
        self.defer(
            trigger=MaaSBatchJobTrigger(
                job_name=self.job_name,
                maas_conn_id=self.maas_conn_id,
                endpoint=self.endpoint,
                poll_interval=self.poll_interval,
                end_time=None if timeout is None else time.time() + timeout,
                max_consecutive_poll_errors=self.max_consecutive_poll_errors,
            ),
            method_name="execute_complete",
            timeout=None if timeout is None else timedelta(seconds=timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger: validate the event and return the final job JSON."""
        from airflow_provider_maas.triggers.events import check_job_event

        job = check_job_event(event, fail_on_partial=self.fail_on_partial)
        self.log.info("Job %s ended in %s", self.job_name, job.get("state"))
        return job
