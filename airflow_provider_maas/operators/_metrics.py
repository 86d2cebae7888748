"""The provider's metrics, sent through Airflow's own ``Stats`` (StatsD or OpenTelemetry, as the
deployment's ``[metrics]`` section configures; nothing is sent when metrics are off).

Every name starts with ``maas.`` and is tagged ``dag_id`` and ``task_id`` (backends without tags,
such as plain StatsD, drop them; ``statsd_influxdb_enabled`` or OpenTelemetry keep them):

========================================  =======  ====================================================
name                                      type     value
========================================  =======  ====================================================
``maas.batch.requests_answered``          counter  requests with an answer (the summary's ``succeeded``)
``maas.batch.requests_failed``            counter  requests without one (``failed``, missing included)
``maas.batch.prompt_tokens``              counter  the summary's ``prompt_tokens``
``maas.batch.candidates_tokens``          counter  ``candidates_tokens``
``maas.batch.thoughts_tokens``            counter  ``thoughts_tokens``
``maas.batch.cost_usd``                   counter  ``cost_usd`` (only with ``prices=``)
``maas.batch.jobs_created``               counter  one per job the service created
``maas.batch.jobs_active``                gauge    jobs of the task not seen ended, each time it looks
========================================  =======  ====================================================

Answers, tokens and cost are counted once, when the batch's outputs are written (the numbers of
its XCom ``summary``); the progress page shows them while the batch runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from airflow_provider_maas.batch.answers.summary_types import BatchSummary

log = logging.getLogger(__name__)

PREFIX = "maas.batch."
#: The keys of :class:`~airflow_provider_maas.batch.answers.summary_types.BatchSummary` a counter reads:
#: ``tests/test_summary_types.py`` checks that each is a number of that type (a summary key renamed
#: must not silently stop a metric).
SummaryCounterKey = Literal["succeeded", "failed", "prompt_tokens", "candidates_tokens", "thoughts_tokens", "cost_usd"]
#: Summary key -> counter name (without :data:`PREFIX`).
SUMMARY_COUNTERS: dict[SummaryCounterKey, str] = {
    "succeeded": "requests_answered",
    "failed": "requests_failed",
    "prompt_tokens": "prompt_tokens",
    "candidates_tokens": "candidates_tokens",
    "thoughts_tokens": "thoughts_tokens",
    "cost_usd": "cost_usd",
}
JOBS_CREATED = "jobs_created"
JOBS_ACTIVE = "jobs_active"


def _stats() -> Any:
    try:  # Airflow >= 3.1 (``airflow.stats`` warns there)
        from airflow.sdk.observability.stats import Stats
    except ImportError:  # Airflow 3.0
        from airflow.stats import Stats
    return Stats


def tags_of(context: Any) -> dict[str, str]:
    """``{"dag_id", "task_id"}`` of the running task instance ({} without one)."""
    ti = context.get("ti") if context else None
    if ti is None:
        return {}
    return {"dag_id": str(ti.dag_id), "task_id": str(ti.task_id)}


def _send(kind: str, name: str, value: float, tags: dict[str, str]) -> None:
    """Never lets a metrics backend fail the task."""
    try:
        getattr(_stats(), kind)(PREFIX + name, value, tags=tags)
    except Exception:
        log.warning("Could not send metric %s%s", PREFIX, name, exc_info=True)


def batch_finished(context: Any, summary: BatchSummary) -> None:
    """Count a finished batch's answers, tokens and cost (its ``summary``)."""
    tags = tags_of(context)
    for key, name in SUMMARY_COUNTERS.items():
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            _send("incr", name, value, tags)


def job_created(context: Any) -> None:
    _send("incr", JOBS_CREATED, 1, tags_of(context))


class CountingCreates:
    """A hook whose ``create_batch_job`` counts :data:`JOBS_CREATED` when the service answers with a
    job; every other attribute is the hook's own (what the batch driver is given)."""

    def __init__(self, hook: Any, context: Any) -> None:
        self._hook = hook
        self._tags = tags_of(context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)

    def create_batch_job(self, file_name: str, display_name: str) -> dict[str, Any]:
        job = self._hook.create_batch_job(file_name, display_name)
        _send("incr", JOBS_CREATED, 1, self._tags)
        return job


def jobs_active(context: Any, count: int) -> None:
    _send("gauge", JOBS_ACTIVE, count, tags_of(context))
