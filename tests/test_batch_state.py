"""The batch state model and its journal: typed records that round-trip, O(1) bytes per shard
event, bounded replay, and a marker that survives a crash before the create. Local files and an
object store (``memory://``, where nothing can be appended)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_maas.batch import journal as journal_module
from airflow_provider_maas.batch.journal import BatchJournal
from airflow_provider_maas.batch.shards import ShardPlan
from airflow_provider_maas.batch.state import (
    STATE_VERSION,
    BatchState,
    Round,
    ShardKey,
    ShardRecord,
    ShardStatus,
    fingerprint,
)
from airflow_provider_maas.storage import to_path
from tests.helpers import make_context
from tests.test_storage import memfs  # noqa: F401  (fixture)


def _plans(count: int) -> tuple[ShardPlan, ...]:
    return tuple(
        ShardPlan(i, i * 100 + 1, i * 100 + 100, i * 9000, (i + 1) * 9000, 100, 9000, f"{i:064x}", True)
        for i in range(count)
    )


def _state(count: int) -> BatchState:
    plans = _plans(count)
    return BatchState(fingerprint(plans), "dag.task.run.m-1", [Round(0, plans)], deadline=123.5, clear_round=2)


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
    assert (again.deadline, again.clear_round, again.resumes) == (123.5, 2, 3)
    assert again.by_job() == {"111": first}


def test_marker_written_before_a_crash_is_found_by_the_next_try(root):
    journal = BatchJournal(root)
    state = _state(2)
    journal.create(state)
    marker = state.shards[ShardKey(0, 1)].but(
        status=ShardStatus.CREATING, file_name="f1.jsonl", display_name="dag/task/run#1", clear_round=2, attempts=1
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


def test_other_format_version_is_not_read(root):
    journal = BatchJournal(root)
    journal.create(_state(1))
    with (root / "manifest.json").open("rb") as handle:
        manifest = json.loads(handle.read())
    manifest["version"] = STATE_VERSION + 1
    with (root / "manifest.json").open("wb") as handle:
        handle.write(json.dumps(manifest).encode())
    assert BatchJournal(root).load() is None


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
