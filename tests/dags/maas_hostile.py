"""Test-only DAG: every MaaS operator that calls the service and the sensor (poking and deferred), side
by side and independent, without retries. Run with ``airflow dags test`` by tests/test_leak_sweep_dag.py
against a service that echoes the API key in every form, or forges log lines (issue 20)."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

REQUESTS = os.environ.get("MAAS_HOSTILE_REQUESTS", "/nonexistent/requests.jsonl")
OUT = os.environ.get("MAAS_HOSTILE_OUTPUT", "/tmp/maas-hostile")

with DAG("maas_hostile", start_date=pendulum.datetime(2026, 1, 1), schedule=None, catchup=False) as dag:
    MaaSUploadFileOperator(task_id="upload", source=REQUESTS)
    MaaSCreateBatchJobOperator(task_id="create", file_name="uploaded.jsonl")
    MaaSBatchJobSensor(task_id="wait_poke", job_name="1", poll_interval=0.1, timeout=30)
    MaaSBatchJobSensor(task_id="wait_deferred", job_name="1", poll_interval=0.1, timeout=30, deferrable=True)
    MaaSDownloadResultsOperator(task_id="download", job_name="1", destination=OUT + "/results.jsonl")
    MaaSBatchPredictionOperator(
        task_id="batch", source=REQUESTS, destination=OUT + "/batch.jsonl", poll_interval=0.1, shard_retries=0
    )
