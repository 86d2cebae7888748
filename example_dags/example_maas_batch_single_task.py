"""The whole batch in one task: MaaSBatchPredictionOperator uploads, creates, waits (deferred),
downloads and writes the results in the order of the input requests.

Paying once per answer: trigger with ``{"reuse_results": "<an earlier run's results.jsonl>"}`` and
only the requests without an answer there are sent (none: no job at all); identical requests are
sent once; requests that failed for a transient reason (or got no result) are sent again once;
the summary gives the cost at the prices below, and what reuse and deduplication saved."""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

REQUESTS = Path(__file__).parent / "data" / "example_requests.jsonl"
OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")

with DAG(
    dag_id="example_maas_batch_single_task",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
    params={"source": str(REQUESTS), "reuse_results": ""},
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=5)},
) as dag:
    MaaSBatchPredictionOperator(
        task_id="predict",
        source="{{ params.source }}",
        destination=OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}/results.jsonl",
        poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 30)),
        deferrable=True,
        reuse_results="{{ params.reuse_results }}",  # blank: nothing to reuse
        request_retries=1,
        prices={"prompt": 0.30, "candidates": 2.50},  # USD per 1M tokens (thoughts: as candidates)
    )
