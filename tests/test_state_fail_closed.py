"""Issue 19: the batch operator's record of paid work fails closed.

One test per finding of the issue in this scope (the number is in the test's name), each on the real
code path: the operator against the emulator over loopback HTTP, with a stand-in context so that an
automatic retry (same ``max_tries``) and a person's clear (``max_tries`` raised) can be staged
exactly. The emulator counts the jobs created: that is what was paid.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_maas.batch.answers import matching
from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.record.second_record import JOBS_KEY, STATE_KEY
from airflow_provider_maas.batch.record.state import ShardKey, ShardStatus
from airflow_provider_maas.exceptions import (
    MaaSJobCreationUncertainError,
    MaaSJobFailedError,
    MaaSJobGoneError,
    MaaSStateError,
    MaaSStateWriteError,
    MaaSTimeoutError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.compat import AirflowSensorTimeout, TaskDeferred
from tests.conftest import ROOT
from tests.helpers import (
    FakeStateStore,
    FileStateStore,
    assert_in_input_order,
    batch_operator,
    make_context,
    use_fake_variables,
    write_requests,
)

FIXTURES = ROOT / "tests" / "fixtures"


_try = functools.partial(make_context, max_tries=1)  # a try of the first clear epoch


def _state_dir(dest, identity: str = "dag.task.run1.m-1"):
    return dest.parent / f".{dest.name}.maas" / identity


def _timed_out_try(handle, source, dest, store, **kwargs) -> list[str]:
    """Try 1 stops on ``wait_timeout`` while its jobs run; returns their names."""
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3, **kwargs).execute(_try(store))
    return sorted(handle.emulator.jobs)


def _earlier_results(tmp_path):
    """The results of an earlier run answering requests 0 to 49 (one job), for ``reuse_results``."""
    earlier = tmp_path / "earlier-results.jsonl"
    batch_operator(write_requests(tmp_path / "earlier.jsonl", 50), earlier).execute(_try(run_id="earlier"))
    return earlier


def _assert_refused(err: pytest.ExceptionInfo, dest, *texts: str) -> str:
    message = str(err.value)
    assert f"The batch state at file://{_state_dir(dest)}" in message
    assert "start_over=True" in message and "creates nothing" in message
    for text in texts:
        assert text in message, message
    return message


# 1 ------------------------------------------------------------------------------------------------
def test_1_state_deleted_between_tries_refuses_on_retry_and_clear(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    _timed_out_try(handle, source, dest, store)
    assert handle.emulator.jobs_created == 3
    shutil.rmtree(dest.parent / f".{dest.name}.maas")

    for context in (_try(store), _try(store, max_tries=3)):  # an automatic retry, then a person's clear
        with pytest.raises(MaaSStateError) as refused:
            batch_operator(source, dest).execute(context)
        _assert_refused(refused, dest, "points at it, but it is gone")
    assert handle.emulator.jobs_created == 3  # nothing paid again

    batch_operator(source, dest, start_over="true").execute(_try(store, max_tries=5))  # a person's choice
    assert handle.emulator.jobs_created == 6
    assert_in_input_order(source, dest)
    assert store.data[STATE_KEY]["finished"] is True
    batch_operator(source, dest).execute(_try(store, max_tries=7))  # a clear after success starts afresh
    assert handle.emulator.jobs_created == 9


def test_1_a_pointer_of_the_earlier_provider_version_without_state(emulator, tmp_path):
    # Before issue 19 the pointer had no end mark: without a state, a written destination means the
    # batch finished (a clear after an upgrade runs again); no destination means the state is lost.
    source, dest = write_requests(tmp_path / "r.jsonl", 30), tmp_path / "res.jsonl"
    store = FakeStateStore()
    store.set(STATE_KEY, {"location": f"file://{_state_dir(dest)}", "version": 1})
    with pytest.raises(MaaSStateError, match="points at it, but it is gone"):
        batch_operator(source, dest).execute(_try(store, max_tries=3))
    dest.write_text("")  # the earlier version wrote the results, then removed its state
    batch_operator(source, dest).execute(_try(store, max_tries=5))
    assert emulator.emulator.jobs_created == 1
    assert_in_input_order(source, dest)


def test_1_a_pointer_without_state_is_judged_alike_with_and_without_a_cap(emulator, tmp_path):
    # One condition says whether a pointer without a state means the state is lost: the refusal of
    # start_over under max_cost_usd and the refusal without start_over agree (an earlier version's
    # pointer, a written destination: finished; no destination: lost).
    source, dest = write_requests(tmp_path / "r.jsonl", 30), tmp_path / "res.jsonl"
    store = FakeStateStore()
    store.set(STATE_KEY, {"location": f"file://{_state_dir(dest)}", "version": 1})
    capped = {"prices": {"prompt": 1.0, "candidates": 1.0}, "max_cost_usd": 1000.0}
    with pytest.raises(MaaSStateError, match=r"points at it, but it is gone.*max_cost_usd is set"):
        batch_operator(source, dest, start_over=True, **capped).execute(_try(store, max_tries=3))
    with pytest.raises(MaaSStateError, match="points at it, but it is gone"):
        batch_operator(source, dest, **capped).execute(_try(store, max_tries=3))
    assert emulator.emulator.jobs_created == 0
    dest.write_text("")  # the earlier version wrote the results, then removed its state
    batch_operator(source, dest, start_over=True, **capped).execute(_try(store, max_tries=5))
    assert emulator.emulator.jobs_created == 1
    assert len(dest.read_text().splitlines()) == 30


# 2 ------------------------------------------------------------------------------------------------
def test_2_journal_objects_deleted_manifest_kept_refuses_naming_surviving_jobs(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    jobs = _timed_out_try(handle, source, dest, None)  # Airflow 3.0: no task_state_store
    journal_dir = _state_dir(dest) / "journal"
    objects = sorted(journal_dir.iterdir())
    assert len(objects) >= 3
    objects[1].unlink()  # a gap: a listing that lags, a lifecycle rule

    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try())
    message = _assert_refused(refused, dest, "0000000002.jsonl are missing", "a gap in the sequence")
    assert set(refused.value.job_names) == set(jobs) and all(name in message for name in jobs)

    shutil.rmtree(journal_dir)  # every journal object gone, the manifest kept
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try())
    _assert_refused(refused, dest, "the manifest is there but no journal object")
    assert handle.emulator.jobs_created == 3


# 3 ------------------------------------------------------------------------------------------------
def test_3_state_of_another_format_version_is_refused_naming_its_jobs(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    jobs = _timed_out_try(handle, source, dest, FakeStateStore())
    manifest = _state_dir(dest) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version":1', '"version":2'))
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try(max_tries=3))  # even a clear
    _assert_refused(refused, dest, "state format version 2", *jobs)
    assert handle.emulator.jobs_created == 3


def test_3_state_written_by_todays_version_is_read_by_this_one(tmp_path):
    # tests/fixtures/state_v1: written by the provider before issue 19 (format version 1); a new
    # format version must migrate it (and keep this test) or refuse it.
    root = tmp_path / ".res.jsonl.maas" / "dag.task.run1.m-1"
    shutil.copytree(FIXTURES / "state_v1" / "dag.task.run1.m-1", root)
    state = BatchJournal(_path(root)).load()
    assert len(state.shards) == 3 and state.input_key is None and state.clear_epoch == 1
    assert state.shards[ShardKey(0, 0)].status is ShardStatus.DONE
    assert state.by_job() == {"100000000000000002": state.shards[ShardKey(0, 1)]}
    assert state.shards[ShardKey(0, 2)].status is ShardStatus.CREATING and state.shards[ShardKey(0, 2)].clear_epoch == 1
    journal = BatchJournal(_path(root))  # this version goes on writing it, and reads it back
    state = journal.load()
    done = state.shards[ShardKey(0, 1)].but(status=ShardStatus.DONE)
    state.apply(done)
    journal.append(state, [done])
    journal.compact(state)
    journal.append(state, [], meta=True)
    assert BatchJournal(_path(root)).load().shards[ShardKey(0, 1)] == done


def _path(path):
    from airflow_provider_maas.storage import to_path

    return to_path(str(path))


def test_trigger_kwargs_and_events_of_todays_version_are_accepted():
    # tests/fixtures/trigger_v1.json (before the one wait policy and the one event type) and
    # trigger_v2.json (today's): what the triggers serialise (kept in the metadata database while a
    # task is deferred) and the events they fire. This version and the next must accept both.
    import importlib

    from airflow_provider_maas.triggers.events import JobsEvent, check_job_event
    from airflow_provider_maas.triggers.maas import BatchJobsEvent

    assert BatchJobsEvent is JobsEvent  # one event type, its old name still importable
    renamed = {"max_consecutive_errors": "max_consecutive_poll_errors"}  # the old name, accepted with a warning
    for version in ("v1", "v2"):
        fixture = json.loads((FIXTURES / f"trigger_{version}.json").read_text())
        for classpath, kwargs in fixture["triggers"]:
            module, _, name = classpath.rpartition(".")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trigger = getattr(importlib.import_module(module), name)(**kwargs)
            old = [str(w.message) for w in caught if "max_consecutive_errors is deprecated" in str(w.message)]
            assert len(old) == ("max_consecutive_errors" in kwargs), (version, caught)
            assert trigger.serialize()[1].items() >= {renamed.get(k, k): v for k, v in kwargs.items()}.items()
        events = fixture["events"]
        assert check_job_event(events["job_success"])["state"] == "JOB_STATE_SUCCEEDED"
        # One type reads both triggers' events, of either version.
        single = JobsEvent.from_event(events["job_success"])
        assert single.job_name == "4787616125208756224" and [o.state for o in single.ended] == ["JOB_STATE_SUCCEEDED"]
        ended = JobsEvent.from_event(events["batch_success"]).ended
        assert [o.job_name for o in ended] == ["4787616125208756224", "100000000000000002"]
        assert JobsEvent.from_event(events["batch_timeout"]).status == "timeout"
    v2 = json.loads((FIXTURES / "trigger_v2.json").read_text())["events"]
    with pytest.raises(MaaSJobFailedError, match="Internal error"):
        check_job_event(v2["job_failed"])
    with pytest.raises(AirflowSensorTimeout):
        check_job_event(v2["job_timeout"])
    assert JobsEvent.from_event(v2["batch_success"]).running == ("100000000000000003",)


# 5 ------------------------------------------------------------------------------------------------
class FailingWrites(MemoryFileSystem):
    """An object store that starts refusing writes under ``journal/`` (read-only, or full)."""

    failing = False

    def _open(self, path, mode="rb", *args, **kwargs):
        if self.failing and "w" in mode and "/journal/" in path:
            raise OSError(28, "No space left on device", path)
        return super()._open(path, mode, *args, **kwargs)


@pytest.fixture
def failing_fs():
    from airflow.sdk.io import attach
    from airflow.sdk.io.store import _STORE_CACHE

    fs = FailingWrites()  # fsspec caches instances: the one of an earlier test
    fs.failing = False
    _STORE_CACHE.pop("memory", None)
    attach("memory", fs=fs)
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    _STORE_CACHE.pop("memory", None)


@contextlib.contextmanager
def _journal_fails_after_creates(fs):
    create = MaaSHook.create_batch_job

    def answered_then_disk_full(self, file_name, display_name):
        job = create(self, file_name, display_name)
        fs.failing = True  # the job name came back; the journal write that records it fails
        return job

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MaaSHook, "create_batch_job", answered_then_disk_full)
            yield
    finally:
        fs.failing = False  # the storage is fixed before the retry (fsspec caches the instance: the next test's too)


def test_5_job_names_survive_a_failed_journal_write_and_the_retry_reattaches(emulator_factory, tmp_path, failing_fs):
    handle = emulator_factory(job_duration=0.3)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = "memory://bucket/out/res.jsonl"
    store = FakeStateStore()
    with _journal_fails_after_creates(failing_fs), pytest.raises(MaaSStateWriteError) as failed:  # retried
        batch_operator(source, dest).execute(_try(store))
    created = sorted(handle.emulator.jobs)
    assert created and any(name in str(failed.value) for name in created)
    assert "No space left on device" in str(failed.value) and "a retry reattaches" in str(failed.value)
    assert sorted(store.data[JOBS_KEY]["jobs"].values()) == created  # those answered later too

    context = _try(store)  # the automatic retry
    result = batch_operator(source, dest).execute(context)
    assert handle.emulator.jobs_created == 3  # reattached, nothing paid again
    assert context["ti"].xcom["summary"]["succeeded"] == 250
    assert store.data[JOBS_KEY] == {}
    with failing_fs.open(result.split("://", 1)[1], "rb") as out:
        assert len(out.read().splitlines()) == 250


def test_5_without_task_state_store_the_failed_write_names_the_jobs_and_nothing_is_paid_again(
    emulator_factory, tmp_path, failing_fs
):
    handle = emulator_factory(job_duration=0.3)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = "memory://bucket/out/res.jsonl"
    with _journal_fails_after_creates(failing_fs), pytest.raises(MaaSStateError) as failed:  # not retried
        batch_operator(source, dest).execute(_try())  # Airflow < 3.3: no second record
    created = sorted(handle.emulator.jobs)
    assert set(failed.value.job_names) <= set(created) and "start_over=True" in str(failed.value)
    assert "no usable answer" not in str(failed.value)
    with pytest.raises(MaaSJobCreationUncertainError) as refused:  # a retry refuses: its shards are "creating"
        batch_operator(source, dest).execute(_try())
    assert "no usable answer" not in str(refused.value) and "named the jobs it created" in str(refused.value)
    assert handle.emulator.jobs_created == len(created)


def test_5_a_marker_write_failing_while_a_create_answers_still_names_the_created_job(
    emulator_factory, tmp_path, failing_fs
):
    """The storage fills while a create is answered, and the write that fails first is another shard's
    "creating" markers (no create sent for it: that error alone says no job exists). The job created
    meanwhile is recorded on the way out, which fails too: without a second record, that error, naming
    the paid job, is the one raised (it was only logged), and the next try refuses rather than pay again."""
    handle = emulator_factory(job_duration=0.3)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = "memory://bucket/out/res.jsonl"
    create = MaaSHook.create_batch_job

    def answered_slowly_then_disk_full(self, file_name, display_name):
        job = create(self, file_name, display_name)
        failing_fs.failing = True  # the job exists; the next write fails, whichever shard's it is
        time.sleep(0.5)  # the other shards' uploads end first: their markers are the write that fails
        return job

    with pytest.MonkeyPatch.context() as patch, pytest.raises(MaaSStateError) as failed:
        patch.setattr(MaaSHook, "create_batch_job", answered_slowly_then_disk_full)
        batch_operator(source, dest).execute(_try())  # no second record (task_state_store, Variable)
    failing_fs.failing = False
    created = sorted(handle.emulator.jobs)
    assert created and sorted(failed.value.job_names) == created
    assert all(name in str(failed.value) for name in created) and "start_over=True" in str(failed.value)
    with pytest.raises(MaaSJobCreationUncertainError):  # their shards are "creating": refused, not paid again
        batch_operator(source, dest).execute(_try())
    assert handle.emulator.jobs_created == len(created)


def test_5_before_airflow_3_3_the_job_names_go_to_a_variable_and_the_retry_reattaches(
    emulator_factory, tmp_path, failing_fs, monkeypatch
):
    """Airflow 3.0-3.2 have no ``task_state_store``: the second record is an Airflow Variable of the
    task instance (``batch/record/task_record.py``); it is removed once the task succeeded."""
    variables = use_fake_variables(monkeypatch)
    handle = emulator_factory(job_duration=0.3)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = "memory://bucket/out/res.jsonl"
    with _journal_fails_after_creates(failing_fs), pytest.raises(MaaSStateWriteError) as failed:  # retried
        batch_operator(source, dest).execute(_try())  # no task_state_store in the context
    created = sorted(handle.emulator.jobs)
    # the write that fails may be the next shard's markers (then the names are kept on the way out)
    assert created and ("a retry reattaches" in str(failed.value) or "no create was sent" in str(failed.value))
    (name,) = variables.values
    assert name.startswith("maas_batch.") and "dag.task of run run1" in variables.descriptions[name]
    record = variables.get(name, deserialize_json=True)
    assert sorted(record[JOBS_KEY]["jobs"].values()) == created
    assert len(variables.values[name]) < 1_000  # compact: a few hundred bytes for 3 shards
    assert record[STATE_KEY]["seq"] >= 2  # and the newest object with "creating" markers

    context = _try()  # the automatic retry
    batch_operator(source, dest).execute(context)
    assert handle.emulator.jobs_created == 3  # reattached, nothing paid again
    assert context["ti"].xcom["summary"]["succeeded"] == 250
    assert variables.values == {}  # the task succeeded: its Variable is removed


# 7 ------------------------------------------------------------------------------------------------
def test_7_reuse_results_grown_between_tries_keeps_the_stored_batch(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    earlier = _earlier_results(tmp_path)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    _timed_out_try(handle, source, dest, store, reuse_results=str(earlier))
    assert handle.emulator.jobs_created == 1 + 2  # 50 reused, 200 sent in 2 shards

    time.sleep(1.0)  # the jobs end (the retry keeps try 1's deadline)
    with earlier.open("ab") as out:  # another run appended to it
        out.write(earlier.read_bytes().splitlines()[0].replace(b"Question 0", b"Question X") + b"\n")
    context = _try(store)
    batch_operator(source, dest, reuse_results=str(earlier), timeout=30).execute(context)
    assert handle.emulator.jobs_created == 3
    assert context["ti"].xcom["summary"]["reused"] == 50
    assert_in_input_order(source, dest)


# 8 ------------------------------------------------------------------------------------------------
def test_8_a_start_over_keeps_downloaded_answers_and_reuses_them(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 251), tmp_path / "res.jsonl"

    def final_write_fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError):
        patch.setattr("airflow_provider_maas.batch.run.write_outputs", final_write_fails)
        batch_operator(source, dest).execute(_try())
    assert handle.emulator.jobs_created == 3
    lines = source.read_bytes().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(b"Question 250", b"Question 250, edited")
    source.write_bytes(b"".join(lines))

    context = _try()
    batch_operator(source, dest).execute(context)
    assert handle.emulator.jobs_created == 4  # only the edited request was sent again
    summary = context["ti"].xcom["summary"]
    assert (summary["succeeded"], summary["reused"]) == (251, 250)
    assert_in_input_order(source, dest)


# 9 ------------------------------------------------------------------------------------------------
def test_9_two_task_instances_one_destination_the_second_refuses_before_uploading(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    _timed_out_try(handle, source, dest, None)
    uploads = sum(handle.emulator.uploads_by_name.values())
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try(map_index=1))  # a second mapped task, same destination
    message = str(refused.value)
    assert "dag.task.run1.m-1 keeps a batch state" in message and "this one is dag.task.run1.m1" in message
    assert "{{ run_id }}" in message and "map_index" in message
    assert sum(handle.emulator.uploads_by_name.values()) == uploads and handle.emulator.jobs_created == 3
    with pytest.raises(MaaSStateError):
        batch_operator(source, dest).execute(_try(run_id="backfill-1"))  # a backfill run, same destination


# 10 -----------------------------------------------------------------------------------------------
def test_10_jobs_gone_fail_naming_the_clear_and_a_clear_submits_them_again(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with pytest.raises(TaskDeferred):
        batch_operator(source, dest, deferrable=True).execute(_try())
    assert handle.emulator.jobs_created == 3
    handle.emulator.jobs.clear()  # the service forgot them: status answers 404

    with pytest.raises(MaaSJobGoneError) as gone:  # an automatic retry: no new job
        batch_operator(source, dest).execute(_try())
    assert "clear the task" in str(gone.value) and "shard_retries=2" in str(gone.value)
    assert handle.emulator.jobs_created == 3

    handle.emulator.config.job_duration = 0.2
    batch_operator(source, dest).execute(_try(max_tries=3))  # a person's clear: the shards go again
    assert handle.emulator.jobs_created == 6
    assert_in_input_order(source, dest)


def test_10_after_a_clear_a_deferrable_task_replaces_gone_jobs_before_deferring(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with pytest.raises(TaskDeferred):
        batch_operator(source, dest, deferrable=True).execute(_try())
    handle.emulator.jobs.clear()
    with pytest.raises(TaskDeferred) as deferred:  # a person's clear: the first 404 of an old job is final
        batch_operator(source, dest, deferrable=True, poll_interval=0.05).execute(_try(max_tries=3))
    assert handle.emulator.jobs_created == 6
    assert sorted(deferred.value.trigger.job_names) == sorted(handle.emulator.jobs)


# 11 -----------------------------------------------------------------------------------------------
def test_11_a_retry_after_wait_timeout_polls_before_judging_the_deadline(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.8)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    _timed_out_try(handle, source, dest, store)
    time.sleep(1.0)  # the jobs end meanwhile
    batch_operator(source, dest, timeout=None).execute(_try(store))  # the retry, setting removed
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# 12 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (
            lambda root: (root / "manifest.json").write_bytes(b'{"version":1,"finger'),
            "manifest.json line 1 is not valid JSON",
        ),
        (lambda root: (root / "manifest.json").write_bytes(b""), "manifest.json holds 0 JSON objects"),
        (
            lambda root: (root / "journal" / "0000000001.jsonl").write_bytes(b'{"meta":'),
            "0000000001.jsonl line 1 is not valid JSON",
        ),
        (
            lambda root: (root / "journal" / "0000000001.jsonl").write_bytes(
                b'{"r":0,"i":99,"status":"done"}\n{"end":1}\n'
            ),
            "0000000001.jsonl record 1 is not a shard record",
        ),
        (  # cut at a line boundary: still valid JSON lines, told by the missing seal
            lambda root: (root / "journal" / "0000000002.jsonl").write_bytes(
                (root / "journal" / "0000000002.jsonl").read_bytes().splitlines(keepends=True)[0]
            ),
            "0000000002.jsonl does not end with its seal",
        ),
    ],
)
def test_12_damaged_state_names_the_file_and_the_way_on(emulator_factory, tmp_path, damage, says):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    jobs = _timed_out_try(handle, source, dest, None)
    damage(_state_dir(dest))
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try())
    _assert_refused(refused, dest, says, *jobs)
    assert "JSONDecodeError" not in str(refused.value) and handle.emulator.jobs_created == 3


def test_12_a_missing_round_file_with_shards_to_upload_is_refused(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    earlier = _earlier_results(tmp_path)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    settings = {"reuse_results": str(earlier), "max_active_jobs": 1, "max_requests_per_file": 10}
    _timed_out_try(handle, source, dest, None, **settings)  # 20 shards: 1 running, 1 uploaded ahead
    (_state_dir(dest) / "round-0.jsonl").unlink()
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest, **settings).execute(_try())
    _assert_refused(refused, dest, "round-0.jsonl, the requests of round 0, is missing")
    assert handle.emulator.jobs_created == 2


def test_12_a_full_temporary_disk_under_reuse_results_says_where_and_what_to_do(emulator, tmp_path, monkeypatch):
    earlier = _earlier_results(tmp_path)
    connect = sqlite3.connect

    def tiny_disk(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.execute("PRAGMA max_page_count=3")  # SQLite then answers "database or disk is full"
        return db

    monkeypatch.setattr(matching.sqlite3, "connect", tiny_disk)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with pytest.raises(OSError) as full:
        batch_operator(source, dest, reuse_results=str(earlier)).execute(_try())
    message = str(full.value)
    assert full.value.errno == 28 and "database or disk is full" in message
    assert "maas-answers-" in message and "TMPDIR" in message
    assert emulator.emulator.jobs_created == 1  # the earlier run only


# 4 ------------------------------------------------------------------------------------------------
def test_4_two_live_tries_in_two_processes_only_one_creates(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.5)
    shards = 10
    source, dest = write_requests(tmp_path / "r.jsonl", shards), tmp_path / "res.jsonl"
    store = tmp_path / "store.json"
    settings = ["max_requests_per_file=1", "max_active_jobs=2"]

    def start(name: str) -> subprocess.Popen:
        args = [str(source), str(dest), str(store), str(tmp_path / f"{name}.json"), *settings]
        return subprocess.Popen([sys.executable, str(ROOT / "tests" / "state_try.py"), *args], cwd=ROOT)

    first = start("first")  # a try the scheduler will call a zombie: it keeps running
    deadline = time.monotonic() + 60
    while handle.emulator.jobs_created < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = start("second")  # its retry (or 'airflow tasks test' on the live run)
    assert first.wait(120) == 0 and second.wait(120) == 0
    outcomes = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("first", "second")}
    assert "Another try of this task instance took over" in outcomes["first"]["message"], outcomes
    assert handle.emulator.jobs_created <= shards, outcomes

    if outcomes["second"]["outcome"] != "success":  # it found the first try's create in flight
        assert outcomes["second"]["outcome"] == "MaaSJobCreationUncertainError", outcomes
        context = _try(FileStateStore(store))  # the next automatic retry reattaches to what was kept
        try:
            batch_operator(source, dest, max_requests_per_file=1, max_active_jobs=2).execute(context)
        except MaaSJobCreationUncertainError:  # a marker whose create was never sent: a person clears
            batch_operator(source, dest, max_requests_per_file=1).execute(_try(FileStateStore(store), max_tries=3))
    assert handle.emulator.jobs_created == shards  # one job per shard, whoever created it
    assert_in_input_order(source, dest)


# The state-chaos test ------------------------------------------------------------------------------
class Chaos:
    """Damages the batch state at scheduled points: ``writes[(try, n)]`` acts just before the n-th state
    write of that try, ``kill_at_sleep[try]`` kills the try at its n-th wait between polls (no transfer
    in flight). Damage is backed up, so a person can repair it after the task stopped on it."""

    def __init__(self, writes: dict, kill_at_sleep: dict, between: dict) -> None:
        self.writes, self.kill_at_sleep, self.between = writes, kill_at_sleep, between
        self.try_number = self.write_count = self.sleep_count = 0
        self.backups: list[tuple] = []

    def next_try(self, root) -> None:
        self.try_number += 1
        self.write_count = self.sleep_count = 0
        action = self.between.get(self.try_number)
        if action and root.exists():
            self._damage(action, root, middle=True)

    def repair(self) -> None:
        for path, data in self.backups:
            path.write_bytes(data)
        self.backups.clear()

    def before_write(self, journal) -> None:
        self.write_count += 1
        action = self.writes.get((self.try_number, self.write_count))
        if action == "unwritable":
            raise OSError(30, "Read-only file system")
        if action:
            self._damage(action, _local(journal.root), middle=False)

    def _damage(self, action: str, root, *, middle: bool) -> None:
        objects = sorted(p for p in (root / "journal").glob("*.jsonl") if not p.name.startswith("."))
        # Between tries, the object before the latest (a deleted latest one leaves no trace) or the manifest
        target = objects[-2] if middle and len(objects) > 1 else objects[-1] if not middle else root / "manifest.json"
        data = target.read_bytes()
        self.backups.append((target, data))
        if action == "delete":
            target.unlink()
        elif action == "truncate":
            target.write_bytes(data[: len(data) // 2])
        else:  # duplicate: a copy under the next number, as a retried upload may leave
            self.backups.pop()
            if target.parent.name == "journal":
                (target.parent / f"{int(objects[-1].stem) + 1:010d}.jsonl").write_bytes(objects[-1].read_bytes())

    def sleep(self, seconds: float) -> None:
        self.sleep_count += 1
        if self.kill_at_sleep.get(self.try_number) == self.sleep_count:
            raise SystemExit(f"try {self.try_number} killed while waiting")
        time.sleep(seconds)


def _local(path):
    from pathlib import Path

    return Path(str(path.path))


CHAOS_SCHEDULE = {
    # during a try: just before its n-th state write
    "writes": {(1, 3): "unwritable", (2, 2): "truncate", (6, 3): "delete", (7, 4): "unwritable"},
    # during a try: killed at its n-th wait between polls
    "kill_at_sleep": {2: 2, 4: 2, 6: 3},
    # between tries
    "between": {3: "truncate", 5: "delete", 6: "duplicate", 8: "truncate"},
}


def test_state_chaos_never_pays_twice_and_loses_no_answer(emulator_factory, tmp_path, monkeypatch):
    import types

    from airflow_provider_maas.batch.record import journal as journal_module
    from airflow_provider_maas.operators import batch as _batch

    handle = emulator_factory(job_duration=0.4)
    shards = 12
    source, dest = write_requests(tmp_path / "r.jsonl", shards), tmp_path / "res.jsonl"
    store, chaos = FakeStateStore(), Chaos(**CHAOS_SCHEDULE)
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 3)  # snapshots and compaction happen too
    write = journal_module.BatchJournal._write

    def damaged_write(self, path, data):
        chaos.before_write(self)
        write(self, path, data)

    monkeypatch.setattr(journal_module.BatchJournal, "_write", damaged_write)
    monkeypatch.setattr(_batch, "time", types.SimpleNamespace(time=time.time, sleep=chaos.sleep))
    parts_seen: set[str] = set()
    outcomes = []
    for _ in range(12):
        chaos.next_try(_state_dir(dest))
        before = handle.emulator.jobs_created
        try:
            op = batch_operator(source, dest, max_requests_per_file=1, max_active_jobs=4, request_retries=0)
            op.execute(_try(store))
            outcomes.append("success")
            break
        except MaaSStateError as err:  # fail closed: nothing created by this try
            outcomes.append("refused")
            assert handle.emulator.jobs_created == before, err
            chaos.repair()  # a person restores the damaged object from a backup
        except (MaaSStateWriteError, SystemExit) as err:  # retried automatically
            outcomes.append(type(err).__name__)
        assert handle.emulator.jobs_created <= shards  # never paid twice, whatever happened
        state_dir = _state_dir(dest)
        for folder in ("parts", "kept"):
            parts_seen |= {p.name for p in (state_dir / folder).rglob("*.jsonl")} if state_dir.exists() else set()
    assert outcomes[-1] == "success" and outcomes.count("refused") >= 2, outcomes
    print("chaos outcomes:", outcomes)
    assert handle.emulator.jobs_created == shards
    assert parts_seen  # answers were downloaded along the way; every one of them is in the results
    records = assert_in_input_order(source, dest)
    assert all(record.succeeded for record in records)


def test_9_two_task_instances_starting_at_once_both_stop_and_neither_blocks_a_fixed_destination(
    emulator, tmp_path, monkeypatch
):
    from airflow_provider_maas.batch import resume

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    start_over = resume._start_over

    def other_instance_planned_meanwhile(*args, **kwargs):
        state = start_over(*args, **kwargs)
        other = _state_dir(dest, "dag.task.run1.m1")
        other.mkdir(parents=True)
        shutil.copy(_state_dir(dest) / "manifest.json", other / "manifest.json")
        return state

    with pytest.MonkeyPatch.context() as patch, pytest.raises(MaaSStateError, match=r"dag\.task\.run1\.m1 keeps"):
        patch.setattr(resume, "_start_over", other_instance_planned_meanwhile)
        batch_operator(source, dest).execute(_try(map_index=-1))
    assert not (_state_dir(dest) / "manifest.json").exists()  # its fresh plan is gone: it blocks no one
    assert emulator.emulator.jobs_created == 0 and not emulator.emulator.uploads_by_name
    shutil.rmtree(_state_dir(dest, "dag.task.run1.m1"))  # the other one stopped the same way
    batch_operator(source, dest).execute(_try())
    assert_in_input_order(source, dest)


def test_before_airflow_3_3_an_automatic_retry_after_the_batch_finished_pays_nothing_again(
    emulator_factory, tmp_path, monkeypatch
):
    """The Variable is removed once the results are written; if Airflow then does not record the
    success (the worker lost right after), the retry finds the destination's record (``.<name>.origin.json``)
    naming this task instance and this clear epoch: nothing is paid again. A clear runs it again."""
    variables = use_fake_variables(monkeypatch)
    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    batch_operator(source, dest).execute(_try())
    assert handle.emulator.jobs_created == 3 and variables.values == {}
    assert batch_operator(source, dest).execute(_try()) == dest.as_uri()  # the automatic retry
    assert handle.emulator.jobs_created == 3
    batch_operator(source, dest).execute(_try(max_tries=3))  # a person's clear runs the batch again
    assert handle.emulator.jobs_created == 6
    assert_in_input_order(source, dest)


def test_before_airflow_3_3_the_batch_record_is_a_real_variable_removed_on_success(
    emulator_factory, tmp_path, monkeypatch
):
    """The real Task SDK path: ``dag.test()`` runs the single-task example with no ``task_state_store``
    (Airflow 3.0-3.2 have none; on 3.3 it is removed here): the batch operator's record goes through
    ``Variable.set`` and the Execution API into the metadata database, is read back, and is deleted
    once the results are written."""
    from airflow.models.variable import Variable as VariableModel

    from airflow_provider_maas.batch.record.task_record import VariableStateStore
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
    from tests.test_example_dags import _load_dag

    emulator_factory(job_duration=0.3)
    dag = _load_dag("example_maas_batch_single_task", monkeypatch, tmp_path)
    dag.task_dict["predict"].deferrable = False
    real_execute, real_set = MaaSBatchPredictionOperator.execute, VariableStateStore.set
    written: dict[str, list] = {}

    def execute_before_3_3(self, context):
        context.pop("task_state_store", None)
        return real_execute(self, context)

    def spied_set(self, key, value):
        real_set(self, key, value)  # reads the Variable back: raises if it did not land
        written.setdefault(self.name, []).append(VariableModel.get(self.name, deserialize_json=True))

    monkeypatch.setattr(MaaSBatchPredictionOperator, "execute", execute_before_3_3)
    monkeypatch.setattr(VariableStateStore, "set", spied_set)
    run = dag.test()
    assert run.state == "success"
    (name,) = written
    assert name.startswith("maas_batch.") and max(v[STATE_KEY].get("seq", 0) for v in written[name]) >= 2, written
    assert written[name][-1][STATE_KEY]["finished"] is True
    assert VariableModel.get(name, default_var=None) is None  # removed once the results were written


def test_after_a_first_error_the_one_raised_names_every_job_created_and_not_recorded():
    """``write_failures.after_first_error``: one error with the text and the jobs of both, of the type
    that stops the task if either does; a first error that is not the provider's keeps its course."""
    from airflow_provider_maas.batch.record.ownership import LeaseLost
    from airflow_provider_maas.batch.record.write_failures import StateRemoved, after_first_error

    markers = MaaSStateWriteError("markers of shard 2 not stored; no create was sent for them")
    assert after_first_error(markers, MaaSStateWriteError("no job created is missing")) is None  # logged only
    lost_b = MaaSStateError("job B not recorded", job_names=["B"])
    kept_b = MaaSStateWriteError("job B kept in task_state_store", job_names=["B"])
    raised = after_first_error(markers, lost_b)  # the first said no job exists for shard 2: B is named
    assert type(raised) is MaaSStateError and raised.job_names == ["B"]
    assert "job B not recorded" in str(raised) and "no create was sent" in str(raised)
    raised = after_first_error(markers, kept_b)
    assert type(raised) is MaaSStateWriteError and raised.job_names == ["B"] and "no create was sent" in str(raised)
    for other in (KeyboardInterrupt(), TimeoutError("execution_timeout"), None):  # keeps its own course
        assert after_first_error(other, lost_b) is None
    removed = StateRemoved("the state was removed")
    assert after_first_error(TimeoutError(), removed) is removed  # as before: it names every job
    lost_a = MaaSStateError("job A not recorded", job_names=["A", "A"])
    raised = after_first_error(lost_a, kept_b)  # A's error stops the task (no retry); B is named too
    assert type(raised) is MaaSStateError and raised.job_names == ["B", "A"]
    assert "job A not recorded" in str(raised) and "job B kept" in str(raised)
    raised = after_first_error(MaaSStateWriteError("job A kept", job_names=["A"]), lost_b)
    assert type(raised) is MaaSStateError and raised.job_names == ["B", "A"]
    raised = after_first_error(MaaSStateWriteError("job A kept", job_names=["A"]), kept_b)  # a retry reattaches
    assert type(raised) is MaaSStateWriteError and raised.job_names == ["B", "A"]
    for taken in (LeaseLost("another try took the lease"), StateRemoved("the state was removed")):
        raised = after_first_error(taken, lost_b)  # what happened to the state stays the error's type
        assert type(raised) is type(taken) and raised.job_names == ["B"] and "job B" in str(raised)
    uncertain = MaaSJobCreationUncertainError("the create of shard 3 may have reached the service")
    raised = after_first_error(uncertain, kept_b)  # it stops the task: not turned into a retried error
    assert type(raised) is MaaSStateError and "shard 3" in str(raised) and raised.job_names == ["B"]
