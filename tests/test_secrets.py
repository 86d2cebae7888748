"""The API key never leaves the connection: not in task logs, XComs, rendered template fields,
trigger kwargs, task instance state, exception text, or what the service's access log saw."""

from __future__ import annotations

import importlib.util
import json

import pytest

from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from tests.compat import TaskDeferred
from tests.conftest import API_KEY, ROOT
from tests.helpers import FakeStateStore, make_context, write_requests


def test_key_absent_everywhere_after_a_deferred_end_to_end_run(emulator_factory, tmp_path, monkeypatch, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    emu = emulator_factory(job_duration=0.3)
    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(tmp_path))
    monkeypatch.setenv("MAAS_POLL_INTERVAL", "0.1")
    spec = importlib.util.spec_from_file_location("secrets_example", ROOT / "example_dags" / "example_maas_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test()
    assert run.state == "success"
    out = capsys.readouterr()
    logs = out.out + out.err + caplog.text
    assert "Created batch job" in logs  # the task logs were captured, DEBUG included
    assert API_KEY not in logs
    with create_session() as session:
        rendered = session.query(RenderedTaskInstanceFields.rendered_fields).filter_by(run_id=run.run_id).all()
        xcoms = session.query(XComModel.value).filter_by(run_id=run.run_id).all()
        tis = session.query(TaskInstance.next_kwargs, TaskInstance.next_method).filter_by(run_id=run.run_id).all()
    assert rendered and xcoms and tis
    for stored in (rendered, xcoms, tis):
        assert API_KEY not in repr(stored)
    assert API_KEY not in json.dumps(emu.emulator.access_log)
    assert all(API_KEY not in entry.get("path_qs", "") for entry in emu.emulator.access_log)


def test_trigger_kwargs_and_errors_carry_no_key(emulator_factory, tmp_path):
    emulator_factory(job_duration=30)
    source = write_requests(tmp_path / "r.jsonl", 3)
    op = MaaSBatchPredictionOperator(
        task_id="p", source=str(source), destination=str(tmp_path / "o.jsonl"), deferrable=True, poll_interval=1
    )
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(FakeStateStore()))
    _classpath, kwargs = info.value.trigger.serialize()
    assert "maas_conn_id" in kwargs
    assert API_KEY not in json.dumps(kwargs)
    hook = MaaSHook()
    assert API_KEY not in repr(hook.config)
    assert API_KEY not in repr(hook.__dict__)
