"""Test-only DAG for ``tests/test_create_killed.py``: one ``MaaSCreateBatchJobOperator`` task run by a
real ``airflow scheduler`` (``@once``); its task process is SIGKILLed while its create is in flight.
With ``MAAS_TEST_NO_TASK_STATE_STORE=1`` the operator gets the context of Airflow 3.0-3.2 (no
``task_state_store``), so it keeps its record in an Airflow Variable."""

from __future__ import annotations

import os
from typing import Any

import pendulum

from airflow_provider_maas.operators.maas import MaaSCreateBatchJobOperator
from tests.dag_builders import once_dag


class CreateWithoutTaskStateStore(MaaSCreateBatchJobOperator):
    """The create operator in the context Airflow < 3.3 gives it."""

    def execute(self, context: Any) -> str:
        context.pop("task_state_store", None)
        return super().execute(context)


create = CreateWithoutTaskStateStore if os.environ.get("MAAS_TEST_NO_TASK_STATE_STORE") else MaaSCreateBatchJobOperator

with once_dag("maas_create_killed") as dag:
    create(
        task_id="create",
        file_name="killed.jsonl",
        display_name="killed-in-flight",
        retries=3,
        retry_delay=pendulum.duration(seconds=1),
    )
