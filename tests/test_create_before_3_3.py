"""The chain's create operator on Airflow 3.0-3.2 (issue 19, finding 15): there is no
``task_state_store``, so the in-flight marker and the job's name go to an Airflow Variable of the
task instance (``VariableStateStore``), which survives the try and is never cleared on a retry.
A retry after a killed or uncertain create refuses; a person's clear creates again; a record that
cannot be written stops the task before anything is created.

Here the context has no ``task_state_store`` (as on 3.0-3.2) and the Task SDK's ``Variable`` is a
stand-in dict (no supervisor runs in this process); ``tests/test_create_killed.py`` runs the real
thing: Variables through a real deployment's Execution API, the task SIGKILLed mid-create."""

from __future__ import annotations

import functools

import pytest

from airflow_provider_maas.batch.record import task_record
from airflow_provider_maas.exceptions import MaaSError, MaaSJobCreationUncertainError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators import _common
from airflow_provider_maas.operators.maas import JOB_STATE_KEY, MaaSCreateBatchJobOperator
from tests.helpers import FakeVariables, make_context, use_fake_variables, write_requests


@pytest.fixture
def variables(monkeypatch):
    return use_fake_variables(monkeypatch)


_context = functools.partial(make_context, max_tries=3)  # no task_state_store: Airflow 3.0-3.2


def _uploaded(tmp_path) -> str:
    return MaaSHook().upload_file(write_requests(tmp_path / "r.jsonl", 3), "pre33.jsonl")["name"]


def _record(variables: FakeVariables) -> dict:
    (name,) = variables.values
    assert name.startswith("maas_create.")
    return variables.get(name, deserialize_json=True)[JOB_STATE_KEY]


def test_a_killed_create_is_refused_by_the_retry_until_a_person_clears(variables, emulator, tmp_path, monkeypatch):
    file_name = _uploaded(tmp_path)
    real = MaaSHook.create_batch_job

    def killed(self, *args, **kwargs):
        real(self, *args, **kwargs)  # the service creates the job...
        raise SystemExit("SIGKILL")  # ...and the task process dies before the answer is recorded

    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name, display_name="pre33-job")
    with monkeypatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(MaaSHook, "create_batch_job", killed)
        op.execute(_context())
    assert _record(variables)["status"] == "creating"
    assert emulator.emulator.jobs_created == 1

    retry = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name, display_name="pre33-job")
    with pytest.raises(MaaSJobCreationUncertainError, match="An earlier try") as refused:
        retry.execute(_context())  # Airflow's automatic retry: same clear epoch, a new process
    assert "'pre33-job'" in str(refused.value) and "clear this task" in str(refused.value)
    assert emulator.emulator.jobs_created == 1

    job_name = retry.execute(_context(max_tries=5))  # a person cleared the task
    assert emulator.emulator.jobs_created == 2
    assert _record(variables) == {"job_name": job_name, "file_name": file_name}


def test_a_retry_after_the_create_answered_reuses_the_job(variables, emulator, tmp_path):
    file_name = _uploaded(tmp_path)
    first = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name).execute(_context())
    second = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name).execute(_context())
    assert second == first and emulator.emulator.jobs_created == 1
    (description,) = variables.descriptions.values()
    assert "dag.task of run run1" in description and "Delete it once that run is done" in description


def test_each_task_instance_has_its_own_record(variables, emulator, tmp_path):
    file_name = _uploaded(tmp_path)
    for run_id in ("run1", "run2"):
        MaaSCreateBatchJobOperator(task_id="create", file_name=file_name).execute(_context(run_id=run_id))
    assert len(variables.values) == 2 and emulator.emulator.jobs_created == 2


def test_an_unwritable_record_stops_before_creating(variables, emulator, tmp_path):
    file_name = _uploaded(tmp_path)
    variables.drop_writes = True
    with pytest.raises(MaaSError, match="nothing was created") as info:
        MaaSCreateBatchJobOperator(task_id="create", file_name=file_name).execute(_context())
    assert not isinstance(info.value, MaaSJobCreationUncertainError)  # retried by Airflow: nothing was paid
    assert emulator.emulator.jobs_created == 0


def test_outside_an_airflow_worker_there_is_no_record(emulator, tmp_path, monkeypatch):
    monkeypatch.setattr(task_record, "_in_task_runner", lambda: False)
    assert _common.task_state(_context()) is None


def test_chain_dag_keeps_the_create_record_in_a_real_variable(emulator_factory, tmp_path, monkeypatch):
    """The real Task SDK path: ``dag.test()`` runs the chain DAG with no ``task_state_store`` in the
    create task's context (Airflow 3.0-3.2 have none; on 3.3 it is removed here), so the record goes
    through ``Variable.set`` and the Execution API into the metadata database, and is read back."""
    from airflow.models.variable import Variable as VariableModel

    from tests.test_create_guard import _chain_dag

    emulator_factory(job_duration=0.3)
    real_execute = MaaSCreateBatchJobOperator.execute

    def execute_before_3_3(self, context):
        context.pop("task_state_store", None)
        return real_execute(self, context)

    monkeypatch.setattr(MaaSCreateBatchJobOperator, "execute", execute_before_3_3)
    run = _chain_dag(monkeypatch, tmp_path).test()
    assert run.state == "success"
    (create,) = [ti for ti in run.get_task_instances() if ti.task_id == "create"]
    name = _common.VariableStateStore({"ti": create, "run_id": run.run_id}).name
    record = VariableModel.get(name, deserialize_json=True)[JOB_STATE_KEY]
    assert record["job_name"] == str(create.xcom_pull(task_ids="create"))  # XCom reads the number back as int
    assert record["file_name"].endswith(".jsonl")
