"""The progress plugin's FastAPI app (built by :func:`create_app` on the API server only).

``GET /api/dags/{dag_id}/progress?run_id=&task_id=&map_index=`` answers only users the API
server's auth manager lets read the task instances of that DAG (401 without a login, 403 without
access): Airflow's own ``requires_access_dag`` dependency, which reads the DAG id from the path on
every Airflow 3 version (3.0 reads it nowhere else). What it returns comes from the task
instance row, its XComs (``maas_progress``, ``summary``, ``return_value``) and, for the batch
operator, the batch state read by :func:`airflow_provider_maas.batch.progress.read_progress`.
No location, key or connection field is returned; URLs with user info are cut out of any text.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from airflow_provider_maas.batch.progress import DEFAULT_JOBS_LIMIT, job_progress, read_progress
from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.exceptions import MaaSError
from airflow_provider_maas.plugins.links import BATCH_OPERATORS, JOB_OPERATORS, PROGRESS_XCOM_KEY
from airflow_provider_maas.storage import to_path

log = logging.getLogger(__name__)

#: States in which the page keeps refreshing itself.
LIVE_STATES = {"queued", "scheduled", "running", "deferred", "up_for_retry", "up_for_reschedule", "restarting"}
#: Summary fields that locate files: never returned.
_LOCATIONS = re.compile(r"(uri|url|path|destination|source|location)s?$", re.I)
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@]*@", re.I)


def _scrub(value: Any) -> Any:
    """Drop location fields and user info in URLs, recursively."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _LOCATIONS.search(str(k))}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return _USERINFO.sub(r"\1", value)
    return value


def _task_instance(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
    from airflow.models.taskinstance import TaskInstance as TI
    from sqlalchemy import select

    return session.scalars(
        select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id, TI.map_index == map_index)
    ).first()


def _xcoms(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    keys = (PROGRESS_XCOM_KEY, "summary", "return_value")
    rows = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.map_index == map_index,
            XComModel.key.in_(keys),
        )
    ).all()
    return {row.key: XComModel.deserialize_value(row) for row in rows}


def _rendered(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from sqlalchemy import select

    fields = session.scalars(
        select(RTIF.rendered_fields).where(
            RTIF.dag_id == dag_id, RTIF.run_id == run_id, RTIF.task_id == task_id, RTIF.map_index == map_index
        )
    ).first()
    return fields if isinstance(fields, dict) else {}


def progress_of(dag_id: str, run_id: str, task_id: str, map_index: int, jobs_limit: int) -> dict[str, Any]:
    """What the API returns for one task instance (404 when there is no such task instance)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = _task_instance(session, dag_id, run_id, task_id, map_index)
        if ti is None:
            raise HTTPException(404, f"No task instance {dag_id}/{run_id}/{task_id}[{map_index}]")
        state = ti.state.value if hasattr(ti.state, "value") else ti.state
        operator = ti.custom_operator_name or ti.operator
        started = ti.start_date
        answer: dict[str, Any] = {
            "task": {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index},
            "ti_state": state,
            "try_number": ti.try_number,
            "operator": operator,
            "start_date": started.isoformat() if started else None,
            "end_date": ti.end_date.isoformat() if ti.end_date else None,
            "live": state in LIVE_STATES,
        }
        if ti.operator not in BATCH_OPERATORS + JOB_OPERATORS:
            return {**answer, "found": False, "kind": "other"}
        xcoms = _xcoms(session, dag_id, run_id, task_id, map_index)
        rendered = _rendered(session, dag_id, run_id, task_id, map_index) if ti.operator in JOB_OPERATORS else {}
    if ti.operator in JOB_OPERATORS:
        job = xcoms.get("return_value")
        if not isinstance(job, dict) and isinstance(rendered.get("job_name"), str):
            job = rendered["job_name"]  # the sensor, before it ends
        return _scrub({**answer, **job_progress(job)})
    progress: dict[str, Any] | None = None
    hint = xcoms.get(PROGRESS_XCOM_KEY)
    if isinstance(hint, dict) and isinstance(hint.get("state"), str):
        journal = BatchJournal(to_path(hint["state"], what="batch state"))
        for attempt in (1, 2):
            try:
                progress = read_progress(
                    journal,
                    prices=hint.get("prices") or None,
                    started=started.timestamp() if started else None,
                    jobs_limit=jobs_limit,
                )
                break
            except (OSError, ValueError, MaaSError):
                # An object compacted away or the state removed (the batch ended) while read:
                # read again once, then answer with what XCom holds.
                if attempt == 2:
                    log.warning("Could not read the batch state of %s/%s/%s", dag_id, run_id, task_id, exc_info=True)
    summary = xcoms.get("summary")
    result = {**answer, **(progress or {"found": summary is not None, "kind": "batch"})}
    if isinstance(summary, dict):
        result["summary"] = summary
    return _scrub(result)


def _page() -> str:
    return resources.files("airflow_provider_maas.plugins").joinpath("progress.html").read_text(encoding="utf-8")


def create_app() -> FastAPI:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    app = FastAPI(title="MaaS batch progress", docs_url=None, redoc_url=None, openapi_url=None)
    can_read = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        """The page: a shell without data; it reads ``api/dags/{dag_id}/progress`` with the user's own login."""
        return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})

    @app.get("/api/dags/{dag_id}/progress", dependencies=[can_read])
    def progress(
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        jobs_limit: int = Query(DEFAULT_JOBS_LIMIT, ge=0, le=100_000),
    ) -> dict[str, Any]:
        return progress_of(dag_id, run_id, task_id, map_index, jobs_limit)

    return app
