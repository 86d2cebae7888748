"""Test-only DAG for ``tests/test_batch_operator.py``: one deferrable ``MaaSBatchPredictionOperator``
over many shards, run with ``dag.test()`` (which runs the trigger inline and resumes the task).

Source and destination come from the run's conf; the shard size and job cap from the environment
(``MAAS_SCALE_REQUESTS_PER_FILE``, ``MAAS_SCALE_MAX_ACTIVE_JOBS``), read when the file is parsed.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

with DAG(
    dag_id="maas_batch_scale",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "test"],
    params={"source": "", "destination": ""},
) as dag:
    MaaSBatchPredictionOperator(
        task_id="predict",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        poll_interval=float(os.environ.get("MAAS_SCALE_POLL_INTERVAL", "0.2")),
        deferrable=True,
        max_requests_per_file=int(os.environ.get("MAAS_SCALE_REQUESTS_PER_FILE", "100")),
        max_active_jobs=int(os.environ.get("MAAS_SCALE_MAX_ACTIVE_JOBS", "100")),
    )
