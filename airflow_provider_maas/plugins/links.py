"""How the progress page finds a task instance: the "Batch progress" button of the MaaS operators
(every Airflow version; the only way to the page on Airflow 3.0, which has no task instance tabs
for plugins) and the XCom the batch operator leaves (where its state is). Imported by the
operators: kept small."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from airflow_provider_maas._compat import conf

if TYPE_CHECKING:
    from airflow_provider_maas.batch.record.journal import BatchJournal

#: Where the plugin's FastAPI app is mounted on the API server (below ``[api] base_url``'s path).
URL_PREFIX = "/maas-progress"
#: Operators with a progress view (``task_type``, as the task instance records it): read by the
#: plugin (the tab's ``applies_to``) and by its app (which view a task instance gets).
BATCH_OPERATORS = ("MaaSBatchPredictionOperator",)
JOB_OPERATORS = ("MaaSCreateBatchJobOperator", "MaaSBatchJobSensor")


def progress_query(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """Percent-encoded, a space as ``%20``: the page reads a ``+`` as a plus (Airflow 3.1's tab puts
    ``{RUN_ID}`` in unencoded, and a scheduled run's id holds one: ``...T00:00:00+00:00``)."""
    return urlencode(
        {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": -1 if map_index is None else map_index},
        quote_via=quote,
    )


class MaaSProgressLink(BaseOperatorLink):
    """Opens the progress page of the task instance (``[api] base_url`` respected)."""

    name = "Batch progress"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        query = progress_query(ti_key.dag_id, ti_key.run_id, ti_key.task_id, getattr(ti_key, "map_index", -1))
        return f"{base}{URL_PREFIX}/?{query}"


#: XCom key the batch operator pushes when it starts: where the progress page finds its state.
PROGRESS_XCOM_KEY = "maas_progress"


def announce(context: Any, journal: BatchJournal, prices: dict[str, float] | None) -> None:
    """Tell the progress page where this task instance's state is and its ``prices`` (XCom
    :data:`PROGRESS_XCOM_KEY`; kept across deferrals, cleared with the task's other XComs)."""
    context["ti"].xcom_push(key=PROGRESS_XCOM_KEY, value={"state": journal.uri, "prices": prices})
