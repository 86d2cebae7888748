"""Errors that cannot pass on a retry fail the task at once, whatever its ``retries``: a real DAG run
(``dag.test()``) of every operator and the sensor, each with retries=3, against the emulator with a
wrong API key (the API calls) or a missing input (split, merge)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import ENDPOINT, ROOT
from tests.helpers import write_requests


def run_fail_fast_dag(monkeypatch, tmp_path, base_url: str, *, key: str, endpoint: str, task_ids=None):
    """``dag.test()`` of tests/dags/maas_fail_fast.py (or of its ``task_ids``) against ``base_url``;
    returns ``{task_id: (state, try_number)}``."""
    requests = write_requests(tmp_path / "requests.jsonl", 3)
    monkeypatch.setenv("MAAS_FAIL_FAST_REQUESTS", str(requests))
    monkeypatch.setenv("MAAS_FAIL_FAST_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_MAAS_DEFAULT",
        json.dumps({"conn_type": "maas", "host": base_url, "password": key, "extra": {"endpoint": endpoint}}),
    )
    spec = importlib.util.spec_from_file_location(
        "maas_fail_fast_under_test", ROOT / "tests" / "dags" / "maas_fail_fast.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag if task_ids is None else module.dag.partial_subset(task_ids=task_ids, include_upstream=False)
    run = dag.test()
    assert run.state == "failed"
    return {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}


def test_wrong_key_and_bad_input_fail_every_task_after_one_try(emulator, tmp_path, monkeypatch):
    tries = run_fail_fast_dag(monkeypatch, tmp_path, emulator.base_url, key="wrong-key", endpoint=ENDPOINT)
    assert len(tries) == 8 and tries == {task_id: ("failed", 1) for task_id in tries}, tries
    assert emulator.emulator.jobs_created == 0
