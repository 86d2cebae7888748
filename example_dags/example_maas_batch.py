"""Four steps, chained through XCom: upload >> create >> wait (deferrable) >> download.

Runs against the connection ``maas_default``; ``make demo`` points it at the local emulator.
Results go under ``MAAS_EXAMPLE_OUTPUT`` (a local folder or URI such as ``s3://bucket/maas``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import (
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

REQUESTS = Path(__file__).parent / "data" / "example_requests.jsonl"
OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")

with DAG(
    dag_id="example_maas_batch",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=5)},
) as dag:
    upload = MaaSUploadFileOperator(task_id="upload", source=str(REQUESTS))
    create = MaaSCreateBatchJobOperator(task_id="create", file_name=upload.output)
    wait = MaaSBatchJobSensor(
        task_id="wait",
        job_name=create.output,
        poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 30)),
        deferrable=True,
    )
    download = MaaSDownloadResultsOperator(
        task_id="download",
        job_name=create.output,
        destination=OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}/results.jsonl",
        source=str(REQUESTS),  # results in input order; missing and failed requests to the failed file
    )
    wait >> download
