"""One definition of a transient HTTP status (issue 21): 408, 429 and every 5xx, gateways' 520-529
included, are retried on reads and polls by the sync and async paths alike, and a poll that still
fails counts as a failed poll in the sensor and the triggers instead of ending the wait."""

from __future__ import annotations

import functools
import time

import pytest

from airflow_provider_maas.client.errors import error_from_response
from airflow_provider_maas.client.retry import RETRYABLE_STATUS, RetryPolicy
from airflow_provider_maas.exceptions import MaaSApiError, MaaSRetryableError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor
from airflow_provider_maas.triggers import maas as triggers_maas
from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger, MaaSBatchJobTrigger
from tests.helpers import make_context, write_requests

#: The statuses of the issue: the usual ones and those gateways and CDNs answer (Cloudflare's 52x,
#: the 529 "overloaded" of some APIs).
TRANSIENT = [500, 502, 503, 504, 520, 522, 524, 529, 408, 429]
NOT_TRANSIENT = [400, 401, 403, 404, 409, 410, 422]


def _fault(status: int) -> str:
    """A scheduled fault answering ``status`` (the emulator's page echoing the request headers)."""
    return f"get:1:echo-headers={status}"


def _job(tmp_path) -> str:
    hook = MaaSHook()
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", 2), "t.jsonl")["name"]
    return hook.create_batch_job(name, "transient-test")["name"]


@pytest.mark.parametrize("status", TRANSIENT)
def test_status_is_mapped_to_a_retryable_error(status):
    err = error_from_response(status, b"<html>gateway says no</html>", what="Getting job 1")
    assert isinstance(err, MaaSRetryableError)
    assert err.status_code == status
    assert RetryPolicy().retryable(err)
    assert status in RETRYABLE_STATUS


@pytest.mark.parametrize("status", NOT_TRANSIENT)
def test_other_4xx_are_not_retried(status):
    err = error_from_response(status, b"", what="Getting job 1")
    assert isinstance(err, MaaSApiError) and not isinstance(err, MaaSRetryableError)
    assert not RetryPolicy().retryable(err)


def test_every_5xx_and_nothing_else_above_499_is_transient():
    assert {s for s in RETRYABLE_STATUS if s >= 500} == set(range(500, 600))
    assert {s for s in RETRYABLE_STATUS if s < 500} == {408, 429}


@pytest.mark.parametrize("status", TRANSIENT)
def test_sync_get_retries_the_status(emulator_factory, tmp_path, status):
    handle = emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    handle.schedule(_fault(status))
    job = MaaSHook(max_attempts=2, retry_base_delay=0.01).get_batch_job(job_name)
    assert job["name"] == job_name


@pytest.mark.parametrize("status", TRANSIENT)
async def test_async_poll_retries_the_status(emulator_factory, tmp_path, status):
    handle = emulator_factory(job_duration=60)
    job_name = _job(tmp_path)
    handle.schedule(_fault(status))
    hook = MaaSHook(max_attempts=2, retry_base_delay=0.01)
    async with hook.async_session_scope():
        job = await hook.aget_batch_job(job_name)
    assert job["name"] == job_name


@pytest.fixture
def one_attempt_per_poll(monkeypatch):
    """The triggers' hook makes one attempt per call: each scheduled fault is one failed poll."""
    monkeypatch.setattr(triggers_maas, "MaaSHook", functools.partial(MaaSHook, max_attempts=1))


@pytest.mark.parametrize("status", TRANSIENT)
async def test_trigger_counts_the_status_as_a_failed_poll(emulator_factory, tmp_path, one_attempt_per_poll, status):
    handle = emulator_factory(job_duration=0.2)
    job_name = _job(tmp_path)
    handle.schedule(_fault(status))
    trigger = MaaSBatchJobTrigger(
        job_name, first_poll_after=0, poll_interval=0.02, end_time=time.time() + 30, max_consecutive_poll_errors=2
    )
    event = (await trigger.run().__anext__()).payload
    assert event["status"] == "success", event["message"]


async def test_batch_trigger_counts_a_524_as_a_failed_poll(emulator_factory, tmp_path, one_attempt_per_poll):
    handle = emulator_factory(job_duration=0.2)
    job_name = _job(tmp_path)
    handle.schedule(_fault(524))
    trigger = MaaSBatchJobsTrigger(
        [job_name], poll_interval=0.02, end_time=time.time() + 30, max_consecutive_poll_errors=2, first_poll_after=0
    )
    event = (await trigger.run().__anext__()).payload
    assert event["status"] == "success", event["message"]


@pytest.mark.parametrize("status", TRANSIENT)
def test_sensor_counts_the_status_as_a_failed_poll(emulator_factory, tmp_path, status):
    handle = emulator_factory(job_duration=0.1)
    job_name = _job(tmp_path)
    handle.schedule(_fault(status))
    sensor = MaaSBatchJobSensor(
        task_id="wait", job_name=job_name, poll_interval=0.05, timeout=30, max_consecutive_poll_errors=2
    )
    sensor.__dict__["hook"] = MaaSHook(max_attempts=1)  # one HTTP call per poll
    assert sensor.execute(make_context())["state"] == "JOB_STATE_SUCCEEDED"
