"""Results as an Asset: a downstream DAG runs when they land, and sees the summary.

``example_maas_assets_producer`` downloads a job's results with ``outlets=[RESULTS]``; the
download operator attaches its summary (job name, counts, token usage, URI) to the asset event.
``example_maas_assets_consumer`` is scheduled on ``RESULTS`` and reads that summary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, task

from airflow_provider_maas.operators.maas import (
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

REQUESTS = Path(__file__).parent / "data" / "example_requests.jsonl"
OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")
RESULTS = Asset("maas://example/results", extra={"format": "jsonl"})

with DAG(
    dag_id="example_maas_assets_producer",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
) as producer:
    upload = MaaSUploadFileOperator(task_id="upload", source=str(REQUESTS))
    create = MaaSCreateBatchJobOperator(task_id="create", file_name=upload.output)
    wait = MaaSBatchJobSensor(
        task_id="wait", job_name=create.output, poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 30))
    )
    download = MaaSDownloadResultsOperator(
        task_id="download",
        job_name=create.output,
        destination=OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}/results.jsonl",
        outlets=[RESULTS],
    )
    wait >> download

with DAG(
    dag_id="example_maas_assets_consumer",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=[RESULTS],
    catchup=False,
    tags=["maas", "example"],
) as consumer:

    @task
    def report(triggering_asset_events=None) -> dict:
        """Read the summary the producer attached to the asset event."""
        summaries = [event.extra for events in (triggering_asset_events or {}).values() for event in events]
        for summary in summaries:
            print(f"New results at {summary.get('uri')}: {summary.get('succeeded')} of {summary.get('requests')} ok")
        return summaries[-1] if summaries else {}

    report()
