"""What the test-only DAGs of ``tests/dags/`` share: the DAG that runs once as soon as it is parsed, the
batch task over a work folder, and every MaaS task that calls the service side by side.

The DAG files import it as ``tests.dag_builders``: the Airflow processes the tests start have the
checkout on ``PYTHONPATH`` (the tests copy a DAG file alone into their own dags folder), as pytest has.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def once_dag(dag_id: str, **kwargs: Any) -> DAG:
    """A test DAG that runs once as soon as it is parsed (``@once``), so a test needs no
    ``airflow dags trigger``; ``kwargs`` add to or replace its arguments."""
    return DAG(
        **{
            "dag_id": dag_id,
            "start_date": START,
            "schedule": "@once",
            "catchup": False,
            "tags": ["maas", "test"],
            **kwargs,
        }
    )


def batch_task(work_dir: str, dag_id: str, **kwargs: Any) -> MaaSBatchPredictionOperator:
    """The task ``predict``: ``<work_dir>/requests.jsonl`` to ``<work_dir>/<dag_id>/results.jsonl``,
    a failed try retried once a second later (``kwargs`` add to or replace its arguments)."""
    defaults = {"retries": 1, "retry_delay": pendulum.duration(seconds=1)}
    return MaaSBatchPredictionOperator(
        task_id="predict",
        source=os.path.join(work_dir, "requests.jsonl"),
        destination=os.path.join(work_dir, dag_id, "results.jsonl"),
        **{**defaults, **kwargs},
    )


def service_tasks(requests: str, out: str, job_name: str, **batch_kwargs: Any) -> None:
    """Every MaaS task that calls the service, side by side and independent: upload, create, the
    sensor poking and deferred (both on job ``job_name``), download, and the batch (``batch_kwargs``
    add to its arguments); outputs under the folder ``out``."""
    MaaSUploadFileOperator(task_id="upload", source=requests)
    MaaSCreateBatchJobOperator(task_id="create", file_name="uploaded.jsonl")
    MaaSBatchJobSensor(task_id="wait_poke", job_name=job_name, poll_interval=0.1, timeout=30)
    MaaSBatchJobSensor(task_id="wait_deferred", job_name=job_name, poll_interval=0.1, timeout=30, deferrable=True)
    MaaSDownloadResultsOperator(task_id="download", job_name=job_name, destination=out + "/results.jsonl")
    MaaSBatchPredictionOperator(
        task_id="batch", source=requests, destination=out + "/batch.jsonl", poll_interval=0.1, **batch_kwargs
    )
