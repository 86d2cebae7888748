"""Input integrity (issue 19, finding 6): the batch operator uploads a shard only if its bytes are
the ones planned (size and SHA-256). A source replaced by a same-size file, mid-run or between a
deferral and its resume, stops the task before the first mismatched shard is paid for, naming the
file; every job the service counts was created from bytes of the original file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from airflow_provider_maas.exceptions import MaaSInputChangedError
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.compat import TaskDeferred
from tests.helpers import assert_in_input_order, batch_operator, make_context, write_requests

#: 100 requests, 10 per shard: 10 shards, 3 jobs at once.
SHARDS = {"max_requests_per_file": 10, "max_active_jobs": 3}


def _replace_same_size(path) -> None:
    """What an upstream task writing a fixed path does: other requests, the same number of bytes."""
    data = path.read_bytes()
    changed = data.replace(b"Question", b"Qvestion")
    assert len(changed) == len(data) and changed != data
    path.write_bytes(changed)


def _uploads(handle) -> int:
    return sum(1 for e in handle.emulator.access_log if e["method"] == "POST" and "/files" in e["path_qs"])


def test_a_source_replaced_mid_run_stops_before_paying_for_a_changed_shard(emulator_factory, tmp_path, monkeypatch):
    handle = emulator_factory(job_duration=0.2)
    source = write_requests(tmp_path / "in.jsonl", 100)
    real_create = MaaSHook.create_batch_job
    replaced: list[int] = []

    def create_then_replace(self, file_name, display_name):
        job = real_create(self, file_name, display_name)
        if not replaced:  # after the first job: the shards uploaded so far hold the original bytes
            replaced.append(_uploads(handle))
            _replace_same_size(source)
        return job

    monkeypatch.setattr(MaaSHook, "create_batch_job", create_then_replace)
    with pytest.raises(MaaSInputChangedError) as info:
        batch_operator(source, tmp_path / "out.jsonl", **SHARDS).execute(make_context())
    message = str(info.value)
    assert f"source {source.as_uri()} changed since it was planned" in message
    assert "Restore the file" in message and "clear the batch task" in message
    # No changed shard uploaded, so no job for one: a job per shard whose bytes were read before the
    # replacement (an upload in flight then, on a loaded machine, is one of them).
    uploaded = [Path(f["path"]).read_bytes() for f in handle.emulator.files.values()]
    assert uploaded and not any(b"Qvestion" in data for data in uploaded)
    assert replaced[0] <= _uploads(handle) <= SHARDS["max_active_jobs"]
    assert handle.emulator.jobs_created <= _uploads(handle)


def test_a_source_replaced_while_deferred_stops_the_resumed_try(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "in.jsonl", 100)
    dest = tmp_path / "out.jsonl"
    op = batch_operator(source, dest, deferrable=True, **SHARDS)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())
    uploaded, created = _uploads(handle), handle.emulator.jobs_created
    assert created == SHARDS["max_active_jobs"] and uploaded < 10
    _replace_same_size(source)  # while the worker is gone
    for name in info.value.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    event = asyncio.run(anext(info.value.trigger.run())).payload
    with pytest.raises(MaaSInputChangedError, match="changed since it was planned"):
        batch_operator(source, dest, deferrable=True, **SHARDS).execute_complete(make_context(), event)
    assert _uploads(handle) == uploaded  # nothing of the new file was sent
    # The shards uploaded ahead (original bytes) may get their jobs; none of the new file's.
    assert handle.emulator.jobs_created == uploaded


@pytest.mark.parametrize("request_retries", [0, 1])  # 0: checked by the merge; 1: before the retry round
def test_a_source_replaced_after_every_upload_is_not_merged_and_nothing_is_paid_again(
    emulator_factory, tmp_path, request_retries
):
    handle = emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "in.jsonl", 30)
    original = source.read_bytes()
    dest = tmp_path / "out.jsonl"
    settings = {"max_requests_per_file": 10, "deferrable": True, "request_retries": request_retries}
    with pytest.raises(TaskDeferred) as info:
        batch_operator(source, dest, **settings).execute(make_context())
    assert handle.emulator.jobs_created == 3  # every shard sent
    _replace_same_size(source)
    for name in info.value.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    event = asyncio.run(anext(info.value.trigger.run())).payload
    with pytest.raises(MaaSInputChangedError, match=r"in\.jsonl changed since it was planned"):
        batch_operator(source, dest, **settings).execute_complete(make_context(), event)
    assert not dest.exists()  # the answers were not paired with other requests

    source.write_bytes(original)  # restored; the person clears the task
    assert batch_operator(source, dest, **settings).execute(make_context()) == dest.as_uri()
    assert_in_input_order(source, dest)
    assert handle.emulator.jobs_created == 3


def test_a_source_replaced_before_a_retry_round_pays_for_no_retry(emulator_factory, tmp_path):
    """Requests to retry are read from the source: a changed source would send (and pay for) other
    requests in the retry round, and place answers wrongly. It is checked first."""
    handle = emulator_factory(job_duration=60, faults=["create:1:partial-missing=2"])
    source = write_requests(tmp_path / "in.jsonl", 30)
    original = source.read_bytes()
    dest = tmp_path / "out.jsonl"
    settings = {"max_requests_per_file": 10, "deferrable": True, "request_retries": 1}
    with pytest.raises(TaskDeferred) as info:
        batch_operator(source, dest, **settings).execute(make_context())
    _replace_same_size(source)
    for name in info.value.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    event = asyncio.run(anext(info.value.trigger.run())).payload
    with pytest.raises(MaaSInputChangedError, match="changed since it was planned"):
        batch_operator(source, dest, **settings).execute_complete(make_context(), event)
    assert handle.emulator.jobs_created == 3 and not dest.exists()  # no retry round was paid for

    source.write_bytes(original)  # restored: the retry round sends the 2 missing requests, once
    handle.emulator.config.job_duration = 0.1
    batch_operator(source, dest, **{**settings, "deferrable": False}).execute(make_context())
    assert handle.emulator.jobs_created == 4
    assert all(r.succeeded for r in assert_in_input_order(source, dest))


@pytest.mark.parametrize("request_retries", [0, 1])  # 0: checked by the merge; 1: before the retry round
def test_a_source_replaced_after_a_filtered_round_0_is_not_merged_and_pays_for_no_retry(
    emulator_factory, tmp_path, request_retries
):
    """Round 0 is a filtered copy of the source when identical requests are sent once (or
    ``reuse_results`` answered some): its uploads are checked against that copy, and the source
    itself against the digest of the whole file kept in the state, before a retry round reads it
    and before the merge pairs answers with its lines."""
    handle = emulator_factory(job_duration=60, faults=["create:1:partial-missing=2"])
    source = write_requests(tmp_path / "in.jsonl", 30)
    source.write_bytes(source.read_bytes() + source.read_bytes().splitlines(keepends=True)[0])  # a repeat
    original = source.read_bytes()
    dest = tmp_path / "out.jsonl"
    settings = {"max_requests_per_file": 10, "deferrable": True, "request_retries": request_retries}
    with pytest.raises(TaskDeferred) as info:
        batch_operator(source, dest, **settings).execute(make_context())
    assert handle.emulator.jobs_created == 3  # 30 distinct requests of 31
    _replace_same_size(source)
    for name in info.value.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    event = asyncio.run(anext(info.value.trigger.run())).payload
    with pytest.raises(MaaSInputChangedError) as changed:
        batch_operator(source, dest, **settings).execute_complete(make_context(), event)
    message = str(changed.value)
    assert f"source {source.as_uri()} changed since it was planned" in message, message
    assert "Restore the file" in message and ("retry round" in message) == bool(request_retries), message
    assert handle.emulator.jobs_created == 3 and not dest.exists()  # no retry paid, nothing paired wrongly

    source.write_bytes(original)  # restored; the person clears the task
    handle.emulator.config.job_duration = 0.1
    batch_operator(source, dest, **{**settings, "deferrable": False}).execute(make_context())
    assert handle.emulator.jobs_created == 3 + request_retries  # the retry round sends the 2 missing, once
    assert_in_input_order(source, dest, expect_missing=0 if request_retries else 2)
