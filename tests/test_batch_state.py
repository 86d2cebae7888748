"""The batch state model and its journal: typed records that round-trip, O(1) bytes per shard
event, bounded replay, and a marker that survives a crash before the create. Local files and an
object store (``memory://``, where nothing can be appended). Then what a try decides from a state:
take it over or refuse, when to resume, when to give up, whether the task fails."""

from __future__ import annotations

import json
import re

import pytest

from airflow_provider_maas.batch.answers.summary import check_outcome
from airflow_provider_maas.batch.inputs.shards import ShardPlan
from airflow_provider_maas.batch.int_settings import check_limits
from airflow_provider_maas.batch.pacing import check_deadline, fire_after
from airflow_provider_maas.batch.record import journal as journal_module
from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.record.state import (
    STATE_VERSION,
    BatchState,
    Round,
    ShardKey,
    ShardRecord,
    ShardStatus,
    fingerprint,
)
from airflow_provider_maas.batch.record.state_objects import StateDamaged
from airflow_provider_maas.batch.resume import refuse_abandoning_jobs, take_over
from airflow_provider_maas.batch.settings import reuse_paths
from airflow_provider_maas.exceptions import (
    MaaSInputError,
    MaaSJobCreationUncertainError,
    MaaSJobFailedError,
    MaaSTimeoutError,
)
from airflow_provider_maas.storage import to_path
from tests.helpers import batch_settings, make_context
from tests.test_storage import memfs  # noqa: F401  (fixture)


def _plans(count: int) -> tuple[ShardPlan, ...]:
    return tuple(
        ShardPlan(i, i * 100 + 1, i * 100 + 100, i * 9000, (i + 1) * 9000, 100, 9000, f"{i:064x}", True)
        for i in range(count)
    )


def _state(count: int) -> BatchState:
    plans = _plans(count)
    return BatchState(fingerprint(plans), "dag.task.run.m-1", [Round(0, plans)], deadline=123.5, clear_epoch=2)


@pytest.fixture(params=["file", "memory"])
def root(request, tmp_path):
    if request.param == "memory":
        request.getfixturevalue("memfs")
        return to_path("memory://bucket/out/.results.jsonl.maas/dag.task.run.m-1")
    return to_path(str(tmp_path / ".results.jsonl.maas" / "dag.task.run.m-1"))


def _files(root) -> list[str]:
    return sorted(str(p.path)[len(str(root.path)) + 1 :] for p in root.rglob("*") if p.is_file())


def test_records_round_trip_for_every_status():
    key = ShardKey(0, 7)
    for status in ShardStatus:
        record = ShardRecord(key, status, 2, "f.jsonl", "dag/task/run#7", "123", 4, "JOB_STATE_FAILED", "boom")
        assert ShardRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert ShardRecord.from_json(ShardRecord(key).to_json()) == ShardRecord(key)
    # The clear epoch is stored under its name of earlier releases, so their states still resume.
    stored = ShardRecord(key, ShardStatus.CREATING, 1, "f.jsonl", "d#7", clear_epoch=3).to_json()
    assert stored["clear_round"] == 3 and "clear_epoch" not in stored
    assert ShardRecord.from_json(stored).clear_epoch == 3
    assert sorted([ShardKey(1, 0), ShardKey(0, 2), ShardKey(0, 1)]) == [ShardKey(0, 1), ShardKey(0, 2), ShardKey(1, 0)]
    round_ = Round(0, _plans(3))
    assert Round.from_json(json.loads(json.dumps(round_.to_json()))) == round_


def test_fingerprint_changes_with_the_input():
    plans = _plans(3)
    assert fingerprint(plans) == fingerprint(list(plans))
    changed = (*plans[:2], ShardPlan(2, 201, 300, 18000, 27000, 100, 9000, "f" * 64, True))
    assert fingerprint(changed) != fingerprint(plans)


def test_journal_replays_what_was_appended(root):
    journal = BatchJournal(root)
    assert journal.load() is None
    state = _state(5)
    journal.create(state)
    first = state.shards[ShardKey(0, 0)].but(status=ShardStatus.RUNNING, job_name="111", attempts=1)
    second = state.shards[ShardKey(0, 1)].but(status=ShardStatus.FAILED, error="job 2 ended in JOB_STATE_FAILED")
    for record in (first, second):
        state.apply(record)
    journal.append(state, [first, second])
    state.resumes = 3
    journal.append(state, [], meta=True)

    again = BatchJournal(root).load()
    assert again == state
    assert (again.deadline, again.clear_epoch, again.resumes) == (123.5, 2, 3)
    assert again.by_job() == {"111": first}


def test_marker_written_before_a_crash_is_found_by_the_next_try(root):
    journal = BatchJournal(root)
    state = _state(2)
    journal.create(state)
    marker = state.shards[ShardKey(0, 1)].but(
        status=ShardStatus.CREATING, file_name="f1.jsonl", display_name="dag/task/run#1", clear_epoch=2, attempts=1
    )
    state.apply(marker)
    journal.append(state, [marker])
    del journal, state  # the process dies here, before the create is sent or answered

    replayed = BatchJournal(root).load()
    assert list(replayed.with_status(ShardStatus.CREATING)) == [marker]


def test_bytes_per_event_are_constant_and_replay_is_bounded(root, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 8)
    shards = 1000
    journal = BatchJournal(root)
    state = _state(shards)
    journal.create(state)
    sizes = []
    for index in range(shards):  # one event per flush: the worst case
        record = state.shards[ShardKey(0, index)].but(status=ShardStatus.RUNNING, job_name=f"{10**17 + index}")
        state.apply(record)
        before = journal.bytes_written
        journal.append(state, [record])
        sizes.append(journal.bytes_written - before)
    plain = [s for s in sizes if s < 1000]  # flushes that did not compact
    assert max(plain) < 200
    snapshots = len(sizes) - len(plain)
    assert snapshots <= shards / (shards // 10) + 1  # a snapshot every tenth of the shards: amortised O(1)
    journal_objects = [name for name in _files(root) if name.startswith("journal/")]
    assert len(journal_objects) <= shards // 10
    assert BatchJournal(root).load() == state


def test_replay_ignores_journal_objects_a_snapshot_already_covers(root):
    journal = BatchJournal(root)
    state = _state(3)
    journal.create(state)
    old = state.shards[ShardKey(0, 0)].but(status=ShardStatus.RUNNING, job_name="1")
    state.apply(old)
    journal.append(state, [old])
    stale = (root / "journal" / f"{journal.seq:010d}.jsonl").read_bytes()
    done = old.but(status=ShardStatus.DONE)
    state.apply(done)
    journal.append(state, [done])
    journal.compact(state)
    # A crash between the snapshot and the removal of what it covers leaves old objects behind.
    with (root / "journal" / f"{1:010d}.jsonl").open("wb") as handle:
        handle.write(stale)
    assert BatchJournal(root).load().shards[ShardKey(0, 0)] == done


def test_other_format_version_is_refused_not_ignored(root):
    # Issue 19 finding 3: a state of another format version used to be ignored (start over, pay again).
    journal = BatchJournal(root)
    journal.create(_state(1))
    with (root / "manifest.json").open("rb") as handle:
        manifest = json.loads(handle.read())
    manifest["version"] = STATE_VERSION + 1
    with (root / "manifest.json").open("wb") as handle:
        handle.write(json.dumps(manifest).encode())
    with pytest.raises(StateDamaged, match=f"state format version {STATE_VERSION + 1}; this provider reads version"):
        BatchJournal(root).load()


def test_remove_leaves_nothing(root):
    journal = BatchJournal(root)
    journal.create(_state(2))
    journal.remove()
    assert not root.exists()
    assert not root.parent.exists()


def test_location_is_deterministic_per_task_instance(tmp_path):
    dest = tmp_path / "out" / "results.jsonl"
    one = BatchJournal.for_task(str(dest), make_context(run_id="r1"))
    assert one.uri == BatchJournal.for_task(str(dest), make_context(run_id="r1")).uri
    assert one.uri.endswith("/out/.results.jsonl.maas/dag.task.r1.m-1")
    assert BatchJournal.for_task(str(dest), make_context(run_id="r1", map_index=3)).uri != one.uri
    assert BatchJournal.for_task(str(dest), make_context(run_id="r2")).uri != one.uri


def test_manifest_of_10000_shards_is_written_once_and_state_record_stays_small(tmp_path):
    journal = BatchJournal(to_path(str(tmp_path / "state")))
    state = _state(10_000)
    journal.create(state)
    assert journal.bytes_written < 200 * 10_000  # the plans, once
    record = state.shards[ShardKey(0, 9999)].but(
        status=ShardStatus.CREATING, file_name="d" * 60 + ".s09999.0123456789abcdef.jsonl", display_name="x" * 200
    )
    before = journal.bytes_written
    journal.append(state, [record])
    assert journal.bytes_written - before < 500


def test_settle_before_a_deferral_leaves_a_short_replay(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 4)
    root = to_path(str(tmp_path / "state"))
    journal = BatchJournal(root)
    state = _state(100)  # compaction by count alone would wait for 10 objects
    journal.create(state)
    for index in range(6):
        record = state.shards[ShardKey(0, index)].but(status=ShardStatus.RUNNING, job_name=str(index))
        state.apply(record)
        journal.append(state, [record])
    journal.settle(state)
    assert not [name for name in _files(root) if name.startswith("journal/")]
    assert BatchJournal(root).load() == state


def test_job_outcome_is_one_decision_and_round_trips_compactly():
    from airflow_provider_maas.client.states import JobOutcome, Outcome, job_outcome

    cases = {
        "JOB_STATE_RUNNING": Outcome.WAITING,
        "JOB_STATE_SOMETHING_NEW": Outcome.WAITING,
        "JOB_STATE_SUCCEEDED": Outcome.SUCCEEDED,
        "JOB_STATE_PARTIALLY_SUCCEEDED": Outcome.PARTIAL,
        "JOB_STATE_EXPIRED": Outcome.FAILED,
    }
    for state, outcome in cases.items():
        assert job_outcome({"name": "1", "state": state}).outcome is outcome
    failed = job_outcome(
        {
            "name": "7",
            "state": "JOB_STATE_FAILED",
            "error": {"code": 13, "message": "x" * 2000},
            "completionStats": {"successfulCount": "3", "failedCount": None},
        }
    )
    assert (failed.error_code, len(failed.error_message), failed.successful, failed.failed) == (13, 500, 3, None)
    assert failed.message.startswith("job 7 ended in JOB_STATE_FAILED: xxx") and failed.message.endswith("(code 13)")
    assert JobOutcome.from_dict(json.loads(json.dumps(failed.as_dict()))) == failed
    done = job_outcome({"name": "8", "state": "JOB_STATE_SUCCEEDED", "completionStats": {"successfulCount": "100"}})
    assert len(json.dumps(done.as_dict())) < 120


# What a try decides from the state (batch.resume, batch.pacing, batch.answers.summary, batch.settings) ----
def _with(state: BatchState, index: int, **changes) -> ShardRecord:
    record = state.shards[ShardKey(0, index)].but(**changes)
    state.apply(record)
    return record


def test_a_create_left_in_flight_is_refused_until_the_task_is_cleared(tmp_path):
    journal = BatchJournal(to_path(str(tmp_path / "state")))
    state = _state(3)  # written by a try of clear epoch 2
    journal.create(state)
    _with(state, 0, status=ShardStatus.CREATING, file_name="f0.jsonl", display_name="d#0", clear_epoch=2, attempts=1)
    _with(state, 1, status=ShardStatus.FAILED, attempts=3, error="job 9 ended in JOB_STATE_FAILED")
    journal.append(state, list(state.shards.values()))

    with pytest.raises(MaaSJobCreationUncertainError, match=r"shard 0 \(file 'f0.jsonl'\).*'d#0'"):
        take_over(make_context(max_tries=2), journal, state, batch_settings())  # an automatic retry: same max_tries

    take_over(make_context(max_tries=5), journal, state, batch_settings(timeout=60))  # a person cleared the task
    expected = {ShardKey(0, 0): (ShardStatus.PENDING, 1, None), ShardKey(0, 1): (ShardStatus.PENDING, 0, None)}
    for key, (status, attempts, error) in expected.items():
        assert (state.shards[key].status, state.shards[key].attempts, state.shards[key].error) == (
            status,
            attempts,
            error,
        )
    assert state.clear_epoch == 5 and state.deadline is not None and state.deadline > 123.5
    assert BatchJournal(journal.root).load() == state


def test_a_changed_input_is_refused_while_jobs_of_this_clear_epoch_run(tmp_path):
    journal = BatchJournal(to_path(str(tmp_path / "state")))
    state = _state(2)
    _with(state, 1, status=ShardStatus.RUNNING, job_name="4242", attempts=1)
    with pytest.raises(MaaSInputError, match=r"1 job\(s\) that are still running \(e.g. job 4242 for shard 1\)"):
        refuse_abandoning_jobs(make_context(max_tries=2), journal, state)
    refuse_abandoning_jobs(make_context(max_tries=3), journal, state)  # cleared since: starting over is what was asked
    _with(state, 1, status=ShardStatus.DONE)
    refuse_abandoning_jobs(make_context(max_tries=2), journal, state)  # nothing running: nothing to abandon


def test_a_deferred_batch_resumes_when_half_the_slots_are_free():
    state = _state(30)
    running = [str(n) for n in range(10)]
    for index in range(10):
        _with(state, index, status=ShardStatus.RUNNING, job_name=running[index])
    assert fire_after(state, running, max_active_jobs=10, rate_limited=False) == 5
    assert fire_after(state, running[:4], max_active_jobs=10, rate_limited=False) == 1  # slots already free
    assert fire_after(state, running[:6], max_active_jobs=10, rate_limited=True) == 3  # half the running jobs
    for index in range(10, 30):
        _with(state, index, status=ShardStatus.DONE)
    assert fire_after(state, running, max_active_jobs=10, rate_limited=False) is None  # nothing pending: all


def test_the_deadline_names_the_running_jobs():
    state = _state(1)
    state.deadline = 4102444800.0  # 2100-01-01: not yet
    check_deadline(state, ["1"], timeout=5)
    state.deadline = None  # no timeout: never
    check_deadline(state, ["1"], timeout=None)
    state.deadline = 1.0  # long past
    with pytest.raises(MaaSTimeoutError, match=r"timeout=5s\): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 \.\.\.; they keep"):
        check_deadline(state, [str(n) for n in range(12)], timeout=5)
    # Issue 19 finding 11: the setting removed since read "wait_timeout=Nones"; the stored deadline is shown.
    with pytest.raises(MaaSTimeoutError) as info:
        check_deadline(state, ["1"], timeout=None)
    assert "Nones" not in str(info.value)
    assert "deadline 1970-01-01 00:00:01 UTC" in str(info.value) and "timeout is not set now" in str(info.value)


def test_the_outcome_fails_the_task_only_when_asked_or_nothing_succeeded():
    summary = {"requests": 4, "succeeded": 3, "failed": 1, "failed_uri": "f", "shards": 2, "failed_shards": 0}
    summary["shard_errors"] = []
    check_outcome(summary, "d", fail_on_partial=False)
    with pytest.raises(MaaSJobFailedError, match=r"1 of 4 requests failed \(fail_on_partial=True\)"):
        check_outcome(summary, "d", fail_on_partial=True)
    summary.update(succeeded=0, failed=4, failed_shards=2, shard_errors=["shard 0: boom", "shard 1: bang"])
    with pytest.raises(
        MaaSJobFailedError, match=r"No request succeeded: 2 of 2 shards failed \(shard 0: boom; shard 1"
    ):
        check_outcome(summary, "d", fail_on_partial=False)
    check_outcome({**summary, "requests": 0, "failed": 0}, "d", fail_on_partial=True)  # an empty input


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("max_active_jobs", 0, "max_active_jobs must be an integer >= 1, got 0"),
        ("max_requests_per_file", 101, "max_requests_per_file must be between 1 and 100, got 101"),
        ("shard_retries", 1.5, "shard_retries must be an integer >= 0, got 1.5"),
    ],
)
def test_settings_out_of_bounds_are_refused_by_name(name, value, message):
    check_limits({"max_active_jobs": 1, "shard_retries": 0})
    with pytest.raises(MaaSInputError, match=re.escape(message)):
        check_limits({name: value})


def test_reuse_results_blank_are_none_and_a_missing_file_is_refused(tmp_path):
    results = tmp_path / "earlier.jsonl"
    results.write_text("")
    assert reuse_paths(None) == reuse_paths(["", "  "]) == []
    assert [p.name for p in reuse_paths([str(results), None])] == ["earlier.jsonl"]
    with pytest.raises(MaaSInputError, match=r"reuse_results\[1\] .*gone.jsonl is not a file"):
        reuse_paths((str(results), str(tmp_path / "gone.jsonl")))
