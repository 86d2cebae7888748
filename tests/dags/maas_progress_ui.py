"""Test-only DAG for ``tests/browser/test_ui_progress.py``: one deferrable batch of slow jobs, run
once by a real scheduler; its files are in ``$MAAS_PROGRESS_DIR``."""

from __future__ import annotations

import os

from airflow.providers.standard.operators.empty import EmptyOperator

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from tests.dag_builders import once_dag

WORK = os.environ.get("MAAS_PROGRESS_DIR", "/nonexistent")

with once_dag("maas_progress_ui") as dag:
    MaaSBatchPredictionOperator(
        task_id="predict",
        source=f"{WORK}/requests.jsonl",
        destination=f"{WORK}/results.jsonl",
        poll_interval=1,
        deferrable=True,
        max_requests_per_file=5,
        max_active_jobs=2,
        prices={"prompt": 0.15, "candidates": 0.6},
    )
    EmptyOperator(task_id="other")  # not a MaaS operator: the tab says it has nothing to show
