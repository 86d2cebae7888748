"""Test-only Airflow DAG: the deprecated parameter names through dynamic task mapping, as a DAG written
before the rename uses them. The download operator's ``requests`` (now ``source``) is mapped over with
``.expand()``; the merge operator's ``sources`` (now ``results``) and ``requests`` are given to
``.partial()`` (task ``merge``) and mapped over with ``.expand()`` (task ``merge_mapped``). Its
requests file and output folder come from ``MAAS_RENAMED_REQUESTS`` and ``MAAS_RENAMED_OUTPUT``; run by
tests/test_renamed_mapped.py."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_maas.operators.maas import (
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
    MaaSSplitRequestsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

REQUESTS = os.environ.get("MAAS_RENAMED_REQUESTS", "/tmp/maas-renamed/requests.jsonl")
OUTPUT = os.environ.get("MAAS_RENAMED_OUTPUT", "/tmp/maas-renamed/out")


@task
def one_group(parts: list[str]) -> list[list[str]]:
    """Every part as one group: the merge mapped over ``sources`` merges them all, once."""
    return [list(parts)]


with DAG(
    dag_id="maas_renamed_mapped",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "test"],
) as dag:
    split = MaaSSplitRequestsOperator(
        task_id="split", source=REQUESTS, destination_prefix=OUTPUT + "/shards", max_requests_per_file=5
    )
    upload = MaaSUploadFileOperator.partial(task_id="upload").expand(source=split.output)
    create = MaaSCreateBatchJobOperator.partial(task_id="create").expand(file_name=upload.output)
    wait = MaaSBatchJobSensor.partial(task_id="wait", poll_interval=0.1, deferrable=True).expand(job_name=create.output)
    download = MaaSDownloadResultsOperator.partial(
        task_id="download",
        job_name="{{ ti.xcom_pull(task_ids='create', map_indexes=ti.map_index) }}",
        destination=OUTPUT + "/parts/part-{{ ti.map_index }}.jsonl",
    ).expand(requests=split.output)  # each shard's results in the order of its own requests
    merge = MaaSMergeResultsOperator.partial(task_id="merge", sources=download.output, requests=REQUESTS).expand(
        destination=[OUTPUT + "/results.jsonl"]
    )
    merge_mapped = MaaSMergeResultsOperator.partial(
        task_id="merge_mapped", destination=OUTPUT + "/results-mapped.jsonl"
    ).expand(sources=one_group(download.output), requests=[REQUESTS])
    create >> wait >> download
