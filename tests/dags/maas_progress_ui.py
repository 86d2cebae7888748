"""Test-only DAG for ``tests/browser/test_ui_progress.py``: one deferrable batch of slow jobs, run
once by a real scheduler; its files are in ``$MAAS_PROGRESS_DIR``."""

from __future__ import annotations

import os

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

WORK = os.environ.get("MAAS_PROGRESS_DIR", "/nonexistent")

with DAG(
    dag_id="maas_progress_ui",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule="@once",
    catchup=False,
    tags=["maas", "test"],
) as dag:
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
