"""Test-only DAGs for ``tests/test_crash_restart.py``, run by real ``airflow scheduler`` and
``airflow triggerer`` processes on a throwaway AIRFLOW_HOME.

Each DAG has one ``MaaSBatchPredictionOperator`` task and runs once as soon as it is parsed
(``@once``), so the test needs no ``airflow dags trigger`` call. ``MAAS_CRASH_DIR`` (set by the test
for every Airflow process) holds ``requests.jsonl``; results go to ``MAAS_CRASH_DIR/<dag_id>/``.
"""

from __future__ import annotations

import os
import tempfile

from tests.dag_builders import batch_task, once_dag

WORK_DIR = os.environ.get("MAAS_CRASH_DIR") or os.path.join(tempfile.gettempdir(), "maas-crash-restart")

DAGS = {
    "maas_crash_task_process": False,  # its task process gets SIGKILL
    "maas_crash_worker": False,  # its whole worker (supervisor and task process) gets SIGKILL
    "maas_crash_triggerer": True,  # the triggerer is stopped and killed while it waits
}

for dag_id, deferrable in DAGS.items():
    with once_dag(dag_id) as dag:
        batch_task(WORK_DIR, dag_id, poll_interval=0.5, deferrable=deferrable)
    globals()[dag_id] = dag
