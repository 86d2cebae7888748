from __future__ import annotations

import asyncio
import functools
import json
import time

import pytest

from airflow_provider_maas.client.states import Outcome
from airflow_provider_maas.exceptions import MaaSError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.triggers import maas as triggers_maas
from airflow_provider_maas.triggers.maas import BatchJobsEvent, MaaSBatchJobsTrigger, MaaSBatchJobTrigger
from tests.conftest import API_KEY, ENDPOINT
from tests.helpers import write_requests


def _job(tmp_path, count: int = 3) -> str:
    hook = MaaSHook()
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", count), "t.jsonl")["name"]
    return hook.create_batch_job(name, "trigger-test")["name"]


async def _event(trigger):
    return (await trigger.run().__anext__()).payload


def test_serialize_round_trip_carries_conn_id_never_key():
    trigger = MaaSBatchJobTrigger("123", maas_conn_id="maas_x", endpoint="e", poll_interval=5, end_time=1.5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_maas.triggers.maas.MaaSBatchJobTrigger"
    assert kwargs == {
        "job_name": "123",
        "maas_conn_id": "maas_x",
        "endpoint": "e",
        "poll_interval": 5.0,
        "end_time": 1.5,
        "max_consecutive_poll_errors": 5,
        "first_poll_after": None,
    }
    assert API_KEY not in repr(kwargs)
    again = MaaSBatchJobTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    jobs = MaaSBatchJobsTrigger(["1", "2"], fire_after=1)
    assert jobs.serialize()[1]["job_names"] == ["1", "2"]
    assert jobs.serialize()[1]["fire_after"] == 1
    assert MaaSBatchJobsTrigger(**jobs.serialize()[1]).serialize() == jobs.serialize()


@pytest.mark.parametrize(
    ("final_state", "status"),
    [
        ("JOB_STATE_SUCCEEDED", "success"),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", "success"),
        ("JOB_STATE_FAILED", "error"),
        ("JOB_STATE_CANCELLED", "error"),
        ("JOB_STATE_EXPIRED", "error"),
    ],
)
async def test_terminal_states(emulator_factory, tmp_path, final_state, status):
    emulator_factory(final_state=final_state, fail_every=2, job_duration=0.2)
    job_name = _job(tmp_path)
    event = await _event(
        MaaSBatchJobTrigger(job_name, first_poll_after=0, poll_interval=0.05, end_time=time.time() + 30)
    )
    assert event["status"] == status
    assert event["job_name"] == job_name
    assert event["state"] == final_state
    assert event["job"]["state"] == final_state
    if status == "error":
        assert event["message"] and job_name in event["message"]


async def test_pending_until_deadline_gives_timeout(emulator_factory, tmp_path):
    emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    event = await _event(
        MaaSBatchJobTrigger(job_name, first_poll_after=0, poll_interval=0.05, end_time=time.time() + 0.3)
    )
    assert event["status"] == "timeout"
    assert "no cancel call" in event["message"]


async def test_deadline_already_past_still_polls_once(emulator_factory, tmp_path):
    emulator_factory(job_duration=0.0)
    job_name = _job(tmp_path)
    time.sleep(0.1)
    event = await _event(
        MaaSBatchJobTrigger(job_name, first_poll_after=0, poll_interval=0.05, end_time=time.time() - 100)
    )
    assert event["status"] == "success"


async def test_unknown_state_keeps_polling_until_deadline(emulator_factory, tmp_path, capsys):
    handle = emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    handle.emulator.set_job_state(job_name, "JOB_STATE_SOMETHING_NEW")
    event = await _event(
        MaaSBatchJobTrigger(job_name, first_poll_after=0, poll_interval=0.05, end_time=time.time() + 0.3)
    )
    assert event["status"] == "timeout"
    assert "undocumented state 'JOB_STATE_SOMETHING_NEW'" in capsys.readouterr().out


@pytest.fixture
def one_attempt_per_poll(monkeypatch):
    """The triggers' hook makes one attempt per call (``max_attempts=1``), so each scheduled fault
    is one failed poll, with no retry wait."""
    monkeypatch.setattr(triggers_maas, "MaaSHook", functools.partial(MaaSHook, max_attempts=1))


def _polls(handle, job_name: str) -> list[str | None]:
    """The fault each GET of the job met (None: answered normally)."""
    path = f"/v1/ai/batch/gemini/{ENDPOINT}/batchPredictionJobs/{job_name}"
    return [entry["fault"] for entry in handle.emulator.access_log if entry["path_qs"] == path]


async def test_failed_polls_are_tolerated_then_success(emulator_factory, tmp_path, one_attempt_per_poll):
    handle = emulator_factory(job_duration=0.2)
    job_name = _job(tmp_path)
    handle.schedule("get:1:503", "get:1:500", "get:1:429")  # the first three polls fail
    trigger = MaaSBatchJobTrigger(
        job_name, first_poll_after=0, poll_interval=0.02, end_time=time.time() + 30, max_consecutive_poll_errors=4
    )
    event = await _event(trigger)
    assert event["status"] == "success"
    assert event["state"] == "JOB_STATE_SUCCEEDED"
    assert event["job"]["completionStats"]["successfulCount"] == "3"
    polls = _polls(handle, job_name)
    assert polls[:3] == ["503", "500", "429"] and set(polls[3:]) == {None}


async def test_too_many_consecutive_errors_gives_error(emulator_factory, tmp_path, one_attempt_per_poll):
    handle = emulator_factory(job_duration=0.2)
    job_name = _job(tmp_path)
    handle.schedule("get:*:503")  # every poll fails
    trigger = MaaSBatchJobTrigger(
        job_name, first_poll_after=0, poll_interval=0.01, end_time=time.time() + 30, max_consecutive_poll_errors=3
    )
    event = await _event(trigger)
    assert event["status"] == "error"
    assert "failed 3 times in a row" in event["message"] and "503" in event["message"]
    assert _polls(handle, job_name) == ["503"] * 3  # gave up after exactly three


async def test_hook_retries_within_a_poll_are_not_failed_polls(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.2, retry_after=0)
    job_name = _job(tmp_path)
    handle.schedule("get:1:503")  # the hook's own retry (default attempts) absorbs it
    trigger = MaaSBatchJobTrigger(
        job_name, first_poll_after=0, poll_interval=0.02, end_time=time.time() + 30, max_consecutive_poll_errors=1
    )
    event = await _event(trigger)
    assert event["status"] == "success"
    assert _polls(handle, job_name)[:2] == ["503", None]


async def test_wrong_key_is_an_error_event_without_the_key(emulator, tmp_path, monkeypatch):
    job_name = _job(tmp_path)
    monkeypatch.setenv(
        "AIRFLOW_CONN_MAAS_BAD",
        json.dumps(
            {
                "conn_type": "maas",
                "host": emulator.base_url,
                "password": "wrong-key-123456",
                "extra": {"endpoint": "test-endpoint"},
            }
        ),
    )
    event = await _event(MaaSBatchJobTrigger(job_name, maas_conn_id="maas_bad", first_poll_after=0, poll_interval=0.05))
    assert event["status"] == "error"
    assert "401" in event["message"]
    assert "wrong-key-123456" not in repr(event)


async def test_jobs_trigger_fires_once_enough_jobs_ended(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    slow, fast = _job(tmp_path), _job(tmp_path)
    handle.emulator.set_job_state(fast, "JOB_STATE_SUCCEEDED")
    event = await _event(MaaSBatchJobsTrigger([slow, fast], poll_interval=0.05, first_poll_after=0.05, fire_after=1))
    assert event["status"] == "success"
    assert [e["job_name"] for e in event["ended"]] == [fast]
    assert BatchJobsEvent.from_event(event).ended[0].outcome is Outcome.SUCCEEDED


async def test_jobs_trigger_waits_for_all_by_default_and_sends_compact_outcomes(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    first, second = _job(tmp_path), _job(tmp_path)
    handle.emulator.set_job_state(first, "JOB_STATE_FAILED", error={"code": 13, "message": "internal error"})
    trigger = MaaSBatchJobsTrigger(
        [first, second], poll_interval=0.05, first_poll_after=0.05, end_time=time.time() + 30
    )
    task = asyncio.ensure_future(_event(trigger))
    await asyncio.sleep(0.3)
    assert not task.done()  # one job ended: not enough
    handle.emulator.set_job_state(second, "JOB_STATE_PARTIALLY_SUCCEEDED")
    event = await task
    assert event["status"] == "success"
    outcomes = {o.job_name: o for o in BatchJobsEvent.from_event(event).ended}
    assert outcomes[first].outcome is Outcome.FAILED
    assert (outcomes[first].error_code, outcomes[first].error_message) == (13, "internal error")
    assert outcomes[second].outcome is Outcome.PARTIAL
    assert "job" not in event["ended"][0]  # never the whole job JSON
    assert len(json.dumps(event)) < 300 * len(outcomes)


async def test_jobs_trigger_unknown_job_is_an_error_event(emulator, tmp_path):
    job = _job(tmp_path)
    event = await _event(MaaSBatchJobsTrigger([job, "999"], poll_interval=0.05, first_poll_after=0.05))
    assert event["status"] == "error"
    assert "999" in event["message"]


async def test_jobs_trigger_timeout_says_how_many_still_run(emulator_factory, tmp_path):
    emulator_factory(job_duration=60)
    job = _job(tmp_path)
    event = await _event(
        MaaSBatchJobsTrigger([job], poll_interval=0.05, first_poll_after=0.05, end_time=time.time() + 0.2)
    )
    assert event["status"] == "timeout"
    assert "1 job(s) still running" in event["message"]


def test_batch_event_validation_rejects_other_shapes():
    with pytest.raises(MaaSError, match="Unexpected event"):
        BatchJobsEvent.from_event({"status": "success", "events": []})
    with pytest.raises(MaaSError, match="Unexpected event"):
        BatchJobsEvent.from_event({"status": "done", "ended": []})


async def test_on_kill_says_the_jobs_keep_running(capsys):
    await MaaSBatchJobsTrigger(["1", "2"]).on_kill()
    assert "keep running" in capsys.readouterr().out


async def test_jobs_trigger_first_polls_one_interval_after_it_starts(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    job = _job(tmp_path)
    handle.emulator.set_job_state(job, "JOB_STATE_SUCCEEDED")
    polls_before = len(handle.emulator.access_log)
    task = asyncio.ensure_future(_event(MaaSBatchJobsTrigger([job], poll_interval=3600, end_time=time.time() + 0.6)))
    await asyncio.sleep(0.2)
    assert not task.done()
    assert len(handle.emulator.access_log) == polls_before  # nothing polled yet
    event = await task  # the pause ends at the deadline: one poll, which sees the job ended
    assert event["status"] == "success"


async def test_jobs_trigger_first_poll_waits_for_airflow_to_see_the_deferral_end(emulator_factory, tmp_path):
    """A short poll interval does not make the first poll come sooner than twice ``[workers]
    min_heartbeat_interval`` (1 s in tests): on Airflow 3.3 a trigger that fires before the scheduler has
    processed the deferring worker's end makes it fail the resumed try."""
    assert triggers_maas.min_first_poll_after() == 2.0
    assert MaaSBatchJobsTrigger(["1"], poll_interval=0.05).first_pause == 2.0
    assert MaaSBatchJobsTrigger(["1"], poll_interval=30).first_pause == 30.0
    handle = emulator_factory(job_duration=60)
    job = _job(tmp_path)
    handle.emulator.set_job_state(job, "JOB_STATE_SUCCEEDED")
    polls_before = len(handle.emulator.access_log)
    task = asyncio.ensure_future(_event(MaaSBatchJobsTrigger([job], poll_interval=0.05)))
    await asyncio.sleep(0.5)
    assert not task.done() and len(handle.emulator.access_log) == polls_before  # ten intervals: no poll yet
    assert (await task)["status"] == "success"
