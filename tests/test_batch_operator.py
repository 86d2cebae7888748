"""MaaSBatchPredictionOperator against the emulator over loopback HTTP: scale, retries, failures.

The big run goes through real Airflow (``dag.test()``: the real trigger, its real event, the real
``execute_complete``, the real task state store); the others call the operator with a stand-in
context so a "retry" or a "clear" can be staged exactly.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import requests

from airflow_provider_maas.batch.journal import BatchJournal
from airflow_provider_maas.batch.state import ShardStatus
from airflow_provider_maas.exceptions import (
    MaaSJobCreationUncertainError,
    MaaSJobFailedError,
    MaaSRateLimitError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger
from tests.compat import TaskDeferred
from tests.conftest import API_KEY, ROOT
from tests.helpers import FakeStateStore, assert_in_input_order, make_context, write_requests

SCALE_DAG = ROOT / "tests" / "dags" / "maas_batch_scale.py"


def _emulator_state(handle) -> dict:
    response = requests.get(f"{handle.base_url}/_emulator/state", headers={"Authorization": f"Bearer {API_KEY}"})
    response.raise_for_status()
    return response.json()


def _trigger_event(trigger: MaaSBatchJobsTrigger) -> dict:
    import asyncio

    async def first() -> dict:
        return (await trigger.run().__anext__()).payload

    return asyncio.run(first())


def _operator(source: Path, dest: Path, **kwargs) -> MaaSBatchPredictionOperator:
    kwargs = {"poll_interval": 0.05, "deferrable": False, **kwargs}
    return MaaSBatchPredictionOperator(task_id="p", source=str(source), destination=str(dest), **kwargs)


def _state_values(run_id: str) -> list[str]:
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [row.value for row in session.query(TaskStateStoreModel).filter(TaskStateStoreModel.run_id == run_id)]


def test_300_shards_deferred_one_job_each_in_order_few_resumes(emulator_factory, tmp_path, monkeypatch):
    handle = emulator_factory(job_duration=0.5, shuffle_results=True, normalise_requests=True)
    source = write_requests(tmp_path / "requests.jsonl", 300)
    dest = tmp_path / "out" / "results.jsonl"
    shards, max_active = 300, 20
    monkeypatch.setenv("MAAS_SCALE_REQUESTS_PER_FILE", "1")
    monkeypatch.setenv("MAAS_SCALE_MAX_ACTIVE_JOBS", str(max_active))
    spec = importlib.util.spec_from_file_location("maas_batch_scale_under_test", SCALE_DAG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    run = module.dag.test(run_conf={"source": str(source), "destination": str(dest)})

    assert run.state == "success"
    assert _emulator_state(handle)["jobs_created"] == shards  # one job per shard
    assert_in_input_order(source, dest)
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        (value,) = session.query(XComModel.value).filter(XComModel.run_id == run.run_id, XComModel.key == "summary").one()
    summary = value if isinstance(value, dict) else json.loads(value)
    assert (summary["requests"], summary["succeeded"], summary["shards"], summary["jobs"]) == (300, 300, 300, 300)
    assert 1 <= summary["resumes"] <= 2 * shards / max_active + 3, summary
    values = _state_values(run.run_id)
    assert values and max(len(v) for v in values) < 1024  # only the state's location and version
    assert not list((tmp_path / "out").glob(".results.jsonl.maas*"))  # the state is removed once done
