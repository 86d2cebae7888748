"""The "Batch progress" button of the MaaS operators (every Airflow version; the only way to the
page on Airflow 3.0, which has no task instance tabs for plugins)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

from airflow_provider_maas._compat import conf

#: Where the plugin's FastAPI app is mounted on the API server (below ``[api] base_url``'s path).
URL_PREFIX = "/maas-progress"


def progress_query(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    return urlencode(
        {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": -1 if map_index is None else map_index}
    )


class MaaSProgressLink(BaseOperatorLink):
    """Opens the progress page of the task instance (``[api] base_url`` respected)."""

    name = "Batch progress"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        query = progress_query(ti_key.dag_id, ti_key.run_id, ti_key.task_id, getattr(ti_key, "map_index", -1))
        return f"{base}{URL_PREFIX}/?{query}"
