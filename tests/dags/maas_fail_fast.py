"""Test-only DAG: every MaaS operator and the sensor, side by side, each with retries=3, run by
tests/test_fail_fast.py with a wrong API key (or bad input): each must end FAILED after one try."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
    MaaSSplitRequestsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

REQUESTS = os.environ.get("MAAS_FAIL_FAST_REQUESTS", "/nonexistent/requests.jsonl")
OUT = os.environ.get("MAAS_FAIL_FAST_OUTPUT", "/tmp/maas-fail-fast")

with DAG(
    "maas_fail_fast",
    start_date=pendulum.datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=0)},
) as dag:
    MaaSUploadFileOperator(task_id="upload", source=REQUESTS)
    MaaSCreateBatchJobOperator(task_id="create", file_name="uploaded.jsonl")
    MaaSBatchJobSensor(task_id="wait_poke", job_name="123", poll_interval=0.1, timeout=30)
    MaaSBatchJobSensor(task_id="wait_deferred", job_name="123", poll_interval=0.1, timeout=30, deferrable=True)
    MaaSDownloadResultsOperator(task_id="download", job_name="123", destination=OUT + "/results.jsonl")
    MaaSBatchPredictionOperator(task_id="batch", source=REQUESTS, destination=OUT + "/batch.jsonl", poll_interval=0.1)
    MaaSSplitRequestsOperator(task_id="split", source="/nonexistent/input.jsonl", destination_prefix=OUT + "/shards")
    MaaSMergeResultsOperator(
        task_id="merge", sources=[OUT + "/missing.jsonl"], requests=REQUESTS, destination=OUT + "/merged.jsonl"
    )
