"""Beyond 100 requests: split >> upload.expand >> create.expand >> wait.expand >> download.expand >> merge.

A few hundred generated requests are split into shards that fit one upload (100 requests,
50 MB); each shard becomes a mapped task instance of every step; the merge writes one results
file in the order of the input and a ``.failed.jsonl`` file of the requests to resubmit.
"""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_provider_maas.operators.maas import (
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
    MaaSSplitRequestsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")
RUN_DIR = OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}"


@task
def generate_requests(count: int | str, run_dir: str) -> str:
    """Write ``count`` requests to ``<run_dir>/requests.jsonl`` and return its URI."""
    from airflow_provider_maas.storage import to_path, uri_of

    path: ObjectStoragePath = to_path(run_dir) / "requests.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for i in range(int(count)):
            prompt = f"Request {i}: write one sentence about the number {i}."
            handle.write(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}}) + "\n")
    return uri_of(path)


with DAG(
    dag_id="example_maas_batch_mapped",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
    params={"requests": 250},
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=2)},
) as dag:
    requests = generate_requests(count="{{ params.requests }}", run_dir=RUN_DIR)
    split = MaaSSplitRequestsOperator(task_id="split", source=requests, destination_prefix=RUN_DIR + "/shards")
    upload = MaaSUploadFileOperator.partial(task_id="upload").expand(source=split.output)
    create = MaaSCreateBatchJobOperator.partial(task_id="create").expand(file_name=upload.output)
    wait = MaaSBatchJobSensor.partial(
        task_id="wait", poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 30)), deferrable=True
    ).expand(job_name=create.output)
    download = MaaSDownloadResultsOperator.partial(
        task_id="download", destination=RUN_DIR + "/parts/part-{{ ti.map_index }}.jsonl"
    ).expand(job_name=create.output)
    merge = MaaSMergeResultsOperator(
        task_id="merge", results=download.output, source=requests, destination=RUN_DIR + "/results.jsonl"
    )
    wait >> download
