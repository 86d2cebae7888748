"""Adversarial tests: a hostile service or an unlucky deployment against the provider's promises
(never pay twice, never lose a request silently, never leak the key, refuse bad input before paying)."""

from __future__ import annotations

import functools

import pytest

from airflow_provider_maas.exceptions import MaaSInputError, MaaSJobCreationUncertainError
from tests.helpers import FakeStateStore, assert_in_input_order, batch_operator, make_context, write_requests

_operator = batch_operator


_try = functools.partial(make_context, max_tries=1)  # the same max_tries again: an automatic retry, not a clear


def test_create_answered_524_is_uncertain_and_not_created_again_on_retry(emulator_factory, tmp_path):
    """A gateway's 524 (Cloudflare "a timeout occurred": the origin got the request) is no proof
    that no job was created; an automatic retry must not create a second one."""
    handle = emulator_factory(faults=["create:1:echo-headers=524"])
    source = write_requests(tmp_path / "r.jsonl", 3)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    with pytest.raises(MaaSJobCreationUncertainError):
        _operator(source, dest).execute(_try(store))
    created = handle.emulator.jobs_created
    with pytest.raises(MaaSJobCreationUncertainError):
        _operator(source, dest).execute(_try(store))  # automatic retry: same clear epoch
    assert handle.emulator.jobs_created == created


def test_one_404_on_results_metadata_does_not_pay_for_the_shard_again(emulator_factory, tmp_path):
    """The job SUCCEEDED seconds ago (results are kept 7 days): one 404 on alt=json is a glitch,
    not proof the results are gone; the shard must not be bought again."""
    handle = emulator_factory(faults=["metadata:1:404"])
    source = write_requests(tmp_path / "r.jsonl", 3)
    dest = tmp_path / "results.jsonl"
    _operator(source, dest).execute(_try(FakeStateStore()))
    assert_in_input_order(source, dest)
    assert handle.emulator.jobs_created == 1


def test_changed_shard_limits_between_retries_still_refuse_an_uncertain_create(emulator_factory, tmp_path):
    """The DAG file is redeployed between two automatic tries (max_requests_per_file tuned): the
    first try's create got no answer but did create the job; the retry must not create another
    one for the same requests without a person clearing the task."""
    handle = emulator_factory(faults=["create:1:lost-500"])
    source = write_requests(tmp_path / "r.jsonl", 6)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    with pytest.raises(MaaSJobCreationUncertainError):
        _operator(source, dest).execute(_try(store))
    assert handle.emulator.jobs_created == 1
    with pytest.raises(MaaSJobCreationUncertainError):
        _operator(source, dest, max_requests_per_file=3).execute(_try(store))  # same clear epoch
    assert handle.emulator.jobs_created == 1


def test_a_job_answered_under_its_full_resource_name_is_still_recognised(emulator_factory, tmp_path, monkeypatch):
    """A Vertex-style front answers GET with the job's full resource name
    (``projects/../batchPredictionJobs/<id>``) where the create gave the bare id: the job the task
    polled is still its own; it must not be ignored (and polled until the deadline)."""
    from airflow_provider_maas.hooks.maas import MaaSHook

    emulator_factory()
    real_get = MaaSHook.get_batch_job

    def vertex_style(self, job_name):
        job = real_get(self, job_name)
        job["name"] = f"projects/p/locations/l/batchPredictionJobs/{job['name']}"
        return job

    monkeypatch.setattr(MaaSHook, "get_batch_job", vertex_style)
    source = write_requests(tmp_path / "r.jsonl", 3)
    dest = tmp_path / "results.jsonl"
    _operator(source, dest, timeout=8).execute(_try(FakeStateStore()))
    assert_in_input_order(source, dest)


def test_resumed_on_a_worker_without_the_state_fails_without_automatic_retry(emulator_factory, tmp_path):
    """The deferred task resumes on another worker, where the (local) batch state is not: the
    error says 'clear the task to start over', so it must not be retried automatically either; an
    automatic retry would find no state and pay for every shard again."""
    import shutil

    from airflow.exceptions import AirflowFailException

    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=30)
    source = write_requests(tmp_path / "r.jsonl", 3)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    with pytest.raises(TaskDeferred) as info:
        _operator(source, dest, deferrable=True).execute(_try(store))
    assert handle.emulator.jobs_created == 1
    shutil.rmtree(tmp_path / ".results.jsonl.maas")  # what the other worker's disk holds
    event = {"status": "success", "ended": [], "message": "", "running": info.value.trigger.job_names}
    with pytest.raises(AirflowFailException):
        _operator(source, dest, deferrable=True).execute_complete(_try(store), event)


def test_execution_timeout_during_a_create_keeps_the_answer_that_came(emulator_factory, tmp_path, monkeypatch):
    """execution_timeout (AirflowTaskTimeout, raised in the main thread by SIGALRM) fires while a
    create is in flight in the pool; the pool is drained, the answer (the job's name) comes, but it
    is dropped: the retry then refuses as if the create were uncertain, and the person who clears
    pays for a second job although the first one's name was known."""
    import signal
    import time

    from airflow.exceptions import AirflowTaskTimeout

    from airflow_provider_maas.hooks.maas import MaaSHook

    handle = emulator_factory()
    real_create = MaaSHook.create_batch_job

    def slow_create(self, file_name, display_name):
        time.sleep(1.0)
        return real_create(self, file_name, display_name)

    def timeout(signum, frame):
        raise AirflowTaskTimeout("Timeout, PID: 1")

    source = write_requests(tmp_path / "r.jsonl", 3)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    monkeypatch.setattr(MaaSHook, "create_batch_job", slow_create)
    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(AirflowTaskTimeout):
            _operator(source, dest).execute(_try(store))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert handle.emulator.jobs_created == 1
    monkeypatch.setattr(MaaSHook, "create_batch_job", real_create)
    _operator(source, dest).execute(_try(store))  # the automatic retry goes on with that job
    assert handle.emulator.jobs_created == 1
    assert_in_input_order(source, dest)


def test_a_retry_after_a_redeploy_does_not_buy_the_running_shards_again(emulator_factory, tmp_path):
    """Try 1 created the job and deferred; the DAG is redeployed (max_requests_per_file tuned) and
    the task is retried automatically (the triggerer died, a worker was lost): the requests are the
    same, their job is running; a second job for them must not be created on this path."""
    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=30)
    source = write_requests(tmp_path / "r.jsonl", 6)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    with pytest.raises(TaskDeferred):
        _operator(source, dest, deferrable=True).execute(_try(store))
    assert handle.emulator.jobs_created == 1
    with pytest.raises(MaaSInputError, match="still running"):
        _operator(source, dest, deferrable=True, max_requests_per_file=3).execute(_try(store))
    assert handle.emulator.jobs_created == 1
    # A person clears the task (max_tries changes): it starts over with the new settings.
    with pytest.raises(TaskDeferred):
        _operator(source, dest, deferrable=True, max_requests_per_file=3).execute(_try(store, max_tries=5))
    assert handle.emulator.jobs_created == 3


def test_a_number_that_overflows_to_infinity_is_refused_before_upload(emulator_factory, tmp_path):
    """``1e999`` is valid JSON syntax that Python reads as inf (NaN and Infinity are refused, this
    slipped by): the service cannot parse it; refuse it before anything is uploaded or paid."""
    handle = emulator_factory()
    source = tmp_path / "r.jsonl"
    source.write_text(
        '{"request":{"contents":[{"role":"user","parts":[{"text":"a"}]}],"generationConfig":{"temperature":1e999}}}\n'
    )
    with pytest.raises(MaaSInputError, match="line 1"):
        _operator(source, tmp_path / "results.jsonl").execute(_try(FakeStateStore()))
    assert handle.emulator.jobs_created == 0


def test_each_job_of_a_batch_has_its_own_display_name(emulator_factory, tmp_path):
    """A retry round's shard 0 got the same display name as round 0's shard 0: when its create is
    uncertain, the error says 'look for a job named dag/task/run1#0 in the console', and the job
    found there is round 0's (which exists), so a person wrongly concludes the create worked."""
    handle = emulator_factory(faults=["create:1:fail-requests=index:2", "create:1:lost-500"])
    source = write_requests(tmp_path / "r.jsonl", 4)
    dest = tmp_path / "results.jsonl"
    with pytest.raises(MaaSJobCreationUncertainError) as uncertain:
        _operator(source, dest, retry_failures=["INVALID_ARGUMENT"]).execute(_try(FakeStateStore()))
    names = [job.display_name for job in handle.emulator.jobs.values()]
    assert len(names) == 2 and len(set(names)) == 2, names
    assert f"{names[0]!r}" not in str(uncertain.value)
