"""The one-task batch's loop (``batch/run.py``), driven without Airflow's operator or task runner:
an in-memory service, a plain context, the steps the operator maps to deferral or sleep."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.run import BatchRun, Wait
from airflow_provider_maas.batch.settings import BatchSettings
from airflow_provider_maas.client.states import job_outcome
from airflow_provider_maas.exceptions import MaaSTimeoutError
from tests.helpers import assert_in_input_order, batch_settings, make_context, write_requests


class FakeService:
    """The calls of :class:`~airflow_provider_maas.batch.driver.JobService`, in memory: a job ends
    after ``polls`` polls; its results answer each request with its prompt, in reverse order."""

    def __init__(self, polls: int = 1) -> None:
        self.polls = polls
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.most_running = 0
        self._lock = threading.Lock()

    def upload_file(self, source: Any, name: str) -> dict[str, Any]:
        with self._lock:
            self.files[name] = source.read()
        return {"name": name}

    def create_batch_job(self, file_name: str, display_name: str) -> dict[str, Any]:
        with self._lock:
            name = f"job{len(self.jobs) + 1}"
            self.jobs[name] = {"file": file_name, "polls": 0}
            running = sum(job["polls"] < self.polls for job in self.jobs.values())  # not seen ended
            self.most_running = max(self.most_running, running)
        return {"name": name, "state": "JOB_STATE_PENDING"}

    def get_batch_job(self, job_name: str) -> dict[str, Any]:
        with self._lock:
            job = self.jobs[job_name]
            job["polls"] += 1
            ended = job["polls"] >= self.polls
        return {"name": job_name, "state": "JOB_STATE_SUCCEEDED" if ended else "JOB_STATE_RUNNING"}

    def download_results(self, job_name: str, destination: Any) -> dict[str, Any]:
        with self._lock:
            requests = [json.loads(line)["request"] for line in self.files[self.jobs[job_name]["file"]].splitlines()]
        lines = []
        for request in reversed(requests):  # the service does not keep the input order
            text = request["contents"][0]["parts"][0]["text"]
            response = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}]}
            lines.append(json.dumps({"request": request, "response": response, "status": ""}) + "\n")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text("".join(lines))
        return {}


def _settings(source: Path, dest: Path, **changes: Any) -> BatchSettings:
    """Small shards, few jobs and fast polls against the in-memory service."""
    small = {"max_requests_per_file": 2, "max_active_jobs": 2, "max_parallel_transfers": 4}
    return batch_settings(source, dest, **{**small, "poll_interval": 0.01, "max_consecutive_poll_errors": 3, **changes})


def _names(key: Any, plan: Any) -> tuple[str, str]:
    return f"upload-{key.round}-{key.index}", f"batch#{key}"


def _start(tmp_path: Path, service: FakeService, **changes: Any) -> tuple[BatchRun, Path, Path]:
    source, dest = write_requests(tmp_path / "in.jsonl", 9), tmp_path / "out.jsonl"
    context = make_context()
    journal = BatchJournal.for_task(str(dest), context)
    run = BatchRun.start(context, journal, _settings(source, dest, **changes), hook=service, names=_names)
    return run, source, dest


def test_a_run_steps_until_done_within_max_active_jobs_and_writes_in_input_order(tmp_path):
    service = FakeService(polls=2)
    run, source, dest = _start(tmp_path, service)
    waits: list[Wait] = []
    with run:
        while (wait := run.step(deferrable=False)) is not None:
            assert not wait.in_triggerer and len(wait.jobs) <= 2  # max_active_jobs, from the settings
            waits.append(wait)
    assert waits and waits[0].fire_after == 1  # shards pending: wake once a slot is free
    assert len(service.jobs) == 5 and service.most_running <= 2  # 9 requests, 2 per file
    summary = run.finish()
    assert summary["succeeded"] == 9 and summary["failed"] == 0
    assert_in_input_order(source, dest)
    run.check(summary)
    run.close()
    assert not run.journal.root.exists()  # the state is removed once the results are written


def test_a_deferrable_run_hands_its_running_jobs_to_the_trigger_and_resumes_on_their_outcomes(tmp_path):
    service = FakeService(polls=1)
    run, source, dest = _start(tmp_path, service, poll_interval=60)  # jobs just created are not polled again
    resumes = 0
    while True:
        with run:
            wait = run.step(deferrable=True)
        if wait is None:
            break
        assert wait.in_triggerer and wait.jobs
        stored = BatchJournal(run.journal.root).load()  # settled before the wait: a new try finds the jobs
        assert stored is not None and set(wait.jobs) <= set(stored.by_job())
        ended = [job_outcome(service.get_batch_job(name), name) for name in wait.jobs]  # what the trigger does
        run = BatchRun.resume(
            run.context, run.journal, run.settings, ended=ended, running=[], hook=service, names=_names
        )
        resumes += 1
    assert resumes == 3 and len(service.jobs) == 5  # each shard paid once across the resumes
    run.check(summary := run.finish())
    run.close()
    assert summary["succeeded"] == 9
    assert_in_input_order(source, dest)


def test_a_step_past_the_deadline_raises_naming_the_running_jobs(tmp_path):
    service = FakeService(polls=10**6)  # never ends
    run, _, _ = _start(tmp_path, service, timeout=0.05)
    with run, pytest.raises(MaaSTimeoutError, match="job1"):
        while (wait := run.step(deferrable=False)) is not None:
            assert wait.until is not None
            time.sleep(run.settings.poll_interval + 0.05)
    assert len(service.jobs) == 2  # nothing more was created after the deadline


def test_step_outside_its_with_block_is_refused(tmp_path):
    run, _, _ = _start(tmp_path, FakeService())
    with pytest.raises(RuntimeError, match="with"):
        run.step(deferrable=False)


def test_the_reuse_results_files_are_resolved_and_checked_once_per_try(tmp_path, monkeypatch):
    from airflow_provider_maas.batch import settings as settings_module

    service = FakeService()
    run, source, dest = _start(tmp_path, service)
    with run:
        while run.step(deferrable=False) is not None:
            pass
    run.check(run.finish())
    run.close()
    calls = []
    real = settings_module.reuse_paths
    monkeypatch.setattr(settings_module, "reuse_paths", lambda value: calls.append(value) or real(value))
    again = tmp_path / "again.jsonl"
    context = make_context(run_id="run2")
    settings = _settings(source, again, reuse_results=str(dest))
    rerun = BatchRun.start(context, BatchJournal.for_task(str(again), context), settings, hook=service, names=_names)
    with rerun:
        assert rerun.step(deferrable=False) is None  # every answer reused: nothing to wait for
    summary = rerun.finish()
    assert summary["reused"] == 9 and summary["sent"] == 0 and len(service.jobs) == 5  # no new job
    assert calls == [str(dest)]  # planned, merged, counted: one resolution and check
    assert_in_input_order(source, again)
