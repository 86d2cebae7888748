"""Test-only Airflow DAG (tests/test_trial_s7_adv.py): yes/no parameters given as strings to
``.partial()``, ``.expand()`` and ``default_args``, and the deprecated names ``wait_timeout``, ``sources``
and ``requests`` through mapping. Its requests file and output folder come from
``MAAS_TRIAL_REQUESTS`` and ``MAAS_TRIAL_OUTPUT``."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator, MaaSMergeResultsOperator

REQUESTS = os.environ.get("MAAS_TRIAL_REQUESTS", "/tmp/maas-trial/requests.jsonl")
OUTPUT = os.environ.get("MAAS_TRIAL_OUTPUT", "/tmp/maas-trial/out")

with DAG(
    dag_id="maas_trial_s7_flags",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    default_args={"fail_on_partial": "False "},
) as dag:
    batch = MaaSBatchPredictionOperator.partial(
        task_id="batch",
        source=REQUESTS,
        poll_interval=0.05,
        deferrable="false",
        deduplicate="False ",
        wait_timeout=120,
    ).expand_kwargs(
        [
            {"destination": OUTPUT + "/paid.jsonl", "dry_run": "no"},
            {"destination": OUTPUT + "/plan.jsonl", "dry_run": " YES "},
        ]
    )
    merge = MaaSMergeResultsOperator.partial(task_id="merge", requests=REQUESTS).expand(
        sources=[[OUTPUT + "/paid.jsonl"]], destination=[OUTPUT + "/merged.jsonl"]
    )
    batch >> merge
