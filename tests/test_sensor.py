from __future__ import annotations

import pytest

from airflow_provider_maas.exceptions import MaaSError, MaaSJobFailedError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor
from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger
from tests.compat import AirflowSensorTimeout, AirflowSkipException, TaskDeferred
from tests.helpers import make_context, write_requests


def _job(tmp_path, count: int = 4) -> str:
    hook = MaaSHook()
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", count), "s.jsonl")["name"]
    return hook.create_batch_job(name, "sensor-test")["name"]


def _sensor(job_name: str, **kwargs) -> MaaSBatchJobSensor:
    return MaaSBatchJobSensor(task_id="wait", job_name=job_name, poll_interval=0.05, **kwargs)


def test_poke_mode_returns_final_job(emulator, tmp_path):
    job_name = _job(tmp_path)
    job = _sensor(job_name, timeout=30).execute(make_context())
    assert job["name"] == job_name
    assert job["state"] == "JOB_STATE_SUCCEEDED"


def test_partial_success_warns_with_counts(emulator_factory, tmp_path, caplog):
    emulator_factory(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=2)
    job = _sensor(_job(tmp_path), timeout=30).execute(make_context())
    assert job["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert "2 requests succeeded, 2 failed" in caplog.text


def test_partial_success_fails_with_fail_on_partial(emulator_factory, tmp_path):
    emulator_factory(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=2)
    with pytest.raises(MaaSJobFailedError, match="fail_on_partial"):
        _sensor(_job(tmp_path), timeout=30, fail_on_partial=True).execute(make_context())


@pytest.mark.parametrize("state", ["JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"])
def test_failed_states_raise_with_service_message(emulator_factory, tmp_path, state):
    handle = emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    handle.emulator.set_job_state(job_name, state, error={"code": 13, "message": "model overloaded"})
    with pytest.raises(MaaSJobFailedError, match="model overloaded") as info:
        _sensor(job_name, timeout=30).execute(make_context())
    assert info.value.state == state
    assert info.value.job_name == job_name


def test_timeout_and_soft_fail(emulator_factory, tmp_path):
    emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    with pytest.raises(AirflowSensorTimeout):
        _sensor(job_name, timeout=0.2).execute(make_context())
    with pytest.raises(AirflowSkipException):
        _sensor(job_name, timeout=0.2, soft_fail=True).execute(make_context())


def test_deferrable_defers_with_absolute_deadline(emulator_factory, tmp_path):
    emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    import time

    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        _sensor(job_name, timeout=100, deferrable=True).execute(make_context())
    trigger = info.value.trigger
    assert isinstance(trigger, MaaSBatchJobTrigger)
    assert trigger.job_name == job_name
    assert before + 100 <= trigger.end_time <= time.time() + 100
    assert info.value.method_name == "execute_complete"


def test_deferrable_returns_at_once_when_already_done(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    handle.emulator.set_job_state(job_name, "JOB_STATE_SUCCEEDED")
    assert _sensor(job_name, deferrable=True).execute(make_context())["name"] == job_name


def test_execute_complete_validates_events():
    sensor = _sensor("1")
    job = {"name": "1", "state": "JOB_STATE_SUCCEEDED"}
    assert sensor.execute_complete({}, {"status": "success", "job_name": "1", "job": job}) == job
    with pytest.raises(MaaSJobFailedError, match="boom"):
        sensor.execute_complete(
            {},
            {"status": "error", "job_name": "1", "message": "boom", "job": {"name": "1", "state": "JOB_STATE_FAILED"}},
        )
    with pytest.raises(MaaSError, match="401"):
        sensor.execute_complete({}, {"status": "error", "job_name": "1", "message": "HTTP 401", "job": None})
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute_complete({}, {"status": "timeout", "job_name": "1", "message": "late", "job": None})
    with pytest.raises(MaaSError, match="Unexpected event"):
        sensor.execute_complete({}, {"status": "weird"})
    with pytest.raises(MaaSError, match="Unexpected event"):
        sensor.execute_complete({}, None)  # type: ignore[arg-type]


def test_reschedule_mode_in_real_airflow(emulator_factory, tmp_path):
    import importlib.util

    from tests.conftest import ROOT

    emulator_factory(job_duration=1.5)
    job_name = _job(tmp_path)
    spec = importlib.util.spec_from_file_location("maas_sensor_modes", ROOT / "tests" / "dags" / "maas_sensor_modes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test(run_conf={"job": job_name})
    assert run.state == "success"
    (ti,) = run.get_task_instances()
    assert ti.state == "success"


# max_consecutive_poll_errors -------------------------------------------------------------------


def _one_try_hook(sensor: MaaSBatchJobSensor) -> MaaSBatchJobSensor:
    sensor.__dict__["hook"] = MaaSHook(max_attempts=1)  # one HTTP call per poll: each 503 is a failed poll
    return sensor


def test_poke_mode_rides_out_failed_polls_up_to_the_limit(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.1)
    job_name = _job(tmp_path)
    handle.emulator.schedule("get:3:503")
    job = _one_try_hook(_sensor(job_name, timeout=30, max_consecutive_poll_errors=4)).execute(make_context())
    assert job["state"] == "JOB_STATE_SUCCEEDED"


def test_poke_mode_gives_up_at_the_limit(emulator_factory, tmp_path):
    from airflow_provider_maas.exceptions import MaaSRetryableError

    handle = emulator_factory(job_duration=0.1)
    job_name = _job(tmp_path)
    handle.emulator.schedule("get:3:503")
    with pytest.raises(MaaSRetryableError, match="503"):
        _one_try_hook(_sensor(job_name, timeout=30, max_consecutive_poll_errors=3)).execute(make_context())


def test_deferrable_passes_the_limit_to_the_trigger(emulator_factory, tmp_path):
    emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    with pytest.raises(TaskDeferred) as info:
        _sensor(job_name, timeout=100, deferrable=True, max_consecutive_poll_errors=40).execute(make_context())
    trigger = info.value.trigger
    assert trigger.max_consecutive_poll_errors == 40
    _classpath, kwargs = trigger.serialize()
    assert kwargs["max_consecutive_poll_errors"] == 40
    with pytest.raises(TaskDeferred) as info:
        _sensor(job_name, timeout=100, deferrable=True).execute(make_context())
    assert info.value.trigger.max_consecutive_poll_errors == 5  # the trigger's default


@pytest.mark.parametrize("bad", [0, -1, 2.5, "5", True])
def test_max_consecutive_poll_errors_is_checked(bad):
    from airflow_provider_maas.exceptions import MaaSInputError

    with pytest.raises(MaaSInputError, match="max_consecutive_poll_errors"):
        _sensor("1", max_consecutive_poll_errors=bad)
