"""MaaSBatchPredictionOperator against the emulator over loopback HTTP: scale, retries, failures.

The big run goes through real Airflow (``dag.test()``: the real trigger, its real event, the real
``execute_complete``, the real task state store); the others call the operator with a stand-in
context so a "retry" or a "clear" can be staged exactly.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import requests

from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.exceptions import (
    MaaSInputError,
    MaaSJobCreationUncertainError,
    MaaSJobFailedError,
    MaaSTimeoutError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.compat import TaskDeferred
from tests.conftest import API_KEY, ROOT
from tests.helpers import FakeStateStore, assert_in_input_order, batch_operator, make_context, write_requests
from tests.test_storage import memfs  # noqa: F401  (fixture)

SCALE_DAG = ROOT / "tests" / "dags" / "maas_batch_scale.py"


def _emulator_state(handle) -> dict:
    response = requests.get(f"{handle.base_url}/_emulator/state", headers={"Authorization": f"Bearer {API_KEY}"})
    response.raise_for_status()
    return response.json()


_operator = batch_operator


def _state_values(run_id: str) -> list[str]:
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [row.value for row in session.query(TaskStateStoreModel).filter(TaskStateStoreModel.run_id == run_id)]


def test_300_shards_deferred_one_job_each_in_order_few_resumes(emulator_factory, tmp_path, monkeypatch):
    handle = emulator_factory(job_duration=0.5, shuffle_results=True, normalise_requests=True)
    source = write_requests(tmp_path / "requests.jsonl", 300)
    dest = tmp_path / "out" / "results.jsonl"
    shards, max_active = 300, 20
    monkeypatch.setenv("MAAS_SCALE_REQUESTS_PER_FILE", "1")
    monkeypatch.setenv("MAAS_SCALE_MAX_ACTIVE_JOBS", str(max_active))
    spec = importlib.util.spec_from_file_location("maas_batch_scale_under_test", SCALE_DAG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    run = module.dag.test(run_conf={"source": str(source), "destination": str(dest)})

    assert run.state == "success"
    assert _emulator_state(handle)["jobs_created"] == shards  # one job per shard
    assert_in_input_order(source, dest)
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        (value,) = (
            session.query(XComModel.value).filter(XComModel.run_id == run.run_id, XComModel.key == "summary").one()
        )
    summary = value if isinstance(value, dict) else json.loads(value)
    assert (summary["requests"], summary["succeeded"], summary["shards"], summary["jobs"]) == (300, 300, 300, 300)
    assert 1 <= summary["resumes"] <= 2 * shards / max_active + 3, summary
    values = _state_values(run.run_id)
    assert values and max(len(v) for v in values) < 1024  # only the state's location and version
    assert not list((tmp_path / "out").glob(".results.jsonl.maas*"))  # the state is removed once done


def _cleared(context: dict, max_tries: int) -> dict:
    """The context of a try whose ``max_tries`` is ``max_tries`` (Airflow changes it on a clear only)."""
    context["ti"].max_tries = max_tries
    return context


def test_lost_create_answer_refuses_to_create_again_until_cleared(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:lost-500"])
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    with pytest.raises(MaaSJobCreationUncertainError):
        _operator(source, dest).execute(_cleared(make_context(store), 1))
    assert handle.emulator.jobs_created == 1  # the service did create it

    with pytest.raises(MaaSJobCreationUncertainError) as refused:  # an automatic retry: same clear epoch
        _operator(source, dest).execute(_cleared(make_context(store), 1))
    message = str(refused.value)
    assert "shard 0" in message and "dag.task.run1.m-1.s00000." in message and "dag/task/run1#0" in message
    assert handle.emulator.jobs_created == 1

    _operator(source, dest).execute(_cleared(make_context(store), 3))  # a person cleared the task
    assert handle.emulator.jobs_created == 2
    assert_in_input_order(source, dest)


def test_crash_between_marker_and_create_is_refused_on_retry(emulator, tmp_path, monkeypatch):
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"

    def killed(self, file_name, display_name):
        raise SystemExit("worker killed while the create was in flight")

    create = MaaSHook.create_batch_job
    monkeypatch.setattr(MaaSHook, "create_batch_job", killed)
    with pytest.raises(SystemExit):
        _operator(source, dest).execute(make_context())
    monkeypatch.setattr(MaaSHook, "create_batch_job", create)  # the connection stays (undo() would remove it)
    state = BatchJournal.for_task(dest, make_context()).load()
    (record,) = state.shards.values()
    assert record.status is ShardStatus.CREATING  # stored before the create was sent
    with pytest.raises(MaaSJobCreationUncertainError, match="shard 0"):
        _operator(source, dest).execute(make_context())  # no task_state_store (Airflow 3.0): found all the same
    assert emulator.emulator.jobs_created == 0


def test_429_on_create_leaves_the_shard_for_the_next_round(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:5:429"], retry_after=0.0)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = tmp_path / "results.jsonl"
    context = make_context()
    _operator(source, dest, max_parallel_transfers=1).execute(context)
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)
    assert context["ti"].xcom["summary"]["jobs"] == 3  # the refused create is not an attempt


def test_429_on_a_download_leaves_the_shard_to_be_polled_and_downloaded_again(emulator_factory, tmp_path):
    # The results metadata answers 429 five times in a row: the hook's five attempts for the first
    # shard's download all fail (MaaSRateLimitError). The shard must be polled and downloaded again,
    # not left aside until the deadline, and no job is created twice.
    handle = emulator_factory(faults=["metadata:5:429"], retry_after=0.0, job_duration=0.1)
    source = write_requests(tmp_path / "r.jsonl", 150)
    dest = tmp_path / "results.jsonl"
    context = make_context()
    _operator(source, dest, max_parallel_transfers=1, timeout=60).execute(context)
    assert handle.emulator.jobs_created == 2
    assert_in_input_order(source, dest)
    assert context["ti"].xcom["summary"]["succeeded"] == 150


def test_every_job_failed_fails_the_task_with_the_service_error_per_request(emulator_factory, tmp_path):
    handle = emulator_factory(final_state="JOB_STATE_FAILED", job_duration=0.1)
    source = write_requests(tmp_path / "r.jsonl", 150)
    dest = tmp_path / "results.jsonl"
    context = make_context()
    with pytest.raises(MaaSJobFailedError, match=r"No request succeeded: 2 of 2 shards failed") as failed:
        _operator(source, dest, shard_retries=1).execute(context)
    assert "Internal error occurred during batch prediction (emulated)." in str(failed.value)
    assert handle.emulator.jobs_created == 4  # each shard: first job and one retry
    records = assert_in_input_order(source, dest)
    assert {r.status for r in records} == {
        f"job {name} ended in JOB_STATE_FAILED: Internal error occurred during batch prediction (emulated). (code 13)"
        for name in {r.status.split()[1] for r in records}
    }
    assert len((tmp_path / "results.failed.jsonl").read_bytes().splitlines()) == 150
    summary = context["ti"].xcom["summary"]
    assert (summary["failed"], summary["failed_shards"], summary["succeeded"]) == (150, 2, 0)
    assert all("code 13" in reason for reason in summary["shard_errors"])


def test_results_gone_creates_a_new_job_for_the_shard(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["metadata:1:results-gone"])
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"
    _operator(source, dest, shard_retries=1).execute(make_context())
    assert handle.emulator.jobs_created == 2
    assert_in_input_order(source, dest)


def test_results_answering_404_three_times_in_a_row_count_as_gone(emulator_factory, tmp_path):
    # One 404 is fetched again (tests/test_adversarial.py); three in a row mean the results are
    # gone, as a service answering 404 after the 7 days would: one new job for the shard.
    handle = emulator_factory(faults=["metadata:3:404"])
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"
    _operator(source, dest, shard_retries=1).execute(make_context())
    assert handle.emulator.jobs_created == 2
    assert_in_input_order(source, dest)


def test_retry_without_task_state_store_reattaches_and_polls_before_deferring(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "r.jsonl", 150)
    dest = tmp_path / "results.jsonl"
    op = _operator(source, dest, deferrable=True, max_consecutive_poll_errors=7)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())  # Airflow 3.0: no task_state_store
    trigger = info.value.trigger
    assert trigger.max_consecutive_poll_errors == 7
    assert trigger.fire_after is None  # nothing pending: resume when every job ended
    assert len(json.dumps(trigger.serialize()[1])) < 1024
    for name in trigger.job_names:  # the jobs end while the worker is gone
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    retry = _operator(source, dest, deferrable=True)
    assert retry.execute(make_context()) == dest.as_uri()  # it saw them ended: no deferral
    assert handle.emulator.jobs_created == 2
    assert_in_input_order(source, dest)


def test_task_state_store_holds_only_location_and_version(emulator_factory, tmp_path):
    emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):
        _operator(source, dest, deferrable=True, max_requests_per_file=1).execute(make_context(store))
    (value,) = store.data.values()
    # "open" until the results are written (issue 19: a pointer whose state is gone stops the task);
    # "seq": the newest journal object with "creating" markers (a journal ending before it is refused)
    assert isinstance(value.pop("seq"), int)
    assert value == {"location": BatchJournal.for_task(dest, make_context()).uri, "version": 1, "open": True}


def test_destination_checked_before_anything_is_paid(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 10)
    (tmp_path / "results.jsonl").mkdir()
    with pytest.raises(MaaSInputError, match="directory"):
        _operator(source, tmp_path / "results.jsonl").execute(make_context())
    assert _emulator_state(emulator)["uploads_by_name"] == {}
    assert emulator.emulator.jobs_created == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_active_jobs", 0), ("max_parallel_transfers", 0), ("max_requests_per_file", 101), ("shard_retries", -1)],
)
def test_bad_settings_are_refused_when_the_dag_is_parsed(tmp_path, name, value):
    with pytest.raises(MaaSInputError, match=name):
        _operator(tmp_path / "r.jsonl", tmp_path / "o.jsonl", **{name: value})


def test_timeout_is_the_sensors_name_and_wait_timeout_still_works_with_a_deprecation_warning(tmp_path):
    from airflow_provider_maas._compat import AirflowProviderDeprecationWarning

    source, dest = tmp_path / "r.jsonl", tmp_path / "o.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name: no warning
        assert _operator(source, dest, timeout=30).timeout == 30
    with pytest.warns(AirflowProviderDeprecationWarning, match="wait_timeout is deprecated: use timeout"):
        old = _operator(source, dest, wait_timeout=30)
    assert old.timeout == 30 and not hasattr(old, "wait_timeout")
    with pytest.raises(MaaSInputError, match="wait_timeout is the old name of timeout: give timeout only"):
        _operator(source, dest, timeout=30, wait_timeout=30)


def test_object_store_destination_state_and_results(emulator, tmp_path, request):
    store_fs = request.getfixturevalue("memfs")
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = "memory://bucket/out/results.jsonl"
    context = make_context()
    assert _operator(source, dest).execute(context) == dest
    local = tmp_path / "results.jsonl"
    local.write_bytes(store_fs.cat("bucket/out/results.jsonl"))
    assert_in_input_order(source, local)
    assert sorted(store_fs.store) == [  # the record of the ENDPOINT that wrote the results; none failed: no failed file
        "/bucket/out/.results.jsonl.origin.json",
        "/bucket/out/results.jsonl",
    ]
    assert context["ti"].xcom["summary"]["failed_uri"] is None
    assert emulator.emulator.jobs_created == 3


def test_failed_shards_stay_failed_on_retry_and_run_again_once_cleared(emulator_factory, tmp_path):
    handle = emulator_factory(final_state="JOB_STATE_FAILED", job_duration=0.1)
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"
    with pytest.raises(MaaSJobFailedError, match="No request succeeded"):
        _operator(source, dest, shard_retries=0).execute(_cleared(make_context(), 1))
    with pytest.raises(MaaSJobFailedError, match="No request succeeded"):  # an automatic retry pays nothing
        _operator(source, dest, shard_retries=0).execute(_cleared(make_context(), 1))
    assert handle.emulator.jobs_created == 1
    handle.emulator.config.final_state = "JOB_STATE_SUCCEEDED"
    _operator(source, dest, shard_retries=0).execute(_cleared(make_context(), 2))  # a person cleared it
    assert handle.emulator.jobs_created == 2
    assert all(r.succeeded for r in assert_in_input_order(source, dest))


def test_wait_timeout_reached_in_the_trigger_fails_naming_the_jobs(emulator_factory, tmp_path):
    import asyncio

    emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"
    op = _operator(source, dest, deferrable=True, timeout=0.5)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())
    trigger = info.value.trigger
    event = asyncio.run(anext(trigger.run())).payload
    assert event["status"] == "timeout"
    with pytest.raises(MaaSTimeoutError, match=trigger.job_names[0]):
        op.execute_complete(make_context(), event)


def test_next_shards_are_uploaded_before_deferring_and_created_at_once_on_resume(emulator_factory, tmp_path):
    import asyncio

    handle = emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "r.jsonl", 250)  # 3 shards
    dest = tmp_path / "results.jsonl"
    op = _operator(source, dest, deferrable=True, max_active_jobs=2)
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())
    assert info.value.trigger.fire_after == 1
    assert len(_emulator_state(handle)["uploads_by_name"]) == 3  # the pending shard is uploaded ahead
    assert handle.emulator.jobs_created == 2
    pending = BatchJournal.for_task(dest, make_context()).load().shards
    assert [r.status for r in pending.values()].count(ShardStatus.PENDING) == 1
    for name in info.value.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    uploads = sum(1 for e in handle.emulator.access_log if e["method"] == "POST" and "/files" in e["path_qs"])
    event = asyncio.run(anext(info.value.trigger.run())).payload
    with pytest.raises(TaskDeferred):
        op.execute_complete(make_context(), event)
    log = handle.emulator.access_log
    assert sum(1 for e in log if e["method"] == "POST" and "/files" in e["path_qs"]) == uploads  # not again
    assert handle.emulator.jobs_created == 3
