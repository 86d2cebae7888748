"""Test-only DAGs of ``tests/test_deployment_smoke.py``: the deferrable paths in a real deployment.

* ``maas_smoke_chain``: the four-step chain, upload >> create >> wait (deferrable sensor) >> download.
* ``maas_smoke_batch``: one deferrable ``MaaSBatchPredictionOperator`` over a few shards.

Both run once as soon as they are parsed (``@once``) and have no retries: a failed deferral fails
the run at once. ``MAAS_SMOKE_DIR`` (set by the test for every Airflow process) holds
``chain.jsonl`` and ``batch.jsonl``; results go to ``MAAS_SMOKE_DIR/<dag_id>/results.jsonl``.
"""

from __future__ import annotations

import os
import tempfile

from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor
from tests.dag_builders import once_dag

WORK_DIR = os.environ.get("MAAS_SMOKE_DIR") or os.path.join(tempfile.gettempdir(), "maas-deployment-smoke")
#: Requests per shard of the batch DAG (the test writes 3 shards' worth).
SHARD_SIZE = 10

with once_dag("maas_smoke_chain") as chain:
    requests = os.path.join(WORK_DIR, "chain.jsonl")
    upload = MaaSUploadFileOperator(task_id="upload", source=requests)
    create = MaaSCreateBatchJobOperator(task_id="create", file_name=upload.output)
    wait = MaaSBatchJobSensor(task_id="wait", job_name=create.output, poll_interval=0.5, deferrable=True)
    download = MaaSDownloadResultsOperator(
        task_id="download",
        job_name=create.output,
        destination=os.path.join(WORK_DIR, "maas_smoke_chain", "results.jsonl"),
        source=requests,
    )
    wait >> download

with once_dag("maas_smoke_batch") as batch:
    MaaSBatchPredictionOperator(
        task_id="predict",
        source=os.path.join(WORK_DIR, "batch.jsonl"),
        destination=os.path.join(WORK_DIR, "maas_smoke_batch", "results.jsonl"),
        max_requests_per_file=SHARD_SIZE,
        poll_interval=0.5,
        deferrable=True,
    )
