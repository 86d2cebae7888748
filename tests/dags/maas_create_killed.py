"""Test-only DAG for ``tests/test_create_killed.py``: one ``MaaSCreateBatchJobOperator`` task run by a
real ``airflow scheduler`` (``@once``); its task process is SIGKILLed while its create is in flight."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import MaaSCreateBatchJobOperator

with DAG(
    dag_id="maas_create_killed",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule="@once",
    catchup=False,
    tags=["maas", "test"],
) as dag:
    MaaSCreateBatchJobOperator(
        task_id="create",
        file_name="killed.jsonl",
        display_name="killed-in-flight",
        retries=3,
        retry_delay=pendulum.duration(seconds=1),
    )
