"""Reuse only answers of the same model (issue 20): the batch and download operators record the
ENDPOINT (which fixes the model) beside the results they write; ``reuse_results`` written by another
ENDPOINT are left unused, and counted, unless ``reuse_other_models=True``. And a mistyped ENDPOINT
(404 on upload or create) fails on its first try, without Airflow's retries."""

from __future__ import annotations

import json

import pytest

from airflow_provider_maas._compat import AirflowFailException
from airflow_provider_maas.batch.record.origin import origin_path, read_origin
from airflow_provider_maas.exceptions import MaaSInputError, MaaSNotFoundError, MaaSUnknownEndpointError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSDownloadResultsOperator
from tests.conftest import API_KEY, ENDPOINT
from tests.helpers import batch_operator, make_context, write_requests
from tests.test_fail_fast import run_fail_fast_dag


def run(source, dest, **kwargs) -> dict:
    context = make_context()
    batch_operator(source, dest, **kwargs).execute(context)
    return context["ti"].xcom["summary"]


def test_answers_of_another_endpoint_are_not_reused_by_default(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 20)
    first = tmp_path / "day1.jsonl"
    run(source, first)
    assert read_origin(str(first)) == ENDPOINT
    assert emulator.emulator.jobs_created == 1

    same = run(source, tmp_path / "day2.jsonl", reuse_results=str(first))
    assert same["reused"] == 20 and same["reuse_skipped_other_model"] == 0
    assert emulator.emulator.jobs_created == 1

    # The same file, as if another ENDPOINT (another model) had written it.
    record = origin_path(str(first))
    record.write_bytes(json.dumps({"endpoint": "another-endpoint"}).encode())
    other = run(source, tmp_path / "day3.jsonl", reuse_results=str(first))
    assert other["reused"] == 0 and other["sent"] == 20 and other["reuse_skipped_other_model"] == 20
    assert emulator.emulator.jobs_created == 2

    allowed = run(source, tmp_path / "day4.jsonl", reuse_results=str(first), reuse_other_models=True)
    assert allowed["reused"] == 20 and allowed["reuse_skipped_other_model"] == 0
    assert emulator.emulator.jobs_created == 2


def test_a_results_file_without_a_record_stops_before_anything_is_sent_unless_allowed(emulator, tmp_path):
    """Issue 20 finding 7: results of an earlier provider version (no record) may be another model's:
    neither reused silently nor paid again silently; reuse_other_models=True reuses them."""
    source = write_requests(tmp_path / "r.jsonl", 5)
    first = tmp_path / "day1.jsonl"
    run(source, first)
    origin_path(str(first)).unlink()
    jobs = emulator.emulator.jobs_created
    with pytest.raises(MaaSInputError, match=r"day1\.jsonl: no record of the ENDPOINT.*reuse_other_models=True"):
        run(source, tmp_path / "day2.jsonl", reuse_results=str(first))
    assert emulator.emulator.jobs_created == jobs
    assert run(source, tmp_path / "day3.jsonl", reuse_results=str(first), reuse_other_models=True)["reused"] == 5


def test_the_download_operator_records_its_endpoint(emulator, tmp_path):
    hook = MaaSHook()
    hook.upload_file(write_requests(tmp_path / "r.jsonl", 2), "r.jsonl")
    job = hook.create_batch_job("r.jsonl", "origin")["name"]
    hook.wait_for_batch_job(job, poll_interval=0.05, timeout=30)
    dest = tmp_path / "d.jsonl"
    MaaSDownloadResultsOperator(task_id="d", job_name=job, destination=str(dest)).execute(make_context())
    assert read_origin(str(dest)) == ENDPOINT


@pytest.mark.parametrize("call", ["upload", "create"])
def test_a_mistyped_endpoint_fails_fast_on_upload_and_create(emulator, tmp_path, call):
    hook = MaaSHook(endpoint="mistyped-endpoint")
    with pytest.raises(MaaSUnknownEndpointError) as info:
        if call == "upload":
            hook.upload_file(write_requests(tmp_path / "r.jsonl", 1), "r.jsonl")
        else:
            hook.create_batch_job("r.jsonl", "x")
    assert isinstance(info.value, AirflowFailException) and isinstance(info.value, MaaSNotFoundError)
    assert "ENDPOINT" in str(info.value) and info.value.status_code == 404
    assert len(emulator.emulator.access_log) == 1  # one call: no retry by the hook either


def test_a_mistyped_endpoint_fails_each_task_on_its_first_try(emulator, tmp_path, monkeypatch):
    """A real DAG run (``dag.test()``, retries=3 each): the upload, the create and the batch operator
    fail on their first try."""
    tasks = ("upload", "create", "batch")
    tries = run_fail_fast_dag(
        monkeypatch, tmp_path, emulator.base_url, key=API_KEY, endpoint="mistyped", task_ids=tasks
    )
    assert tries == {task: ("failed", 1) for task in tasks}, tries
