"""Millions of requests over many workers: chunk >> predict.expand (one batch task per chunk) >> merge.

One ``MaaSBatchPredictionOperator`` task takes an input of any size, but it runs on one worker.
Mapping the 100-request shards themselves (``example_maas_batch_mapped``) is capped by Airflow's
``[core] max_map_length`` (1,024 mapped instances by default): 102,400 requests. Here the input is
cut into chunks of ``REQUESTS_PER_CHUNK`` requests (10,000), each chunk is one mapped
``MaaSBatchPredictionOperator`` instance (which splits it into shards and keeps up to
``max_active_jobs`` jobs running), and ``MaaSMergeResultsOperator`` writes one results file in the
order of the input. 1,024 chunks x 10,000 requests = 10,240,000 requests with default settings.

Trigger it with ``{"source": "s3://my_conn@bucket/requests.jsonl"}`` (any URI ``ObjectStoragePath``
reads); the default is the 9-request sample beside this file. Only public operators: the split
operator cuts the chunks (``for_upload=False``: the 100-request limit of an upload file does not apply).

Jobs in flight at once: ``max_active_tis_per_dagrun`` chunks x ``max_active_jobs`` each; keep it
under the service's own cap of concurrent jobs. A chunk that fails is retried alone: its retry
finds its jobs again instead of paying for new ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSMergeResultsOperator,
    MaaSSplitRequestsOperator,
)

REQUESTS = Path(__file__).parent / "data" / "example_requests.jsonl"  # pass your own: {"source": "s3://..."}
OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")
RUN_DIR = OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}"
REQUESTS_PER_CHUNK = int(os.environ.get("MAAS_EXAMPLE_REQUESTS_PER_CHUNK", 10_000))


with DAG(
    dag_id="example_maas_batch_chunked",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
    params={"source": str(REQUESTS)},
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
) as dag:
    chunks = MaaSSplitRequestsOperator(
        task_id="chunk",
        source="{{ params.source }}",
        destination_prefix=RUN_DIR + "/chunks",
        max_requests_per_file=REQUESTS_PER_CHUNK,
        for_upload=False,  # chunks of any size: each batch task splits its chunk into uploads again
    )
    predict = MaaSBatchPredictionOperator.partial(
        task_id="predict",
        destination=RUN_DIR + "/results/chunk-{{ ti.map_index }}.jsonl",
        deferrable=True,
        poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 60)),
        max_active_jobs=100,
        max_active_tis_per_dagrun=4,  # at most 4 chunks x 100 jobs in flight
    ).expand(source=chunks.output)
    MaaSMergeResultsOperator(
        task_id="merge", results=predict.output, source="{{ params.source }}", destination=RUN_DIR + "/results.jsonl"
    )
