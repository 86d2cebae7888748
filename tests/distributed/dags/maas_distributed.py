"""DAGs of ``make test-distributed`` (tests/distributed): every path on ``s3://s3_test@maas-dist/``.

The object store is the only storage the tasks share (each Celery worker has its own disk), and
every path names its Airflow connection (``s3_test``) the way Airflow documents it. The test puts
the requests under ``input/`` before the DAG processor starts; each DAG runs once (``@once``) and
writes under ``output/<dag_id>/``.

* ``maas_dist_chain``: upload >> create >> wait (deferred) >> download, on one file of 100 requests
  (the most one upload takes).
* ``maas_dist_mapped``: split >> upload/create/wait/download mapped over the shards >> merge, 300 requests.

In these two, the steps that hand files on alternate between the workers' own queues (``worker-a``,
``worker-b``; each worker also serves ``default``): every file a task reads was written on the other
machine.
* ``maas_dist_single``: ``MaaSBatchPredictionOperator`` (deferrable), 300 requests.
* ``maas_dist_worker_lost``: ``MaaSBatchPredictionOperator`` polling in its worker, 300 requests;
  paused until the test unpauses it, then its worker gets SIGKILL while the jobs run.
"""

from __future__ import annotations

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

ROOT = "s3://s3_test@maas-dist"
REQUESTS_100 = f"{ROOT}/input/requests-100.jsonl"
REQUESTS_300 = f"{ROOT}/input/requests-300.jsonl"
OUTPUT = ROOT + "/output/{{ dag.dag_id }}"
POLL = 2.0
A, B = "worker-a", "worker-b"  # a queue only that worker serves
COMMON = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "schedule": "@once",
    "catchup": False,
    "tags": ["maas", "test"],
    # A failure must show as a failure: a retry would hide it (and could pay for a second job).
    "default_args": {"retries": 0},
}

with DAG(dag_id="maas_dist_chain", **COMMON) as chain:
    upload = MaaSUploadFileOperator(task_id="upload", source=REQUESTS_100, queue=A)
    create = MaaSCreateBatchJobOperator(task_id="create", file_name=upload.output, queue=B)
    wait = MaaSBatchJobSensor(task_id="wait", job_name=create.output, poll_interval=POLL, deferrable=True)
    download = MaaSDownloadResultsOperator(
        task_id="download",
        job_name=create.output,
        destination=OUTPUT + "/results.jsonl",
        source=REQUESTS_100,  # results in input order
        queue=A,
    )
    wait >> download

with DAG(dag_id="maas_dist_mapped", **COMMON) as mapped:
    split = MaaSSplitRequestsOperator(
        task_id="split", source=REQUESTS_300, destination_prefix=OUTPUT + "/shards", queue=A
    )
    upload = MaaSUploadFileOperator.partial(task_id="upload", queue=B).expand(source=split.output)
    create = MaaSCreateBatchJobOperator.partial(task_id="create").expand(file_name=upload.output)
    wait = MaaSBatchJobSensor.partial(task_id="wait", poll_interval=POLL, deferrable=True).expand(
        job_name=create.output
    )
    download = MaaSDownloadResultsOperator.partial(
        task_id="download", destination=OUTPUT + "/parts/part-{{ ti.map_index }}.jsonl", queue=A
    ).expand(job_name=create.output)
    merge = MaaSMergeResultsOperator(
        task_id="merge",
        results=download.output,
        source=REQUESTS_300,
        destination=OUTPUT + "/results.jsonl",
        queue=B,
    )
    wait >> download

with DAG(dag_id="maas_dist_single", **COMMON) as single:
    MaaSBatchPredictionOperator(
        task_id="predict",
        source=REQUESTS_300,
        destination=OUTPUT + "/results.jsonl",
        poll_interval=POLL,
        deferrable=True,
    )

with DAG(
    dag_id="maas_dist_worker_lost",
    is_paused_upon_creation=True,
    **{**COMMON, "default_args": {"retries": 1, "retry_delay": pendulum.duration(seconds=1)}},
) as worker_lost:
    MaaSBatchPredictionOperator(
        task_id="predict",
        source=REQUESTS_300,
        destination=OUTPUT + "/results.jsonl",
        poll_interval=1.0,
        deferrable=False,  # polls in the worker: killing the worker kills the task
    )
