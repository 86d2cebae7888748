"""Test-only DAG: every MaaS operator and the sensor, side by side, each with retries=3, run by
tests/test_fail_fast.py with a wrong API key (or bad input): each must end FAILED after one try."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import MaaSMergeResultsOperator, MaaSSplitRequestsOperator
from tests.dag_builders import service_tasks

REQUESTS = os.environ.get("MAAS_FAIL_FAST_REQUESTS", "/nonexistent/requests.jsonl")
OUT = os.environ.get("MAAS_FAIL_FAST_OUTPUT", "/tmp/maas-fail-fast")

with DAG(
    "maas_fail_fast",
    start_date=pendulum.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=0)},
) as dag:
    service_tasks(REQUESTS, OUT, job_name="123")
    MaaSSplitRequestsOperator(task_id="split", source="/nonexistent/input.jsonl", destination_prefix=OUT + "/shards")
    MaaSMergeResultsOperator(
        task_id="merge", results=[OUT + "/missing.jsonl"], source=REQUESTS, destination=OUT + "/merged.jsonl"
    )
