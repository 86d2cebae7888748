"""What the MaaS operators share: the base class with ``maas_conn_id``/``endpoint`` and the hook,
task state, job reuse, summaries and asset events.

Imported where the DAG is parsed: the hook (with the client modules) is imported by its first use in
``execute``, the job states by :func:`reusable_job`.
"""

from __future__ import annotations

import logging
import time
import warnings
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_maas._compat import AirflowProviderDeprecationWarning
from airflow_provider_maas.batch.polling import NOT_FOUND_TRIES
from airflow_provider_maas.batch.record.task_record import (  # noqa: F401 (re-exported)
    RECORD_VARIABLE_PREFIX,
    VariableStateStore,
    task_record,
)
from airflow_provider_maas.exceptions import MaaSInputError, MaaSNotFoundError, MaaSResultsGoneError
from airflow_provider_maas.hooks.connection import DEFAULT_CONN_ID
from airflow_provider_maas.operators._lineage import LineageMixin

if TYPE_CHECKING:
    from airflow_provider_maas.batch.answers.summary_types import ResultsSummary
    from airflow_provider_maas.hooks.maas import MaaSHook

log = logging.getLogger(__name__)


class MaaSBaseOperator(LineageMixin, BaseOperator):
    """Shared arguments of the operators that call the service: ``maas_conn_id`` and ``endpoint``."""

    def __init__(self, *, maas_conn_id: str = DEFAULT_CONN_ID, endpoint: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint

    @cached_property
    def hook(self) -> MaaSHook:
        """The hook, made by the first use in ``execute``: the hook and client modules are not imported
        where the DAG is parsed."""
        from airflow_provider_maas.hooks.maas import MaaSHook

        return MaaSHook(maas_conn_id=self.maas_conn_id, endpoint=self.endpoint)


def renamed(old_value: Any, old: str, new: str, value: Any) -> Any:
    """The value of parameter ``new`` (``value``, None if not given), or that of its old name ``old``
    (``old_value``, None if not given) with an ``AirflowProviderDeprecationWarning``; both given: refused.

    The old name is a keyword parameter of the operator's ``__init__``, not taken from ``**kwargs``:
    Airflow's ``.partial()`` and ``.expand()`` accept only the names ``__init__`` declares. A mapped
    task is made (and warns) when its task instance runs."""
    if old_value is None:
        return value
    if value is not None:
        raise MaaSInputError(f"{old} is the old name of {new}: give {new} only")
    warnings.warn(f"{old} is deprecated: use {new}", AirflowProviderDeprecationWarning, stacklevel=3)
    return old_value


class RenamedParameters:
    """An operator some of whose parameters were renamed (:attr:`RENAMED`: old name -> new name). Its
    ``__init__`` takes each old name as a keyword parameter and passes it to :func:`renamed`, so that
    ``.expand()`` maps over it (the mapped task is made, and warns, when its task instance runs).
    ``.partial()`` gives Airflow the new name instead, warning where the DAG is parsed: an ``XComArg``
    given under an old name (``sources=download.output``) then makes the task downstream of its
    producer, as under the new name (a template field), and is not read before it ran."""

    RENAMED: ClassVar[dict[str, str]] = {}

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        for old, new in cls.RENAMED.items():
            if kwargs.get(old) is not None:
                kwargs[new] = renamed(kwargs.pop(old), old, new, kwargs.get(new))
        return super().partial(**kwargs)  # type: ignore[misc]


def task_state(context: Any) -> Any | None:
    """Where the create operator keeps its record across tries (decided in
    :func:`~airflow_provider_maas.batch.record.task_record.task_record`: ``task_state_store`` on Airflow
    >= 3.3, an Airflow Variable ``maas_create.<digest>`` before, None outside an Airflow worker)."""
    store = task_record(context)
    if store is None:
        log.warning("Not running in an Airflow task: no record of the create survives this process")
    return store


def reusable_job(hook: Any, store: Any | None, key: str, file_name: str, task_log: Any) -> str | None:
    """The job a previous try of this task instance created for ``file_name``, if still usable."""
    from airflow_provider_maas.client.states import Outcome, job_outcome

    if store is None:
        return None
    saved = store.get(key)
    if not isinstance(saved, dict) or not saved.get("job_name"):
        return None
    job_name = saved["job_name"]
    if saved.get("file_name") != file_name:
        task_log.info("A previous try created job %s for another file; creating a new job", job_name)
        return None

    try:
        job = hook.get_batch_job(job_name)
    except MaaSNotFoundError:
        task_log.warning("Job %s of a previous try no longer exists; creating a new job", job_name)
        return None
    outcome = job_outcome(job, job_name)
    state = outcome.state
    if outcome.outcome is Outcome.FAILED:
        task_log.warning("Job %s of a previous try ended %s; creating a new job", job_name, state)
        return None
    if outcome.has_results and results_gone(hook, job_name):
        task_log.warning(
            "Job %s of a previous try ended %s but its results are gone (kept 7 days); creating a new job",
            job_name,
            state,
        )
        return None
    task_log.info("Reusing job %s created by a previous try of this task (state %s)", job_name, state)
    return job_name


def results_gone(hook: Any, job_name: str, *, pause: float = 1.0) -> bool:
    """Whether a finished job's results can no longer be downloaded: 410, or 404 on
    ``NOT_FOUND_TRIES`` reads in a row (``pause`` seconds apart)."""
    for attempt in range(1, NOT_FOUND_TRIES + 1):
        try:
            hook.get_results_metadata(job_name)
        except MaaSResultsGoneError:
            return True
        except MaaSNotFoundError as err:
            if attempt == NOT_FOUND_TRIES:
                return True
            log.warning("No results for job %s (%s); reading again in %.0fs", job_name, err, pause)
            time.sleep(pause)
        else:
            return False
    return True


def publish_summary(operator: Any, context: Any, summary: ResultsSummary, uri: str) -> None:
    """Push XCom ``summary``, log one line, attach the summary to ``Asset`` outlets."""
    context["ti"].xcom_push(key="summary", value=summary)
    operator.log.info(
        "Results at %s: %s requests, %s succeeded, %s failed (%s missing), %s tokens",
        uri,
        summary.get("requests"),
        summary.get("succeeded"),
        summary.get("failed"),
        summary.get("missing", 0),
        summary.get("total_tokens"),
    )
    try:
        from airflow.sdk import Asset
    except ImportError:  # pragma: no cover
        return
    events = context.get("outlet_events")
    for outlet in getattr(operator, "outlets", None) or []:
        if isinstance(outlet, Asset) and events is not None:
            events[outlet].extra = {**summary, "uri": uri}
