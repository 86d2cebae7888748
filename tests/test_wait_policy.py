"""One wait policy (issue 21, item 4): the sensor, the single-job trigger, the N-job trigger and the
batch driver decide alike on the same faults, under one parameter name and one default; uploads and
downloads re-transfer by one rule."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from airflow_provider_maas.batch.polling import (
    DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
    MAX_TRANSFERS,
    NOT_FOUND_TRIES,
    JobWatch,
    NotFoundCount,
    PollErrors,
    first_poll_delay,
    min_first_poll_after,
    poll_errors_arg,
    transfer_again,
)
from airflow_provider_maas.exceptions import (
    MaaSError,
    MaaSInputError,
    MaaSIntegrityError,
    MaaSJobGoneError,
    MaaSNotFoundError,
    MaaSRetryableError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor
from airflow_provider_maas.triggers import maas as triggers_maas
from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger, MaaSBatchJobTrigger
from tests.conftest import ENDPOINT
from tests.helpers import batch_operator, make_context, write_requests

LIMIT = 3


# The rule's parts -------------------------------------------------------------------------------
def test_error_budget_counts_failed_polls_in_a_row_per_job_and_an_answer_resets_it():
    budget = PollErrors(3)
    err = MaaSRetryableError("HTTP 503")
    assert budget.failed("a", err) is None and budget.failed("a", err) is None
    assert budget.failed("b", err) is None  # another job has its own count
    budget.answered("a")
    assert budget.failed("a", err) is None and budget.failed("a", err) is None
    assert budget.failed("a", err) == "Polling job a failed 3 times in a row: HTTP 503"


def test_gone_after_three_404s_in_a_row():
    count = NotFoundCount()
    assert [NotFoundCount.gone(count.seen("k")) for _ in range(NOT_FOUND_TRIES)] == [False, False, True]
    assert not NotFoundCount.gone(count.seen("k"))  # judged gone once: the count starts again
    count.answered("k")
    assert count.seen("k") == 1


def test_first_poll_waits_one_interval_and_at_least_for_airflow_to_see_the_deferral_end():
    assert min_first_poll_after() == 2.0  # tests set [workers] min_heartbeat_interval to 1 s
    assert first_poll_delay(0.05, None) == 2.0
    assert first_poll_delay(30, None) == 30.0
    assert first_poll_delay(30, 0) == 0.0
    # Both triggers, whose kwargs carry first_poll_after (None by default).
    for trigger in (MaaSBatchJobTrigger("1", poll_interval=0.05), MaaSBatchJobsTrigger(["1"], poll_interval=0.05)):
        assert trigger.first_pause == 2.0
        assert trigger.serialize()[1]["first_poll_after"] is None


async def test_single_job_trigger_first_poll_waits_for_airflow_to_see_the_deferral_end(emulator_factory, tmp_path):
    """The sensor defers right after a poll that saw the job running: the race the N-job trigger's
    first-poll delay avoids (a trigger firing before the scheduler processed the deferral) is its too."""
    handle = emulator_factory(job_duration=60)
    job = _job(tmp_path)
    handle.emulator.set_job_state(job, "JOB_STATE_SUCCEEDED")
    task = asyncio.ensure_future(MaaSBatchJobTrigger(job, poll_interval=0.05).run().__anext__())
    await asyncio.sleep(0.5)
    assert not task.done() and _polls(handle, job) == []  # ten intervals: no poll yet
    assert (await task).payload["status"] == "success"


def test_one_default_one_name_for_every_waiter():
    for waiter in (MaaSBatchJobSensor, MaaSBatchPredictionOperator, MaaSBatchJobTrigger, MaaSBatchJobsTrigger):
        parameter = inspect.signature(waiter.__init__).parameters["max_consecutive_poll_errors"]
        assert parameter.default == DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS == 5, waiter
    for bad in (0, -1, 2.5, "5", True):
        with pytest.raises(MaaSInputError, match="max_consecutive_poll_errors"):
            MaaSBatchJobTrigger("1", max_consecutive_poll_errors=bad)


def test_the_old_name_is_accepted_with_a_deprecation_warning():
    from airflow.exceptions import AirflowProviderDeprecationWarning

    for make in (functools.partial(MaaSBatchJobTrigger, "1"), functools.partial(MaaSBatchJobsTrigger, ["1"])):
        with pytest.warns(AirflowProviderDeprecationWarning, match="use max_consecutive_poll_errors"):
            trigger = make(max_consecutive_errors=7)
        assert trigger.max_consecutive_poll_errors == trigger.max_consecutive_errors == 7
        assert "max_consecutive_errors" not in trigger.serialize()[1]
        with pytest.warns(AirflowProviderDeprecationWarning), pytest.raises(MaaSInputError, match="disagree"):
            make(max_consecutive_poll_errors=4, max_consecutive_errors=7)
    assert triggers_maas.DEFAULT_MAX_CONSECUTIVE_ERRORS == DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS  # its old home
    assert poll_errors_arg(None, None, owner="x") == DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS


def test_uploads_and_downloads_re_transfer_by_one_rule(caplog):
    for call in (MaaSHook.upload_file, MaaSHook.download_results):
        assert inspect.signature(call).parameters["max_transfers"].default == MAX_TRANSFERS == 3
    err = MaaSIntegrityError("crc32c differs")
    assert [transfer_again("Upload of 'f'", n, 3, err) for n in (1, 2, 3)] == [True, True, False]
    assert "Upload of 'f' failed (transfer 1 of 3)" in caplog.text


@pytest.mark.parametrize(("kind", "fault"), [("upload", "upload:*:wrong-md5"), ("download", "content:*:corrupt")])
def test_uploads_and_downloads_stop_after_the_same_number_of_transfers(emulator_factory, tmp_path, caplog, kind, fault):
    handle = emulator_factory(job_duration=0)
    hook = MaaSHook()
    requests = write_requests(tmp_path / "r.jsonl", 2)
    job = hook.create_batch_job(hook.upload_file(requests, "t.jsonl")["name"], "transfers")["name"]
    hook.wait_for_batch_job(job, poll_interval=0.05, timeout=30)
    handle.schedule(fault)
    caplog.clear()
    with pytest.raises(MaaSIntegrityError):
        if kind == "upload":
            hook.upload_file(requests, "t.jsonl", max_transfers=2)
        else:
            hook.download_results(job, tmp_path / "out.jsonl", max_transfers=2)
    # Two transfers: the first sent again (logged), the second's mismatch raised.
    assert "failed (transfer 1 of 2)" in caplog.text and "transfer 2 of 2" not in caplog.text


# Same fault schedule, same behaviour -----------------------------------------------------------
def _job(tmp_path) -> str:
    hook = MaaSHook()
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", 2), "w.jsonl")["name"]
    return hook.create_batch_job(name, "wait-policy")["name"]


def _polls(handle, job_name: str) -> list[str | None]:
    path = f"/v1/ai/batch/gemini/{ENDPOINT}/batchPredictionJobs/{job_name}"
    return [entry["fault"] for entry in handle.emulator.access_log if entry["path_qs"] == path]


def _verdict(message: str) -> str:
    if f"failed {LIMIT} times in a row" in message:
        return "budget spent"
    if f"on {NOT_FOUND_TRIES} polls in a row" in message:
        return "gone"
    return f"other: {message}"


def _sensor(job: str) -> str:
    sensor = MaaSBatchJobSensor(
        task_id="wait", job_name=job, poll_interval=0.02, timeout=30, max_consecutive_poll_errors=LIMIT
    )
    sensor.__dict__["hook"] = MaaSHook(max_attempts=1)  # one HTTP call per poll: each fault is one failed poll
    try:
        return "ended " + sensor.execute(make_context())["state"]
    except MaaSRetryableError:  # the sensor raises the poll's own error: Airflow retries it
        return "budget spent"
    except MaaSNotFoundError as err:
        return _verdict(str(err))


def _trigger(job: str, many: bool) -> str:
    kwargs = {"poll_interval": 0.02, "first_poll_after": 0, "max_consecutive_poll_errors": LIMIT}
    trigger = MaaSBatchJobsTrigger([job], **kwargs) if many else MaaSBatchJobTrigger(job, **kwargs)
    event = asyncio.run(trigger.run().__anext__()).payload
    if event["status"] == "success":
        return "ended " + (event["state"] if not many else event["ended"][0]["state"])
    return _verdict(event["message"])


class _DriverWatch(JobWatch):
    """The batch driver's polling half, over a state that records one running job."""

    def __init__(self, job: str) -> None:
        record = SimpleNamespace(key="0.0", clear_epoch=None, job_state=None)
        record.but = lambda **changes: record  # the states polled are kept (for the progress view) in memory
        self.hook = MaaSHook(max_attempts=1)
        self.state = SimpleNamespace(by_job=lambda: {job: record})
        self.journal = SimpleNamespace(uri="memory://state")
        self.clear_epoch = None
        self.shard_retries = 2
        self._pool = ThreadPoolExecutor(1)
        self._busy, self._downloading, self._doubted = set(), set(), set()
        self._seen, self._last_state = {}, {}
        self._not_found, self._poll_errors = NotFoundCount(), PollErrors(LIMIT)

    def _observe(self, record: object) -> None:  # the driver keeps a polled state for its next write
        pass


def _driver(job: str) -> str:
    watch = _DriverWatch(job)
    try:
        while not (ended := watch.poll([job])):
            time.sleep(0.02)
    except MaaSJobGoneError as err:
        return _verdict(str(err))
    except MaaSError as err:
        return _verdict(str(err))
    finally:
        watch._pool.shutdown()
    return f"ended {ended[0].state}"


def _hook_wait(job: str) -> str:
    hook = MaaSHook(max_attempts=1)
    try:
        return "ended " + hook.wait_for_batch_job(job, 0.02, 30, max_consecutive_poll_errors=LIMIT)["state"]
    except MaaSRetryableError:
        return "budget spent"
    except MaaSNotFoundError as err:
        return _verdict(str(err))


WAITERS = {
    "hook wait": _hook_wait,
    "sensor": _sensor,
    "job trigger": functools.partial(_trigger, many=False),
    "jobs trigger": functools.partial(_trigger, many=True),
    "driver": _driver,
}


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (["get:2:503"], "ended JOB_STATE_SUCCEEDED"),
        (["get:*:503"], "budget spent"),
        (["get:2:404"], "ended JOB_STATE_SUCCEEDED"),
        (["get:*:404"], "gone"),
        (["get:1:503", "get:1:404", "get:1:500", "get:1:404"], "ended JOB_STATE_SUCCEEDED"),
    ],
)
def test_same_fault_schedule_same_behaviour_in_sensor_triggers_and_driver(
    emulator_factory, tmp_path, monkeypatch, schedule, expected
):
    # Every waiter's hook makes one attempt per poll: each scheduled fault is one failed poll.
    monkeypatch.setattr(triggers_maas, "MaaSHook", functools.partial(MaaSHook, max_attempts=1))
    handle = emulator_factory(job_duration=0.1)
    seen = {}
    for name, wait in WAITERS.items():
        job = _job(tmp_path)
        handle.schedule(*schedule)
        verdict = wait(job)
        seen[name] = (verdict, [fault for fault in _polls(handle, job) if fault is not None])
        handle.emulator.fault_schedule.clear()  # what a waiter left unspent does not reach the next one
    assert {name: verdict for name, (verdict, _) in seen.items()} == dict.fromkeys(WAITERS, expected)
    assert len({tuple(faults) for _, faults in seen.values()}) == 1, seen  # the same faults met, in order


def test_one_job_state_vocabulary():
    """The service's names (JobState) and what they mean to a waiter (Outcome): no third enum."""
    from enum import Enum

    from airflow_provider_maas.client import states

    enums = {name for name, value in vars(states).items() if isinstance(value, type) and issubclass(value, Enum)}
    assert enums - {"Enum"} == {
        "JobState",
        "Outcome",
    }
    meaning = {state: states.classify_state(state.value) for state in states.JobState}
    assert {s for s, o in meaning.items() if o is states.Outcome.FAILED} == set(states.FAILED_STATES)
    assert meaning[states.JobState.SUCCEEDED] is states.Outcome.SUCCEEDED
    assert meaning[states.JobState.PARTIALLY_SUCCEEDED] is states.Outcome.PARTIAL
    assert states.classify_state("JOB_STATE_NEW_THING") is states.Outcome.WAITING
    assert not states.documented("JOB_STATE_NEW_THING") and states.documented("JOB_STATE_RUNNING")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [(["get:2:503"], "ended"), (["get:*:503"], "budget spent"), (["get:2:404"], "ended"), (["get:*:404"], "gone")],
)
def test_the_batch_operator_waits_by_the_same_policy(emulator_factory, tmp_path, schedule, expected):
    """The operator's own BatchDriver (not a stand-in), on the schedules above: the same verdicts."""
    handle = emulator_factory(job_duration=0.1, faults=schedule)
    source = write_requests(tmp_path / "r.jsonl", 2)
    operator = batch_operator(source, tmp_path / "out.jsonl", poll_interval=0.02, max_consecutive_poll_errors=LIMIT)
    operator.__dict__["hook"] = MaaSHook(max_attempts=1)
    try:
        operator.execute(make_context())
        verdict = "ended"
    except MaaSError as err:
        verdict = _verdict(str(err))
    assert verdict == expected
    (job,) = handle.emulator.jobs
    faults = [fault for fault in _polls(handle, job) if fault is not None]
    assert faults == [schedule[0].split(":")[2]] * (2 if expected == "ended" else LIMIT)
