"""Adversarial trial of issue 19, third pass: what was still open after the first two trials.

Every test counts the jobs an independent stub of the four documented calls created
(:mod:`tests.counting_service`): that is what was paid. Tries are staged as in
``tests/test_state_fail_closed.py``: the same ``max_tries`` is an automatic retry, a higher one a clear.
"""

from __future__ import annotations

import functools
import re
import threading

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from tests.counting_service import counting_service
from tests.helpers import FakeStateStore, assert_in_input_order, batch_operator, make_context, write_requests

_try = functools.partial(make_context, max_tries=1)  # a try of the first clear epoch


def _echo(request):
    """An answer quoting the prompt (``assert_in_input_order`` checks it)."""
    text = request["contents"][0]["parts"][0]["text"]
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": f"answer to {text}"}]}}]}


@pytest.fixture
def service(monkeypatch):
    with counting_service(monkeypatch, respond=_echo, job_duration=0.3) as served:
        yield served


# 4 (variation): a zombie finishes the batch while its retry starts
@pytest.mark.parametrize("removed", ["whole", "half", "after-read"])
def test_4_a_retry_starting_while_the_zombie_removes_the_finished_state_pays_nothing_again(
    service, tmp_path, monkeypatch, removed
):
    # Try 1 (declared a zombie, still running) is writing the results when its retry starts. The retry
    # checks "finished?" (not yet), then the zombie marks the pointer finished and removes the state,
    # then the retry reads the state: none, and the pointer says "finished", so it planned the batch
    # again and paid for every shard a second time. Half removed (the retry reads while the zombie
    # deletes), it stopped on a damaged state, and the clear it asked for paid again. Removed after the
    # retry read it whole, the retry stopped ("the state was removed while this try ran"): same clear.
    import shutil

    from airflow_provider_maas.batch import resume
    from airflow_provider_maas.batch import run as _batch
    from airflow_provider_maas.batch.record.journal import BatchJournal

    if removed == "half":
        remove = BatchJournal.remove

        def half(self, *, keep=()):
            if keep:
                return remove(self, keep=keep)
            shutil.rmtree(str(self.root.path) + "/journal")
            raise PermissionError(13, "Permission denied", str(self.root))

        monkeypatch.setattr(BatchJournal, "remove", half)

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    writing, retry_started, zombie_done = threading.Event(), threading.Event(), threading.Event()
    write_outputs = _batch.write_outputs
    hooked = "take_over" if removed == "after-read" else "take_lease"
    real = getattr(resume, hooked)

    def zombie_writes_slowly(*args, **kwargs):
        if threading.current_thread().name == "zombie":
            writing.set()
            retry_started.wait(30)  # the retry has found the batch unfinished
        return write_outputs(*args, **kwargs)

    def retry_reads(*args, **kwargs):
        if threading.current_thread().name != "zombie":
            retry_started.set()
            zombie_done.wait(30)  # meanwhile the zombie finished: pointer 'finished', state removed
        return real(*args, **kwargs)

    monkeypatch.setattr(_batch, "write_outputs", zombie_writes_slowly)
    monkeypatch.setattr(resume, hooked, retry_reads)
    errors: list[BaseException] = []

    def zombie():
        try:
            batch_operator(source, dest).execute(_try(store))
        except BaseException as err:  # pragma: no cover - shown by the assertion below
            errors.append(err)
        zombie_done.set()

    thread = threading.Thread(target=zombie, name="zombie")
    thread.start()
    assert writing.wait(30)
    assert service.created == 3
    context = _try(store)  # the automatic retry, same clear epoch
    try:
        result = batch_operator(source, dest).execute(context)
    finally:
        thread.join(30)
    assert not errors, errors
    assert service.created == 3, "the retry paid for the finished batch again"
    assert result == f"file://{dest}"
    assert_in_input_order(source, dest)


class CachedListings:
    """An object store as s3fs and gcsfs see it: a listing is cached (``dircache``), and ``exists`` or
    ``info`` of a key under a listed folder answer from that listing without a request; the process's own
    writes invalidate it. ``hidden``: the newest journal objects a (lagging) listing leaves out.
    Installed on ``MemoryFileSystem`` itself: the paths Airflow builds use the cached instance of it."""

    hidden = 0

    def __init__(self) -> None:  # the methods of the store itself, before they are replaced
        fs = MemoryFileSystem
        self.ls_, self.info_, self.open_, self.rm_file_, self.mv_ = fs.ls, fs.info, fs._open, fs.rm_file, fs.mv

    def ls(self, fs, path, detail=True, **kwargs):
        path = fs._strip_protocol(path).rstrip("/")
        found = self.ls_(fs, path, detail=True, **kwargs)
        if self.hidden and path.endswith("/journal"):
            newest = sorted(e["name"] for e in found)[-self.hidden :]
            found = [e for e in found if e["name"] not in newest]
        fs.dircache[path] = found
        return found if detail else [e["name"] for e in found]

    def info(self, fs, path, **kwargs):
        path = fs._strip_protocol(path).rstrip("/")
        cached = fs._ls_from_cache(path)  # FileNotFoundError if the cached parent listing lacks it
        for entry in cached or ():
            if entry["name"] == path:
                return entry
        return self.info_(fs, path, **kwargs)

    def exists(self, fs, path, **kwargs):
        try:
            fs.info(path)
            return True
        except FileNotFoundError:
            return False

    def invalidate(self, fs, path=None):
        if path is None:
            fs.dircache.clear()
            return
        path = fs._strip_protocol(path).rstrip("/")
        while path:
            fs.dircache.pop(path, None)
            path = fs._parent(path).rstrip("/")

    def open(self, fs, path, mode="rb", *args, **kwargs):
        if "w" in mode:
            fs.invalidate_cache(path)
        return self.open_(fs, path, mode, *args, **kwargs)

    def rm_file(self, fs, path):
        fs.invalidate_cache(path)
        self.rm_file_(fs, path)

    def mv(self, fs, path1, path2, *args, **kwargs):
        fs.invalidate_cache(path1)
        fs.invalidate_cache(path2)
        self.mv_(fs, path1, path2, *args, **kwargs)


@pytest.fixture
def cached_fs(monkeypatch):
    from airflow.sdk.io import attach
    from airflow.sdk.io.store import _STORE_CACHE

    cache = CachedListings()
    fs = MemoryFileSystem()
    for name, method in {"ls": cache.ls, "info": cache.info, "exists": cache.exists}.items():
        monkeypatch.setattr(MemoryFileSystem, name, lambda self, *a, _m=method, **k: _m(self, *a, **k))
    for name, method in {"invalidate_cache": cache.invalidate, "_open": cache.open}.items():
        monkeypatch.setattr(MemoryFileSystem, name, lambda self, *a, _m=method, **k: _m(self, *a, **k))
    for name, method in {"rm_file": cache.rm_file, "mv": cache.mv}.items():
        monkeypatch.setattr(MemoryFileSystem, name, lambda self, *a, _m=method, **k: _m(self, *a, **k))
    _STORE_CACHE.pop("memory", None)
    attach("memory", fs=fs)
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    fs.dircache.clear()
    fs.cache = cache
    yield fs
    fs.store.clear()
    fs.dircache.clear()
    _STORE_CACHE.pop("memory", None)


# 2 (variation): a lagging listing on a store whose client caches listings (s3fs, gcsfs)
def test_2_a_lagging_listing_cached_by_the_store_client_does_not_pay_again(service, tmp_path, cached_fs):
    # batch/record/journal.py reads past a lagging listing by asking for the next key. s3fs and gcsfs answer
    # that question from the listing they just cached: "not there", without asking the store. The retry
    # then replayed only the listed objects, planned the shards whose markers and jobs were hidden as
    # pending, paid for them again, and overwrote the hidden objects with its own.
    from airflow_provider_maas.exceptions import MaaSTimeoutError

    source, dest = write_requests(tmp_path / "r.jsonl", 250), "memory://bucket/out/res.jsonl"
    service.job_duration = 1.0
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3).execute(_try())
    assert service.created == 3
    journal = "/bucket/out/.res.jsonl.maas/dag.task.run1.m-1/journal"
    count = len(cached_fs.ls(journal, detail=False))
    assert count >= 3
    cached_fs.dircache.clear()  # the retry is a new process
    cached_fs.cache.hidden = count - 1  # only the plan's first object is listed yet

    import time

    time.sleep(1.0)  # try 1's jobs end
    try:
        batch_operator(source, dest).execute(_try())  # the automatic retry
    finally:
        assert service.created == 3, "the retry paid again for shards hidden by the cached listing"
    cached_fs.cache.hidden = 0
    with cached_fs.open("/bucket/out/res.jsonl", "rb") as out:
        assert len(out.read().splitlines()) == 250


# 10 (variation): the ENDPOINT changed between tries (the connection edited, a templated endpoint)
def test_10_an_endpoint_changed_between_tries_is_refused_naming_both_not_called_gone(service, tmp_path):
    # The state did not record which ENDPOINT its jobs were created on. After the connection's
    # ENDPOINT changed, the retry polled the running jobs under the new one, got 404 and called them
    # gone ("clear the task"); the clear paid for every running shard again on the new ENDPOINT, and
    # the destination would mix the answers of two models without a word.
    from airflow_provider_maas.exceptions import MaaSStateError
    from tests.compat import TaskDeferred

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    service.job_duration = 60
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):  # try 1 waits in the triggerer; its worker is lost meanwhile
        batch_operator(source, dest, deferrable=True).execute(_try(store))
    jobs = sorted(service.jobs)
    assert len(jobs) == 3
    for context in (_try(store), _try(store, max_tries=3)):  # the automatic retry, then a person's clear
        with pytest.raises(MaaSStateError) as refused:
            batch_operator(source, dest, endpoint="other-endpoint").execute(context)
        message = str(refused.value)
        assert "'test-endpoint'" in message and "'other-endpoint'" in message, message
        assert all(name in message for name in jobs), message
    assert service.created == 3
    service.job_duration = 0
    batch_operator(source, dest).execute(_try(store))  # the ENDPOINT restored: reattached
    assert service.created == 3
    assert_in_input_order(source, dest)


# 8 (variation): answers kept by a start-over are reused whatever model wrote them
def test_8_answers_kept_by_a_start_over_are_not_reused_for_another_model(service, tmp_path, monkeypatch):
    # Try 1 downloads every answer on ENDPOINT test-endpoint (model X), then the final write fails. A person
    # moves the task to ENDPOINT other-endpoint (model Y): the retry stops (the state's jobs are on
    # another ENDPOINT), the person sets start_over and clears. The start-over keeps the downloaded
    # answers and reuses them: no job on model Y, the destination holds model X's answers, and its
    # record (.res.jsonl.origin.json) says other-endpoint wrote them.
    import json

    from airflow_provider_maas.exceptions import MaaSStateError

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr("airflow_provider_maas.batch.run.write_outputs", _disk_full)
        batch_operator(source, dest).execute(_try())
    assert service.created == 3
    with pytest.raises(MaaSStateError):
        batch_operator(source, dest, endpoint="other-endpoint").execute(_try())
    context = _try(max_tries=3)  # a person's clear, start_over chosen
    batch_operator(source, dest, endpoint="other-endpoint", start_over=True).execute(context)
    assert json.loads((tmp_path / ".res.jsonl.origin.json").read_text())["endpoint"] == "other-endpoint"
    summary = context["ti"].xcom["summary"]
    assert summary["reused"] == 0, "model X's answers reused for model Y"
    assert summary["reuse_skipped_other_model"] == 250
    assert service.created == 6
    assert_in_input_order(source, dest)


def test_8_kept_answers_of_another_model_are_reused_when_chosen_and_unrecorded_ones_refused(
    service, tmp_path, monkeypatch
):
    # The same start-over with reuse_other_models=True reuses model X's kept answers (a person's choice);
    # kept answers without a record of their ENDPOINT (kept by an earlier provider version) stop the task
    # before anything is sent, as a reuse_results file without a record does.
    from airflow_provider_maas.exceptions import MaaSInputError, MaaSStateError

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr("airflow_provider_maas.batch.run.write_outputs", _disk_full)
        batch_operator(source, dest).execute(_try())
    with pytest.raises(MaaSStateError):
        batch_operator(source, dest, endpoint="other-endpoint").execute(_try())
    state = tmp_path / ".res.jsonl.maas" / "dag.task.run1.m-1"
    with monkeypatch.context() as patch, pytest.raises(MaaSInputError) as refused:
        patch.setattr("airflow_provider_maas.batch.record.origin._write_record", lambda *a: None)  # an old version
        batch_operator(source, dest, endpoint="other-endpoint", start_over=True).execute(_try(max_tries=3))
    assert f"{state}/kept/0000" in str(refused.value) and "reuse_other_models=True" in str(refused.value)
    assert service.created == 3
    (state / "kept" / "0000" / "origin.json").write_text('{"endpoint": "test-endpoint"}')
    context = _try(max_tries=3)
    batch_operator(source, dest, endpoint="other-endpoint", start_over=True, reuse_other_models=True).execute(context)
    assert context["ti"].xcom["summary"]["reused"] == 250
    assert service.created == 3
    assert_in_input_order(source, dest)


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _state_gone_before_3_3(service, tmp_path, monkeypatch):
    """Airflow 3.0-3.2 (the record in a Variable): try 1 stops on its timeout with 3 jobs running, then
    its state folder is gone (the retry runs on a worker without that disk); returns the Variables."""
    import shutil

    from airflow_provider_maas.exceptions import MaaSTimeoutError
    from tests.helpers import use_fake_variables

    variables = use_fake_variables(monkeypatch)
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    service.job_duration = 60
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3).execute(_try())  # no task_state_store: Airflow 3.0-3.2
    assert service.created == 3
    shutil.rmtree(tmp_path / ".res.jsonl.maas")
    service.job_duration = 0
    return variables, source, dest


# 1 (variation): Airflow 3.0-3.2, the state on one worker's local disk, the retry on another worker
def test_1_before_airflow_3_3_a_state_gone_between_tries_is_refused(service, tmp_path, monkeypatch):
    # Airflow 3.0-3.2 have no task_state_store: the second record is the Airflow Variable
    # maas_batch.<digest> (batch/record/task_record.py), written through the Task SDK in a task runner. It says
    # a state existed at this location; a retry that finds none (a destination on another worker's disk,
    # the folder deleted) refuses, naming the location, instead of planning again (6 jobs for 3).
    from airflow_provider_maas.exceptions import MaaSStateError

    variables, source, dest = _state_gone_before_3_3(service, tmp_path, monkeypatch)
    jobs = sorted(service.jobs)
    (name,) = variables.values  # the record of the state, the only one left
    assert name.startswith("maas_batch.") and "/.res.jsonl.maas/" in variables.values[name]
    for context in (_try(), _try(max_tries=3)):  # the automatic retry, then a person's clear
        with pytest.raises(MaaSStateError) as refused:
            batch_operator(source, dest).execute(context)
        message = str(refused.value)
        assert f"file://{tmp_path}/.res.jsonl.maas/dag.task.run1.m-1" in message and "gone" in message, message
        assert "start_over=True" in message, message
    assert service.created == 3
    assert len(jobs) == 3


# 1 / 4 (variation): the batch finished, Airflow did not record it, and the results are not where the retry runs
def test_1_a_retry_of_a_finished_batch_whose_results_are_not_there_stops_instead_of_paying_again(service, tmp_path):
    # The try finished the batch (results written, state removed, task_state_store says "finished") and
    # its worker was lost before Airflow recorded the success; the automatic retry runs on a worker that
    # does not see that worker's local disk (or the results were removed). It planned the whole batch
    # again and paid for every shard a second time, with no person's choice.
    from airflow_provider_maas.exceptions import MaaSStateError

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    batch_operator(source, dest).execute(_try(store))
    assert service.created == 3
    dest.unlink()  # not on the retry's worker
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try(store))  # the automatic retry
    message = str(refused.value)
    assert "finished" in message and str(dest) in message and "clear" in message, message
    assert service.created == 3
    batch_operator(source, dest).execute(_try(store, max_tries=3))  # a person's clear runs it again
    assert service.created == 6
    assert_in_input_order(source, dest)


# Fourth pass (s5-a19b): what this session added, attacked ----------------------------------------------
@pytest.mark.parametrize(
    ("record", "why"),
    [
        ('{"endpoint": "test-endpoint", "writ', "cannot be read"),  # truncated
        ('["dag", "task", "run1", "m-1"]', "not a JSON object"),  # hand-edited
        ('{"endpoint": "test-endpoint", "written_by": "run1"}', "names no task instance"),  # hand-edited
        ('{"endpoint": "test-endpoint"}', "provider version before"),  # an earlier provider version's record
    ],
)
def test_9_a_destination_whose_record_is_damaged_or_old_is_not_overwritten_by_another_run(
    service, tmp_path, record, why
):
    # Run 1 wrote the destination; its record (.res.jsonl.origin.json) is truncated, hand-edited or of a
    # provider version before written_by. Run 2 with the same destination read "no writer" and paid for
    # 3 more jobs, overwriting run 1's paid answers without a word (6 jobs).
    from airflow_provider_maas.exceptions import MaaSStateError

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    batch_operator(source, dest).execute(_try(FakeStateStore()))
    origin = tmp_path / ".res.jsonl.origin.json"
    origin.write_text(record)
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try(FakeStateStore(), run_id="run2"))
    message = str(refused.value)
    assert why in message and str(origin) in message and "Nothing was sent" in message, message
    assert service.created == 3
    origin.unlink()  # the way on the message names (the results are run 2's to replace)
    batch_operator(source, dest).execute(_try(FakeStateStore(), run_id="run2"))
    assert service.created == 6


def test_9_the_same_task_instance_whose_record_lacks_its_writer_goes_on_from_its_state(service, tmp_path, monkeypatch):
    # The results were written (the record says only the ENDPOINT) and the try stopped before the record
    # named its writer: its own retry finds its state and writes again, paying nothing.
    from airflow_provider_maas.batch import run as _run

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr(_run, "record_writer", _disk_full)
        batch_operator(source, dest).execute(_try(store))
    assert "written_by" not in (tmp_path / ".res.jsonl.origin.json").read_text()
    batch_operator(source, dest).execute(_try(store))
    assert service.created == 3
    assert_in_input_order(source, dest)


def test_5_a_variable_write_lost_while_markers_are_stored_does_not_need_a_clear(service, tmp_path, monkeypatch):
    # Airflow 3.0-3.2: the Variable write of the newest-sequence mark fails after the journal object with
    # the 'creating' markers is stored. No create was sent, but the automatic retry found the markers and
    # stopped with MaaSJobCreationUncertainError ("may or may not have created a job"), asking for a clear.
    # Now the markers are undone in one more journal object (the shards pending again, their uploads
    # kept) and the error blames the Variable: the automatic retry sends each shard once.
    from airflow_provider_maas.exceptions import MaaSError, MaaSStateError
    from tests.helpers import use_fake_variables

    variables = use_fake_variables(monkeypatch)
    real, sets = variables.set, []

    def loses_the_second(key, value, description=None, serialize_json=False):
        sets.append(value)
        if len(sets) != 2:  # the first is the plan's pointer, the second the mark of the first markers
            real(key, value, description=description, serialize_json=serialize_json)

    variables.set = loses_the_second
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with pytest.raises(MaaSError) as failed:
        batch_operator(source, dest).execute(_try())
    message = str(failed.value)
    assert not isinstance(failed.value, MaaSStateError), message  # retried by Airflow
    assert "the Airflow Variable 'maas_batch." in message and "No create was sent for shards" in message, message
    assert "back to pending" in message and "the retry goes on from it" in message, message
    assert service.created == 0
    (marked,) = re.findall(r"No create was sent for shards ([\d, ]+);", message)
    batch_operator(source, dest).execute(_try())  # the automatic retry
    assert service.created == 3
    for shard in marked.split(", "):  # its upload is kept with the shard's pending record
        uploads = [
            target for method, target in service.requests if method == "POST" and f".s{int(shard):05d}." in target
        ]
        assert len(uploads) == 1, f"shard {shard}, whose marker was undone, was uploaded again"
    assert_in_input_order(source, dest)


def test_5_markers_that_cannot_be_undone_either_are_refused_by_the_retry_and_a_clear_sends_them_once(
    service, tmp_path, monkeypatch
):
    # The mark write fails, then the journal write that returns the shards to pending fails too: the markers
    # stay. The error says so and names the way on (a clear); the retry stops on them (no job is sent
    # on an automatic path) and the clear sends each shard once.
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.exceptions import MaaSError, MaaSJobCreationUncertainError
    from tests.helpers import use_fake_variables

    variables = use_fake_variables(monkeypatch)
    real_set, real_append, sets = variables.set, BatchJournal.append, []

    def loses_the_second(key, value, description=None, serialize_json=False):
        sets.append(value)
        if len(sets) != 2:
            real_set(key, value, description=description, serialize_json=serialize_json)

    def undo_fails(self, state, records, **kwargs):
        if len(sets) == 2 and records and all(r.status.value == "pending" for r in records):
            raise OSError(30, "Read-only file system")
        return real_append(self, state, records, **kwargs)

    variables.set = loses_the_second
    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    with monkeypatch.context() as patch, pytest.raises(MaaSError) as failed:
        patch.setattr(BatchJournal, "append", undo_fails)
        batch_operator(source, dest).execute(_try())
    message = str(failed.value)
    assert "failed too" in message and "Read-only file system" in message and "clear the task" in message, message
    with pytest.raises(MaaSJobCreationUncertainError):
        batch_operator(source, dest).execute(_try())  # the automatic retry
    assert service.created == 0
    batch_operator(source, dest).execute(_try(max_tries=3))  # a person's clear
    assert service.created == 3
    assert_in_input_order(source, dest)


def test_1_before_airflow_3_3_a_variable_read_that_fails_is_not_read_as_no_record(service, tmp_path, monkeypatch):
    # On Airflow 3.1-3.2 the Task SDK's Variable.get(default=None) answers an error of the Execution API as
    # "not found" (its ExecutionAPISecretsBackend swallows it): a retry reading during an outage found no
    # record and the state gone, and planned the batch again (6 jobs for 3); VariableStateStore.set's
    # read-modify-write dropped the record's other keys. The record is now read with GetVariable sent to
    # the supervisor: only VARIABLE_NOT_FOUND is "no record"; any other answer fails the try (retried).
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    from airflow_provider_maas.exceptions import MaaSError, MaaSStateError

    variables, source, dest = _state_gone_before_3_3(service, tmp_path, monkeypatch)
    (name,) = variables.values
    record = variables.values[name]
    real_get, real_send = variables.get, variables.send
    outage = {"on": True}

    def transient(key, default=None, deserialize_json=False):  # what Variable.get returns on an API error
        if outage["on"]:
            return default
        return real_get(key, default=default, deserialize_json=deserialize_json)

    def send(msg):  # what the supervisor answers on a 5xx of the Execution API (an error frame)
        if outage["on"]:
            error = ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={"status_code": 503})
            raise AirflowRuntimeError(error=error)
        return real_send(msg)

    variables.get, variables.send = transient, send
    for context in (_try(), _try(max_tries=3)):  # the automatic retry, then a person's clear
        with pytest.raises(MaaSError) as failed:
            batch_operator(source, dest).execute(context)
        message = str(failed.value)
        assert name in message and "API_SERVER_ERROR" in message and "nothing was planned" in message, message
    assert service.created == 3, "a failed read of the record was taken for 'no record': paid again"
    assert variables.values == {name: record}, "the record was rewritten without its other keys"
    outage["on"] = False  # the Execution API is back: the record is read, the state found gone
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try())
    assert "gone" in str(refused.value)
    assert service.created == 3


def test_1_before_airflow_3_3_a_variable_that_is_not_a_record_stops_the_task(service, tmp_path, monkeypatch):
    # A Variable edited by hand (not a JSON object) was read as "no record": the state gone was planned again.
    from airflow_provider_maas.exceptions import MaaSStateError

    variables, source, dest = _state_gone_before_3_3(service, tmp_path, monkeypatch)
    (name,) = variables.values
    variables.values[name] = "[]"
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try())
    assert name in str(refused.value) and "not hold a JSON object" in str(refused.value)
    assert service.created == 3


def test_5_job_names_saved_for_a_discarded_plan_do_not_reattach_the_new_plans_shards(service, tmp_path, monkeypatch):
    # Job names a failed journal write left in task_state_store (second_record.save_job_names: location and
    # "round.index" -> name) were kept across a start-over: nothing but take_over forgot them, and a new
    # plan is not taken over. The new plan's shard 0.1 then lost a create's answer (its job exists, paid);
    # the automatic retry "reattached" shard 0.1 to the discarded plan's job 2 (other requests, maybe another
    # model), abandoning the new plan's job: a paid answer lost, another batch's answers written in its place.
    from airflow_provider_maas.batch.record.second_record import JOBS_KEY
    from airflow_provider_maas.exceptions import MaaSJobCreationUncertainError, MaaSStateError, MaaSTimeoutError
    from airflow_provider_maas.hooks.maas import MaaSHook

    source, dest = write_requests(tmp_path / "r.jsonl", 250), tmp_path / "res.jsonl"
    store = FakeStateStore()
    service.job_duration = 60
    with pytest.raises(MaaSTimeoutError):
        batch_operator(source, dest, timeout=0.3).execute(_try(store))
    state = tmp_path / ".res.jsonl.maas" / "dag.task.run1.m-1"
    # what save_job_names leaves when a journal write fails once job 2 (shard 0.1) answered
    store.set(JOBS_KEY, {"location": f"file://{state}", "jobs": {"0.1": "2"}})
    (state / "manifest.json").write_text("{")  # then the state is damaged
    with pytest.raises(MaaSStateError) as refused:
        batch_operator(source, dest).execute(_try(store))
    assert "2" in refused.value.job_names
    service.job_duration = 0.2
    real = MaaSHook.create_batch_job

    def loses_shard_1s_answer(self, file_name, display_name):
        job = real(self, file_name, display_name)
        if ".s00001." in file_name:
            raise TimeoutError("read timed out")  # the job exists (paid); its answer is lost
        return job

    source = write_requests(tmp_path / "r2.jsonl", 260)  # a person's clear, start_over, a new input
    with monkeypatch.context() as patch, pytest.raises(TimeoutError):
        patch.setattr(MaaSHook, "create_batch_job", loses_shard_1s_answer)
        batch_operator(source, dest, start_over=True).execute(_try(store, max_tries=3))
    assert service.created == 6
    with pytest.raises(MaaSJobCreationUncertainError) as uncertain:  # the automatic retry
        batch_operator(source, dest, start_over=True).execute(_try(store, max_tries=3))
    assert "shard 1" in str(uncertain.value)
    assert service.created == 6
