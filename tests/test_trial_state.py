"""Adversarial trial of issue 19 (fail closed on the record of paid work), from the issue text."""

from __future__ import annotations

import functools
import shutil
import time

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_maas.exceptions import MaaSStateError, MaaSTimeoutError
from tests.helpers import FakeStateStore, assert_in_input_order, batch_operator, make_context, write_requests

_try = functools.partial(make_context, max_tries=1)  # a try of the first clear epoch


def _state_dir(dest, identity="dag.task.run1.m-1"):
    return dest.parent / f".{dest.name}.maas" / identity


class LaggingListing:
    """An object store whose listing lags: the newest journal objects are not listed yet (a GET
    of their key finds them, as on any store with read-after-write consistency per key)."""

    hidden = 0  # this many of the newest journal objects are left out of a listing

    def __init__(self, ls):
        self._ls = ls

    def __call__(self, fs, path, detail=True, **kwargs):
        found = self._ls(fs, path, detail=detail, **kwargs)
        if not self.hidden or not str(path).rstrip("/").endswith("/journal"):
            return found
        name = (lambda e: e["name"]) if detail else (lambda e: e)
        newest = sorted(name(e) for e in found)[-self.hidden :]
        return [e for e in found if name(e) not in newest]


@pytest.fixture
def lagging_fs(monkeypatch):
    from airflow.sdk.io import attach
    from airflow.sdk.io.store import _STORE_CACHE

    fs = MemoryFileSystem()
    _STORE_CACHE.pop("memory", None)
    attach("memory", fs=fs)
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    lagging = LaggingListing(MemoryFileSystem.ls)
    monkeypatch.setattr(MemoryFileSystem, "ls", lambda self, path, detail=True, **kw: lagging(self, path, detail, **kw))
    fs.lagging = lagging
    yield fs
    fs.store.clear()
    _STORE_CACHE.pop("memory", None)


# 2 (variation): the newest journal objects missing from a lagging listing, not a gap in the middle
def test_2_a_listing_that_lags_behind_the_newest_journal_objects_does_not_pay_again(
    emulator_factory, tmp_path, lagging_fs
):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), "memory://bucket/out/res.jsonl"
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3).execute(_try())
    assert handle.emulator.jobs_created == 3
    journal = "/bucket/out/.res.jsonl.maas/dag.task.run1.m-1/journal"
    count = len(lagging_fs.ls(journal, detail=False))
    assert count >= 3
    lagging_fs.lagging.hidden = count - 1  # only the first object (the plan's meta) is listed yet

    time.sleep(1.0)  # try 1's jobs end
    try:
        batch_operator(source, dest).execute(_try())  # the automatic retry
    finally:
        assert handle.emulator.jobs_created == 3  # nothing paid again
    lagging_fs.lagging.hidden = 0
    with lagging_fs.open("/bucket/out/res.jsonl", "rb") as out:
        assert len(out.read().splitlines()) == 250


@pytest.mark.parametrize("store", [None, FakeStateStore()], ids=["airflow<3.3", "task_state_store"])
def test_1_state_removed_between_a_create_and_its_flush_names_the_jobs_and_pays_nothing_again(
    emulator_factory, tmp_path, monkeypatch, store
):
    # Finding 1 at another moment: the state folder is removed while the try runs, right after a
    # create answered. The write that records the job fails; "no job is missing, a retry goes on"
    # would be false (the jobs recorded before are gone with the state), and a retry would pay again.
    from airflow.exceptions import AirflowFailException

    from airflow_provider_maas.hooks.maas import MaaSHook

    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    create = MaaSHook.create_batch_job

    def then_removed(self, file_name, display_name):
        job = create(self, file_name, display_name)
        shutil.rmtree(_state_dir(dest), ignore_errors=True)
        return job

    with monkeypatch.context() as patch, pytest.raises(MaaSStateError) as first:
        patch.setattr(MaaSHook, "create_batch_job", then_removed)
        batch_operator(source, dest).execute(_try(store))
    created = sorted(handle.emulator.jobs)
    message = str(first.value)
    assert isinstance(first.value, AirflowFailException)  # not retried automatically
    assert "was removed while this try ran" in message and "start_over=True" in message
    assert "no job created by this try is missing" not in message and "Another try" not in message
    assert created and all(name in message for name in created), message
    if store is not None:
        with pytest.raises(MaaSStateError) as refused:  # a person's clear without start_over
            batch_operator(source, dest).execute(_try(store, max_tries=3))
        assert all(name in str(refused.value) for name in created)
    assert handle.emulator.jobs_created == len(created)


# 10 (variation): the jobs are gone while the task is deferred
def test_10_jobs_gone_during_a_deferral_the_retry_names_the_way_on_instead_of_deferring_again(
    emulator_factory, tmp_path
):
    import asyncio

    from airflow_provider_maas.exceptions import MaaSJobGoneError
    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=60)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    operator = batch_operator(source, dest, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(_try())
    handle.emulator.jobs.clear()  # the service forgot them: status answers 404
    event = asyncio.run(anext(deferred.value.trigger.run())).payload
    with pytest.raises(Exception) as first:
        operator.execute_complete(_try(), event)
    if not isinstance(first.value, MaaSJobGoneError):  # an error event: Airflow retries the task
        with pytest.raises(MaaSJobGoneError) as first:  # the retry: no second deferral on gone jobs
            batch_operator(source, dest, deferrable=True).execute(_try())
    assert "clear the task" in str(first.value)
    assert handle.emulator.jobs_created == 3


# 12 (variation): the state cannot be removed once the results are written
def test_12_a_state_that_cannot_be_removed_after_the_results_are_written_does_not_fail_the_task(
    emulator_factory, tmp_path, monkeypatch
):
    # The destination is whole and task_state_store says "finished": failing now makes Airflow retry,
    # and the retry finds a half-removed state (not whole): it would stop, and only start_over (paying
    # for the whole batch again) would get past it.
    from airflow_provider_maas.batch.record.journal import BatchJournal

    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    remove = BatchJournal.remove

    def half_removed(self, *, keep=()):
        if keep:
            return remove(self, keep=keep)
        (self.root / "manifest.json").unlink()
        raise PermissionError(13, "Permission denied", str(self.root / "journal"))

    monkeypatch.setattr(BatchJournal, "remove", half_removed)
    store = FakeStateStore()
    context = _try(store)
    batch_operator(source, dest).execute(context)
    assert context["ti"].xcom["summary"]["succeeded"] == 250
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# 2 / 12 (variation): a try killed while it wrote its first plan (nothing uploaded, nothing paid)
def test_12_a_plan_cut_before_its_manifest_was_written_is_planned_again(emulator_factory, tmp_path, monkeypatch):
    from airflow_provider_maas.batch.record.journal import BatchJournal

    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with monkeypatch.context() as patch, pytest.raises(SystemExit):

        def killed(self, state):
            raise SystemExit("SIGKILL")  # the process dies between the first journal object and the manifest

        patch.setattr(BatchJournal, "_write_manifest", killed)
        batch_operator(source, dest).execute(_try())
    assert (_state_dir(dest) / "journal" / "0000000001.jsonl").exists()
    assert not (_state_dir(dest) / "manifest.json").exists()
    batch_operator(source, dest).execute(_try())  # the automatic retry: nothing was paid, plan again
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# 9 (variation): two mapped tasks of one run, one destination, one after the other
def test_9_mapped_tasks_of_one_run_writing_one_destination_in_turn_the_second_refuses(emulator_factory, tmp_path):
    # With max_active_tis_per_dagrun=1 (or a pool of one slot) the first mapped task has finished and
    # removed its state before the second starts: no state is shared at any moment, yet the second
    # would overwrite the first one's paid answers.
    handle = emulator_factory(job_duration=0.2)
    first, second = write_requests(tmp_path / "a.jsonl", 30), write_requests(tmp_path / "b.jsonl", 30, prefix="Other")
    dest = tmp_path / "res.jsonl"
    batch_operator(first, dest).execute(_try(map_index=0))
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(second, dest).execute(_try(map_index=1))
    message = str(refused.value)
    assert "dag.task.run1.m0" in message and "map_index" in message, message
    assert handle.emulator.jobs_created == 1
    assert_in_input_order(first, dest)  # the first task's answers are still there
    batch_operator(first, dest).execute(_try(map_index=0, max_tries=3))  # the same task instance cleared: allowed
    assert handle.emulator.jobs_created == 2


# 9 (variation): two backfill runs (or a daily schedule) writing one fixed destination one after the other
def test_9_runs_writing_one_fixed_destination_in_turn_the_second_refuses_before_uploading(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.2)
    first, second = write_requests(tmp_path / "a.jsonl", 30), write_requests(tmp_path / "b.jsonl", 30, prefix="Other")
    dest = tmp_path / "res.jsonl"
    batch_operator(first, dest).execute(_try(run_id="backfill__2026-01-01"))
    uploads = sum(handle.emulator.uploads_by_name.values())
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(second, dest).execute(_try(run_id="backfill__2026-01-02"))
    message = str(refused.value)
    assert "dag.task.backfill__2026-01-01.m-1" in message and "another run" in message, message
    assert "{{ run_id }}" in message and "move or delete" in message, message
    assert sum(handle.emulator.uploads_by_name.values()) == uploads and handle.emulator.jobs_created == 1
    assert_in_input_order(first, dest)  # the first run's paid answers are still there
    batch_operator(first, dest).execute(_try(run_id="backfill__2026-01-01", max_tries=3))  # a clear: allowed
    dest.rename(tmp_path / "kept.jsonl")  # replaced on purpose: the old file moved away
    batch_operator(second, dest).execute(_try(run_id="backfill__2026-01-02"))
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(second, dest)


# 4 (variation): two live tries, the first deferred: the second finishes the batch meanwhile
def test_4_a_deferred_try_resuming_after_another_live_try_finished_the_batch_does_not_ask_to_pay_again(
    emulator_factory, tmp_path
):
    import asyncio

    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=0.5)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    deferred_try = batch_operator(source, dest, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        deferred_try.execute(_try(store))
    batch_operator(source, dest).execute(_try(store))  # 'airflow tasks test' on the live run: reattaches, finishes
    assert handle.emulator.jobs_created == 3
    event = asyncio.run(anext(deferred.value.trigger.run())).payload
    # the first try resumes: "state gone, set start_over=True" would have a person pay for it all again
    assert deferred_try.execute_complete(_try(store), event) == f"file://{dest}"
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# start_over left set: it is a person's choice once, not a standing order for automatic retries
def test_start_over_left_set_does_not_discard_a_state_damaged_within_an_automatic_retry(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    with pytest.raises(MaaSTimeoutError):  # start_over=True was left on the task after an earlier repair
        batch_operator(source, dest, timeout=0.3, start_over=True).execute(_try(store))
    assert handle.emulator.jobs_created == 3
    journal = sorted((_state_dir(dest) / "journal").iterdir())
    journal[-1].write_bytes(journal[-1].read_bytes()[:40])  # a write cut short (disk full, a killed copy)

    with pytest.raises(MaaSStateError) as refused:  # the automatic retry: no person chose anything
        batch_operator(source, dest, start_over=True).execute(_try(store))
    message = str(refused.value)
    assert "start_over=True" in message and "clear" in message
    assert handle.emulator.jobs_created == 3  # the 3 running jobs are not paid again

    time.sleep(1.0)
    batch_operator(source, dest, start_over=True).execute(_try(store, max_tries=3))  # a person's clear: their choice
    assert handle.emulator.jobs_created == 6
    assert_in_input_order(source, dest)


# 4 (variation): the second live try starts while the first one's creates are in flight
@pytest.mark.parametrize("store", [None, FakeStateStore()], ids=["airflow<3.3", "task_state_store"])
def test_4_a_second_try_starting_mid_create_the_first_names_its_jobs_and_nothing_is_paid_twice(
    emulator_factory, tmp_path, monkeypatch, store
):
    from airflow_provider_maas.exceptions import MaaSJobCreationUncertainError
    from airflow_provider_maas.hooks.maas import MaaSHook

    handle = emulator_factory(job_duration=0.5)
    source, dest = write_requests(tmp_path / "r.jsonl", 10), tmp_path / "res.jsonl"
    create = MaaSHook.create_batch_job
    second: list[BaseException] = []

    def second_try_starts(self, file_name, display_name):
        if not second:  # the second try runs while this create is in flight
            try:
                batch_operator(source, dest).execute(_try(store))
            except Exception as err:
                second.append(err)
        return create(self, file_name, display_name)

    with monkeypatch.context() as patch, pytest.raises(MaaSStateError) as first:
        patch.setattr(MaaSHook, "create_batch_job", second_try_starts)
        batch_operator(source, dest).execute(_try(store))
    assert isinstance(second[0], MaaSJobCreationUncertainError)  # it saw the create in flight: created nothing
    created = sorted(handle.emulator.jobs)
    assert len(created) == 1
    message = str(first.value)
    assert created[0] in message, message  # the job the first try created is named where a person reads it
    assert "unless it found creates of this try in flight" in message  # the second one stopped too
    assert handle.emulator.jobs_created == 1
    if store is not None:  # the next automatic retry reattaches to it
        batch_operator(source, dest).execute(_try(store))
        assert handle.emulator.jobs_created == 1
        assert_in_input_order(source, dest)


# 4 (variation): the lease of a try that died, or a lease.json cut short, never blocks the next try
@pytest.mark.parametrize(
    "lease",
    [
        b'{"owner":"dead","host":"gone-worker","pid":1,"try_number":1,"taken":1}',  # a try killed mid-run
        b'{"owner":"de',  # cut short
        b"",
    ],
    ids=["dead-try", "truncated", "empty"],
)
def test_4_a_lease_left_by_a_dead_try_or_cut_short_does_not_block_the_next_try(emulator_factory, tmp_path, lease):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3).execute(_try())
    (_state_dir(dest) / "lease.json").write_bytes(lease)
    time.sleep(1.0)
    batch_operator(source, dest).execute(_try())  # the automatic retry takes the lease over
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# 1 (variation): the state deleted mid-deferral names every job the trigger waited for, not only ended ones
def test_1_state_deleted_mid_deferral_names_the_jobs_still_running(emulator_factory, tmp_path):
    import asyncio

    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=60)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    operator = batch_operator(source, dest, deferrable=True, timeout=30)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(_try())  # Airflow < 3.3: no task_state_store, the trigger is the only other record
    jobs = sorted(handle.emulator.jobs)
    shutil.rmtree(_state_dir(dest))
    trigger = deferred.value.trigger
    trigger.end_time = time.time()  # the deadline passes while the jobs run
    event = asyncio.run(anext(trigger.run())).payload
    with pytest.raises(MaaSStateError) as refused:
        operator.execute_complete(_try(), event)
    assert set(refused.value.job_names) == set(jobs)
    assert all(name in str(refused.value) for name in jobs)
    assert handle.emulator.jobs_created == 3


# 4 (variation): two live tries of a batch not planned yet: the slower planner must not wipe the other's jobs
def test_4_two_live_tries_planning_a_new_batch_at_once_only_one_creates(emulator_factory, tmp_path, monkeypatch):
    import threading

    from airflow_provider_maas.batch import resume
    from airflow_provider_maas.hooks.maas import MaaSHook

    handle = emulator_factory(job_duration=0.3)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    first_created = threading.Event()
    key, create = resume.input_key, MaaSHook.create_batch_job

    def slow_planner(settings):  # B found no state, then plans a large input: A creates meanwhile
        if threading.current_thread().name == "B":
            first_created.wait(20)
        return key(settings)

    def created(self, file_name, display_name):
        job = create(self, file_name, display_name)
        first_created.set()
        return job

    monkeypatch.setattr(resume, "input_key", slow_planner)
    monkeypatch.setattr(MaaSHook, "create_batch_job", created)
    outcomes: dict[str, BaseException | None] = {}

    def run(name):
        try:
            batch_operator(source, dest).execute(_try())
            outcomes[name] = None
        except BaseException as err:
            outcomes[name] = err

    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    time.sleep(0.5)  # B has read the (missing) state
    a = threading.Thread(target=run, args=("A",), name="A")
    a.start()
    a.join(60)
    b.join(60)
    assert handle.emulator.jobs_created == 3, outcomes  # never a second job for a shard
    assert sum(err is None for err in outcomes.values()) == 1, outcomes
    assert any(isinstance(err, MaaSStateError) and "planned" in str(err) for err in outcomes.values()), outcomes
    assert_in_input_order(source, dest)


# 1 / 4 (variation): a retry of a try that finished the batch (the worker died before Airflow recorded the
# success, or a zombie's retry started after the zombie finished): the state is gone on purpose
def test_4_an_automatic_retry_after_the_batch_finished_in_this_clear_epoch_pays_nothing_again(
    emulator_factory, tmp_path
):
    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    batch_operator(source, dest).execute(_try(store))
    assert handle.emulator.jobs_created == 3
    assert batch_operator(source, dest).execute(_try(store)) == f"file://{dest}"  # the automatic retry
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)
    batch_operator(source, dest).execute(_try(store, max_tries=3))  # a person's clear runs it again
    assert handle.emulator.jobs_created == 6


# 4 (variation): a try whose lease was taken after its last journal write must not finish the batch
def test_4_a_try_whose_lease_was_taken_does_not_write_the_results_nor_remove_the_state(
    emulator_factory, tmp_path, monkeypatch
):
    from airflow_provider_maas.batch import run as _batch

    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    real = _batch.next_round

    def taken_meanwhile(settings, journal, state):  # the last step before the results are written
        (journal.root / "lease.json").write_text('{"owner":"b","host":"other","pid":2,"try_number":2,"taken":1}')
        return real(settings, journal, state)

    monkeypatch.setattr(_batch, "next_round", taken_meanwhile)
    with pytest.raises(MaaSStateError, match="Another try of this task instance took over"):
        batch_operator(source, dest).execute(_try())
    assert not dest.exists() and (_state_dir(dest) / "manifest.json").exists()  # left to the other try
    monkeypatch.setattr(_batch, "next_round", real)
    batch_operator(source, dest).execute(_try())  # that try finishes it
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# 2 (variation): the newest snapshot deleted (the journal objects it covers are gone with compaction)
def test_2_the_newest_snapshot_deleted_is_refused(emulator_factory, tmp_path, monkeypatch):
    from airflow_provider_maas.batch.record import journal as journal_module

    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 2)
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 30), tmp_path / "res.jsonl"
    settings = {"max_requests_per_file": 3}  # 10 shards: several compactions
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3, **settings).execute(_try())
    jobs = sorted(handle.emulator.jobs)
    snapshots = sorted(_state_dir(dest).glob("snapshot-*.json"))
    assert snapshots
    snapshots[-1].unlink()
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest, **settings).execute(_try())
    assert "snapshot-" in str(refused.value) or "journal object" in str(refused.value)
    assert handle.emulator.jobs_created == len(jobs) == 10


# wait_timeout with deferral: the timeout event, then an automatic retry once the jobs ended
def test_11_wait_timeout_while_deferred_then_the_retry_collects_the_ended_jobs(emulator_factory, tmp_path):
    import asyncio

    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=1.5)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    operator = batch_operator(source, dest, deferrable=True, timeout=0.5)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(_try())
    event = asyncio.run(anext(deferred.value.trigger.run())).payload
    with pytest.raises(MaaSTimeoutError) as timed_out:
        operator.execute_complete(_try(), event)
    assert all(name in str(timed_out.value) for name in handle.emulator.jobs)
    time.sleep(1.5)  # the jobs end
    batch_operator(source, dest, deferrable=True, timeout=0.5).execute(_try())  # the automatic retry
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)


# 2 (variation): the newest journal objects deleted outright (not merely unlisted): the second record
# (task_state_store, an Airflow Variable before 3.3) keeps the newest object that held "creating" markers
def test_2_the_newest_journal_objects_deleted_are_refused(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=1.0)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3).execute(_try(store))
    jobs = sorted(handle.emulator.jobs)
    assert store.data["maas_batch_state"]["seq"] >= 2  # the markers' object, recorded before the creates
    for path in sorted((_state_dir(dest) / "journal").iterdir())[1:]:  # all but the plan's first object
        path.unlink()
    time.sleep(1.0)
    for context in (_try(store), _try(store, max_tries=3)):  # the automatic retry, then a person's clear
        with pytest.raises(MaaSStateError) as refused:
            batch_operator(source, dest).execute(context)
        message = str(refused.value)
        assert str(_state_dir(dest)) in message and "newest journal objects were deleted" in message, message
        assert "0000000001" in message and "start_over=True" in message, message
    assert handle.emulator.jobs_created == len(jobs) == 3
    batch_operator(source, dest, start_over=True).execute(_try(store, max_tries=5))  # the way on it names
    assert_in_input_order(source, dest)


# 5 (variation): the write of the "creating" markers lands but reports a failure (a PUT that timed out)
def test_5_a_marker_write_that_landed_but_failed_says_what_the_retry_will_do(emulator_factory, tmp_path, monkeypatch):
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.exceptions import MaaSJobCreationUncertainError, MaaSStateWriteError

    handle = emulator_factory(job_duration=0.2)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    write = BatchJournal._write

    def landed_then_failed(self, path, data):
        write(self, path, data)
        if b'"creating"' in data:
            raise TimeoutError("PUT timed out")

    with monkeypatch.context() as patch, pytest.raises(MaaSStateWriteError) as failed:
        patch.setattr(BatchJournal, "_write", landed_then_failed)
        batch_operator(source, dest).execute(_try())
    assert handle.emulator.jobs_created == 0  # no create was sent
    message = str(failed.value)
    assert "a retry goes on from it" not in message  # the retry refuses those shards: the marker landed
    assert "no create was sent" in message and "clear" in message, message
    with pytest.raises(MaaSJobCreationUncertainError):
        batch_operator(source, dest).execute(_try())
    batch_operator(source, dest).execute(_try(max_tries=3))  # the clear the first message named
    assert handle.emulator.jobs_created == 3
    assert_in_input_order(source, dest)
