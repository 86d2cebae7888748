"""The batch progress plugin, loaded by Airflow through the ``airflow.plugins`` entry point of this
distribution (pyproject.toml): installed means loaded, on every Airflow 3 version.

Why the entry point and not ``plugins`` in ``get_provider_info()``: Airflow (3.0 to 3.3) reads a
provider's plugins only when ``[core] lazy_discover_providers`` is False, which is not the default;
entry-point plugins are always loaded. Listing it in both would load it twice there ("already
registered"), so it is listed once.

It gives:

- a FastAPI app at ``/maas-progress`` on the API server (below ``[api] base_url``): the page
  (``/maas-progress/?dag_id=&run_id=&task_id=&map_index=``) and its JSON
  (``/maas-progress/api/dags/{dag_id}/progress?run_id=&task_id=&map_index=``), built on first use (workers that load plugins never
  import the API server's modules);
- on Airflow >= 3.1 a "Batch progress" tab on task instance pages (``external_views``); on
  Airflow >= 3.4 its ``applies_to`` keeps it to the MaaS operators (see :func:`tab`), older versions
  show it on every task and the page then says it has nothing to show;
- the "Batch progress" extra link of the MaaS operators (``plugins.links``), the way to the page
  on Airflow 3.0.
"""

from __future__ import annotations

from typing import Any

from airflow import __version__ as airflow_version
from airflow.plugins_manager import AirflowPlugin

from airflow_provider_maas.plugins.links import BATCH_OPERATORS, JOB_OPERATORS, URL_PREFIX

#: The first Airflow version whose UI reads a view's ``applies_to`` (older ones ignore the key).
APPLIES_TO_SINCE = (3, 4)


def _version() -> tuple[int, int]:
    major, minor = airflow_version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


class _LazyApp:
    """An ASGI app that builds the FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_provider_maas.plugins.progress_api import create_app

            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "airflow_provider_maas.plugins.progress_api:create_app()"


def tab(version: tuple[int, int]) -> dict[str, Any]:
    """The "Batch progress" tab (an ``external_views`` entry) as Airflow ``version`` reads it.

    ``applies_to`` as Airflow's UI matches it (``airflow-core/src/airflow/ui/src/utils/pluginAppliesTo.ts``
    on main): ``operators`` is compared with the task instance's ``operator``, the operator's class
    NAME (not its dotted path); ``operator_names`` with the display name. A dotted path would match
    no task at all and hide the tab everywhere. Only versions that read it get the key.
    """
    view: dict[str, Any] = {
        "name": "Batch progress",
        # Relative: the UI's <base href> carries [api] base_url's path.
        "href": URL_PREFIX.lstrip("/") + "/?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}&map_index={MAP_INDEX}",
        "destination": "task_instance",
        "url_route": "maas-batch-progress",
    }
    if version >= APPLIES_TO_SINCE:
        view["applies_to"] = {"operators": [*BATCH_OPERATORS, *JOB_OPERATORS]}
    return view


TAB = tab(_version())


class MaaSProgressPlugin(AirflowPlugin):
    """Progress of MaaS batches in the Airflow UI (see the module docstring)."""

    name = "maas_batch_progress"
    fastapi_apps = [{"name": "MaaS batch progress", "app": _LazyApp(), "url_prefix": URL_PREFIX}]
    external_views = [TAB] if _version() >= (3, 1) else []
