"""Errors that cannot pass on a retry fail the task at once, whatever its ``retries``: a real DAG run
(``dag.test()``) of every operator and the sensor, each with retries=3, against the emulator with a
wrong API key (the API calls) or a missing input (split, merge)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import ENDPOINT, ROOT
from tests.helpers import write_requests


def test_wrong_key_and_bad_input_fail_every_task_after_one_try(emulator, tmp_path, monkeypatch):
    requests = write_requests(tmp_path / "requests.jsonl", 3)
    monkeypatch.setenv("MAAS_FAIL_FAST_REQUESTS", str(requests))
    monkeypatch.setenv("MAAS_FAIL_FAST_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_MAAS_DEFAULT",
        json.dumps(
            {"conn_type": "maas", "host": emulator.base_url, "password": "wrong-key", "extra": {"endpoint": ENDPOINT}}
        ),
    )
    spec = importlib.util.spec_from_file_location(
        "maas_fail_fast_under_test", ROOT / "tests" / "dags" / "maas_fail_fast.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test()
    assert run.state == "failed"
    tries = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert tries == {task_id: ("failed", 1) for task_id in module.dag.task_dict}, tries
    assert emulator.emulator.jobs_created == 0
