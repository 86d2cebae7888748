"""Millions of requests over many workers: chunk >> predict.expand (one batch task per chunk) >> merge.

One ``MaaSBatchPredictionOperator`` task takes an input of any size, but it runs on one worker.
Mapping the 100-request shards themselves (``example_maas_batch_mapped``) is capped by Airflow's
``[core] max_map_length`` (1,024 mapped instances by default): 102,400 requests. Here the input is
cut into chunks of ``chunk_size`` requests (10,000 by default), each chunk is one mapped
``MaaSBatchPredictionOperator`` instance (which splits it into shards and keeps up to
``max_active_jobs`` jobs running), and ``MaaSMergeResultsOperator`` writes one results file in the
order of the input. 1,024 chunks x 10,000 requests = 10,240,000 requests with default settings.

Trigger it with ``{"source": "s3://my_conn@bucket/requests.jsonl", "chunk_size": 10000}`` (any URI
``ObjectStoragePath`` reads); the default is the 9-request sample beside this file.

Jobs in flight at once: ``max_active_tis_per_dagrun`` chunks x ``max_active_jobs`` each; keep it
under the service's own cap of concurrent jobs. A chunk that fails is retried alone: its retry
finds its jobs again instead of paying for new ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator, MaaSMergeResultsOperator

REQUESTS = Path(__file__).parent / "data" / "example_requests.jsonl"  # pass your own: {"source": "s3://..."}
OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")
RUN_DIR = OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}"


@task
def chunk_requests(source: str, chunk_size: int | str, run_dir: str) -> list[str]:
    """Check every line of ``source``, then cut it into files of ``chunk_size`` requests; return their URIs.

    Nothing is written (nor paid for later) if any line is bad. Chunk names are deterministic, so a
    retry rewrites the same chunks.
    """
    from airflow_provider_maas.batch.shards import copy_shard, plan_shards, shard_name
    from airflow_provider_maas.storage import atomic_writer, open_source, to_path, uri_of

    size = int(chunk_size)
    if size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size!r}")
    root = to_path(run_dir) / "chunks"
    with open_source(source) as handle:
        plans = plan_shards(handle, max_requests=size, max_bytes=sys.maxsize)  # each chunk is split again later
        uris = []
        for plan in plans:
            path = root / shard_name("chunk", plan.index, len(plans))
            with atomic_writer(path) as out:
                copy_shard(handle, plan, out)
            uris.append(uri_of(path))
    return uris


with DAG(
    dag_id="example_maas_batch_chunked",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
    params={"source": str(REQUESTS), "chunk_size": 10_000},
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
) as dag:
    chunks = chunk_requests(source="{{ params.source }}", chunk_size="{{ params.chunk_size }}", run_dir=RUN_DIR)
    predict = MaaSBatchPredictionOperator.partial(
        task_id="predict",
        destination=RUN_DIR + "/results/chunk-{{ ti.map_index }}.jsonl",
        deferrable=True,
        poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 60)),
        max_active_jobs=100,
        max_active_tis_per_dagrun=4,  # at most 4 chunks x 100 jobs in flight
    ).expand(source=chunks)
    MaaSMergeResultsOperator(
        task_id="merge", sources=predict.output, requests="{{ params.source }}", destination=RUN_DIR + "/results.jsonl"
    )
