"""The API key never leaves through a response: every error path, sync and async, any status,
with a body echoing the request headers (``Authorization: Bearer KEY``) as a misconfigured proxy does.

The emulator's ``echo-headers`` fault answers the page (200 ``text/html``, or ``=STATUS``), so
each call meets the echoed key exactly once; no exception text, log record or trigger event may
contain it, nor any ``Bearer`` value.
"""

from __future__ import annotations

import logging

import pytest

from airflow_provider_maas.exceptions import MaaSError, MaaSJobFailedError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger
from tests.conftest import API_KEY
from tests.test_hook import REQUESTS_FILE, assert_no_key, finished_job, new_job

# 200 (a success body that is not JSON), 401/404 (mapped errors), 429 and 502 (retried, then raised)
STATUSES = ["", "=401", "=404", "=429", "=502"]


def no_key_anywhere(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text
        assert "Bearer " not in text.replace("Bearer ***", "")


@pytest.fixture
def hook(emulator_factory, caplog):
    caplog.set_level(logging.DEBUG)
    handle = emulator_factory(retry_after=0.0)
    hook = MaaSHook(max_attempts=2, retry_base_delay=0.0)
    hook.handle = handle  # type: ignore[attr-defined]
    return hook


def sweep(hook, caplog, kind: str, status: str, call) -> None:
    hook.handle.schedule(f"{kind}:*:echo-headers{status}")
    with pytest.raises(MaaSError) as info:
        call()
    hook.handle.emulator.fault_schedule.clear()
    assert any(entry["fault"] == "echo-headers" for entry in hook.handle.emulator.access_log)
    assert_no_key(info.value)
    no_key_anywhere(str(info.value), repr(info.value), caplog.text)
    for record in caplog.records:
        no_key_anywhere(record.getMessage(), repr(record.args))


@pytest.mark.parametrize("status", STATUSES)
def test_upload(hook, caplog, status):
    sweep(hook, caplog, "upload", status, lambda: hook.upload_file(REQUESTS_FILE, "echo.jsonl"))


@pytest.mark.parametrize("status", STATUSES)
def test_create(hook, caplog, status):
    hook.upload_file(REQUESTS_FILE, "echo.jsonl")
    sweep(hook, caplog, "create", status, lambda: hook.create_batch_job("echo.jsonl", "echo"))


@pytest.mark.parametrize("status", STATUSES)
def test_get(hook, caplog, status):
    name = finished_job(hook)
    sweep(hook, caplog, "get", status, lambda: hook.get_batch_job(name))


@pytest.mark.parametrize("status", STATUSES)
def test_metadata(hook, caplog, status):
    name = finished_job(hook)
    sweep(hook, caplog, "metadata", status, lambda: hook.get_results_metadata(name))


@pytest.mark.parametrize("status", STATUSES)
def test_content(hook, caplog, status, tmp_path):
    name = finished_job(hook)
    sweep(hook, caplog, "content", status, lambda: hook.download_results(name, tmp_path / "r.jsonl"))
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("status", STATUSES)
async def test_async_get(hook, caplog, status):
    name = finished_job(hook)

    async def call() -> None:
        async with hook.async_session_scope():
            await hook.aget_batch_job(name)

    hook.handle.schedule(f"get:*:echo-headers{status}")
    with pytest.raises(MaaSError) as info:
        await call()
    assert_no_key(info.value)
    no_key_anywhere(str(info.value), caplog.text)


@pytest.mark.parametrize("status", STATUSES)
async def test_trigger_event(hook, caplog, status):
    name = finished_job(hook)
    hook.handle.schedule(f"get:*:echo-headers{status}")
    trigger = MaaSBatchJobTrigger(job_name=name, first_poll_after=0, poll_interval=0.01, max_consecutive_poll_errors=2)
    event = await trigger.run().__anext__()
    assert event.payload["status"] == "error"
    no_key_anywhere(repr(event.payload), caplog.text)


async def test_a_success_body_quoting_the_key_is_redacted_sync_async_and_in_the_event(hook, caplog):
    name = new_job(hook)
    hook.handle.emulator.set_job_state(name, "JOB_STATE_FAILED", f"rejected Authorization: Bearer {API_KEY}")
    with pytest.raises(MaaSJobFailedError) as info:
        hook.wait_for_batch_job(name, poll_interval=0.01, timeout=10)
    no_key_anywhere(str(info.value), repr(info.value.job))
    async with hook.async_session_scope():
        job = await hook.aget_batch_job(name)
    no_key_anywhere(repr(job))
    event = await MaaSBatchJobTrigger(job_name=name, first_poll_after=0, poll_interval=0.01).run().__anext__()
    assert event.payload["status"] == "error"
    no_key_anywhere(repr(event.payload), caplog.text)
