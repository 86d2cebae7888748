"""Test-only DAG: every MaaS operator that calls the service and the sensor (poking and deferred), side
by side and independent, without retries. Run with ``airflow dags test`` by tests/test_leak_sweep_dag.py
against a service that echoes the API key in every form, or forges log lines (issue 20)."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from tests.dag_builders import service_tasks

REQUESTS = os.environ.get("MAAS_HOSTILE_REQUESTS", "/nonexistent/requests.jsonl")
OUT = os.environ.get("MAAS_HOSTILE_OUTPUT", "/tmp/maas-hostile")

with DAG("maas_hostile", start_date=pendulum.datetime(2026, 1, 1), schedule=None, catchup=False) as dag:
    service_tasks(REQUESTS, OUT, job_name="1", shard_retries=0)
