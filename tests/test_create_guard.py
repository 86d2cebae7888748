"""Never pay twice: MaaSCreateBatchJobOperator saves a "creating" marker before it sends the create,
and a retry that finds it refuses (fails without Airflow retries) instead of creating a second job.
A cleared task creates again and says so. Real Airflow (``dag.test()`` with real task retries) and
the emulator's deterministic fault schedule."""

from __future__ import annotations

import datetime
import functools
import importlib.util
import logging

import pytest
import requests

from airflow_provider_maas.exceptions import MaaSJobCreationUncertainError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import JOB_STATE_KEY, MaaSCreateBatchJobOperator
from tests.conftest import API_KEY, ROOT
from tests.helpers import FakeStateStore, make_context, write_requests


def _jobs_created(handle) -> int:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return requests.get(handle.base_url + "/_emulator/state", headers=headers, timeout=10).json()["jobs_created"]


def _uploaded(tmp_path) -> str:
    return MaaSHook().upload_file(write_requests(tmp_path / "r.jsonl", 3), "guard.jsonl")["name"]


_context = functools.partial(make_context, max_tries=3)


# --- the operator with a stand-in state store -------------------------------------------------------


@pytest.mark.parametrize("fault", ["lost-500", "lost-reset", "lost-nonjson"])
def test_retry_after_an_uncertain_create_refuses(emulator_factory, tmp_path, fault):
    handle = emulator_factory(faults=(f"create:1:{fault}",))
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name, display_name="guard-job")
    with pytest.raises(MaaSJobCreationUncertainError):
        op.execute(_context(store))
    assert store.data[JOB_STATE_KEY]["status"] == "creating"
    with pytest.raises(MaaSJobCreationUncertainError, match="earlier try") as err:
        op.execute(_context(store))  # an automatic retry: same clear epoch
    assert "'guard-job'" in str(err.value) and repr(file_name) in str(err.value)
    assert "clear this task" in str(err.value)
    assert _jobs_created(handle) == 1


def test_a_cleared_task_creates_again_and_logs_it(emulator_factory, tmp_path, caplog):
    handle = emulator_factory(faults=("create:1:lost-500",))
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)
    with pytest.raises(MaaSJobCreationUncertainError):
        op.execute(_context(store, max_tries=3))
    with caplog.at_level(logging.WARNING):
        job_name = op.execute(_context(store, max_tries=5))  # cleared: Airflow raised max_tries
    assert "cleared since, so a new job is created" in caplog.text
    assert store.data[JOB_STATE_KEY] == {"job_name": job_name, "file_name": file_name}
    assert _jobs_created(handle) == 2


def test_a_refused_create_lets_the_retry_create(emulator_factory, tmp_path):
    handle = emulator_factory(faults=("create:1:404",))
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)
    with pytest.raises(Exception, match="404"):
        op.execute(_context(store))
    assert store.data[JOB_STATE_KEY]["status"] == "not_created"
    job_name = op.execute(_context(store))
    assert store.data[JOB_STATE_KEY]["job_name"] == job_name
    assert _jobs_created(handle) == 1


def test_an_unexpected_error_during_create_is_uncertain(emulator, tmp_path, monkeypatch):
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)

    def broken(*args, **kwargs):
        raise RuntimeError("worker lost its network mid-call")

    monkeypatch.setattr(op.hook, "create_batch_job", broken)
    with pytest.raises(MaaSJobCreationUncertainError, match="RuntimeError: worker lost its network"):
        op.execute(_context(store))
    assert store.data[JOB_STATE_KEY]["status"] == "creating"


def test_one_type_for_a_create_in_flight_and_its_stored_form_is_unchanged():
    from airflow_provider_maas.batch.record.create_guard import CreateInFlight

    stored = {"status": "creating", "file_name": "f.jsonl", "display_name": "d", "round": 3}  # as written before
    marker = CreateInFlight.from_stored(stored)
    assert marker == CreateInFlight("f.jsonl", "d", 3) and marker.as_dict() == stored
    assert CreateInFlight.from_stored({"status": "not_created", "file_name": "f.jsonl"}) is None
    assert CreateInFlight.from_stored("creating") is None


def test_the_marker_is_saved_before_the_create_is_sent(emulator, tmp_path, monkeypatch):
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name, display_name="d")
    seen = []
    real = op.hook.create_batch_job

    def spy(*args, **kwargs):
        seen.append(store.get(JOB_STATE_KEY))
        return real(*args, **kwargs)

    monkeypatch.setattr(op.hook, "create_batch_job", spy)
    op.execute(_context(store))
    assert seen[0]["status"] == "creating"
    assert (seen[0]["file_name"], seen[0]["display_name"]) == (file_name, "d")


# --- real Airflow: the chain DAG, real task retries, the real task_state_store ----------------------


def _chain_dag(monkeypatch, output):
    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(output))
    monkeypatch.setenv("MAAS_POLL_INTERVAL", "0.1")
    spec = importlib.util.spec_from_file_location(
        "example_maas_batch_guard", ROOT / "example_dags" / "example_maas_batch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    create = module.dag.task_dict["create"]
    create.retries = 3
    create.retry_delay = datetime.timedelta(0)
    return module.dag


def _create_ti(run):
    (ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "create"]
    return ti


def test_chain_dag_lost_create_answer_fails_once_with_one_job(emulator_factory, tmp_path, monkeypatch):
    handle = emulator_factory(faults=("create:1:lost-500",), job_duration=0.3)
    run = _chain_dag(monkeypatch, tmp_path).test()
    ti = _create_ti(run)
    assert (run.state, ti.state, ti.try_number) == ("failed", "failed", 1)  # no Airflow retry
    assert _jobs_created(handle) == 1


def test_chain_dag_create_timed_out_in_flight_fails_once_with_one_job(emulator_factory, tmp_path, monkeypatch):
    """The create's answer never comes in time: the task times out (execution_timeout) with the
    create in flight. That is an uncertain create: the task fails for good, whatever its retries
    (on every Airflow version; on 3.3+ a retry would also find the marker). Without the guard,
    Airflow retries the timed-out task and the retry pays for a second job."""
    handle = emulator_factory(faults=("create:1:lost-timeout=20",), job_duration=0.3)
    dag = _chain_dag(monkeypatch, tmp_path)
    dag.task_dict["create"].execution_timeout = datetime.timedelta(seconds=2)
    run = dag.test()
    ti = _create_ti(run)
    assert (run.state, ti.state, ti.try_number) == ("failed", "failed", 1)
    assert _jobs_created(handle) == 1


# --- a job whose results are gone is like a failed one ---------------------------------------------


def test_one_404_on_a_finished_jobs_results_reuses_the_job(emulator_factory, tmp_path, monkeypatch):
    # A single 404 may be a glitch of a job that ended seconds ago: read again, reuse the job.
    monkeypatch.setattr("airflow_provider_maas.operators._common.time.sleep", lambda seconds: None)
    handle = emulator_factory()
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)
    first = op.execute(_context(store))
    MaaSHook().wait_for_batch_job(first, poll_interval=0.05, timeout=30)
    handle.schedule("metadata:1:404")
    assert op.execute(_context(store)) == first
    assert _jobs_created(handle) == 1


def test_a_job_whose_results_are_gone_is_replaced(emulator, tmp_path, capsys):
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)
    first = op.execute(_context(store))
    MaaSHook().wait_for_batch_job(first, poll_interval=0.05, timeout=30)
    assert op.execute(_context(store)) == first  # results still there: reused
    emulator.emulator.expire_results(first)  # 7 days later
    second = op.execute(_context(store, max_tries=5))  # the person clears create, wait and download
    assert second != first
    assert "results are gone" in capsys.readouterr().out
    assert store.data[JOB_STATE_KEY]["job_name"] == second
    assert _jobs_created(emulator) == 2
    MaaSHook().wait_for_batch_job(second, poll_interval=0.05, timeout=30)
    MaaSHook().download_results(second, tmp_path / "results.jsonl")  # the new job's results download
