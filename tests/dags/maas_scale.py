"""Test and benchmark DAGs for one big ``MaaSBatchPredictionOperator`` task in a real deployment.

Used by ``tests/test_scale_deployment.py`` and ``benchmarks/scale.py``, run by real ``airflow
scheduler`` / ``triggerer`` processes on a throwaway AIRFLOW_HOME. Each DAG is one deferrable task
and runs once as soon as it is parsed (``@once``). Set for every Airflow process:

* ``MAAS_SCALE_DIR``: holds ``requests.jsonl``; results go to ``MAAS_SCALE_DIR/<dag_id>/``.
* ``MAAS_SCALE_DAGS``: which DAGs to define, comma-separated (``maas_scale``, ``maas_scale_crash``).
  Each uses the connection named like the DAG, so each can talk to its own emulator.
* ``MAAS_SCALE_MAX_ACTIVE_JOBS``, ``MAAS_SCALE_REQUESTS_PER_FILE``, ``MAAS_SCALE_POLL_INTERVAL``,
  ``MAAS_SCALE_PARALLEL_TRANSFERS`` (empty: the operator's default), ``MAAS_SCALE_DEFERRABLE``
  (``0``: wait in the worker).
"""

from __future__ import annotations

import os
import tempfile

from tests.dag_builders import batch_task, once_dag

WORK_DIR = os.environ.get("MAAS_SCALE_DIR") or os.path.join(tempfile.gettempdir(), "maas-scale")
TRANSFERS = os.environ.get("MAAS_SCALE_PARALLEL_TRANSFERS")
SELECTED = [name for name in os.environ.get("MAAS_SCALE_DAGS", "maas_scale").split(",") if name]

for dag_id in SELECTED:
    with once_dag(dag_id) as dag:
        batch_task(
            WORK_DIR,
            dag_id,
            maas_conn_id=dag_id,
            deferrable=os.environ.get("MAAS_SCALE_DEFERRABLE", "1") != "0",
            poll_interval=float(os.environ.get("MAAS_SCALE_POLL_INTERVAL", "1")),
            max_active_jobs=int(os.environ.get("MAAS_SCALE_MAX_ACTIVE_JOBS", "200")),
            max_requests_per_file=int(os.environ.get("MAAS_SCALE_REQUESTS_PER_FILE", "10")),
            **({"max_parallel_transfers": int(TRANSFERS)} if TRANSFERS else {}),
        )
    globals()[dag_id] = dag
