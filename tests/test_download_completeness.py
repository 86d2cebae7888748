"""The download operator checks what it got against the job's completionStats: requests the job
counted but the results file lacks are ``missing`` (and failed), repeated lines are
``duplicates`` (not extra requests); with ``source=`` (the uploaded requests file) it also writes
the results in input order and every missing or failed request to the failed file. ``source`` was
called ``requests``: the old name still works with a deprecation warning."""

from __future__ import annotations

import json

import pytest

from airflow_provider_maas._compat import AirflowProviderDeprecationWarning
from airflow_provider_maas.batch.answers.results import MISSING_STATUS
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSDownloadResultsOperator
from tests.helpers import assert_in_input_order, make_context, write_requests


def _job(tmp_path, count: int = 7):
    hook = MaaSHook()
    source = write_requests(tmp_path / "requests.jsonl", count)
    job = hook.create_batch_job(hook.upload_file(source, "c.jsonl")["name"], "completeness")
    hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
    return job["name"], source


def _download(tmp_path, job_name, **kwargs):
    context = make_context()
    dest = tmp_path / "out" / "results.jsonl"
    uri = MaaSDownloadResultsOperator(task_id="download", job_name=job_name, destination=str(dest), **kwargs).execute(
        context
    )
    assert uri == dest.as_uri()
    return dest, context["ti"].xcom["summary"]


def _lines(path):
    return path.read_text().splitlines()


def test_results_missing_from_the_file_are_reported(emulator_factory, tmp_path, capsys):
    emulator_factory(faults=("create:1:partial-missing=2",))
    job_name, _ = _job(tmp_path)
    dest, summary = _download(tmp_path, job_name)
    assert len(_lines(dest)) == 5
    assert (summary["requests"], summary["succeeded"], summary["failed"], summary["missing"]) == (7, 5, 2, 2)
    assert summary["expected_requests"] == 7 and summary["duplicates"] == 0
    # Without source= the missing requests are not known, so nothing goes to a failed file: none is written.
    assert summary["failed_uri"] is None and not (tmp_path / "out" / "results.failed.jsonl").exists()
    out = capsys.readouterr().out
    assert "2 requests have no result line" in out
    assert "source=" in out  # says how to get them into the failed file


def test_with_source_missing_ones_go_to_the_failed_file_in_input_order(emulator_factory, tmp_path):
    emulator_factory(faults=("create:1:partial-missing=2",), shuffle_results=True)
    job_name, source = _job(tmp_path)
    dest, summary = _download(tmp_path, job_name, source=str(source))
    assert (summary["requests"], summary["succeeded"], summary["failed"], summary["missing"]) == (7, 5, 2, 2)
    assert_in_input_order(source, dest, expect_missing=2)
    inputs = _lines(source)
    assert _lines(tmp_path / "out" / "results.failed.jsonl") == inputs[-2:]  # the input lines themselves
    texts = [json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in _lines(dest)]
    assert texts == [json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in inputs]
    assert [json.loads(line)["status"] for line in _lines(dest)[-2:]] == [MISSING_STATUS] * 2


def test_duplicate_lines_are_not_counted_as_requests(emulator_factory, tmp_path, capsys):
    emulator_factory(faults=("create:1:duplicate-lines=2",))
    job_name, _ = _job(tmp_path)
    dest, summary = _download(tmp_path, job_name)
    assert len(_lines(dest)) == 9  # the service's file, as it came
    assert (summary["requests"], summary["succeeded"], summary["failed"], summary["missing"]) == (7, 7, 0, 0)
    assert summary["duplicates"] == 2
    assert "2 result lines repeat an earlier line" in capsys.readouterr().out


def test_duplicate_lines_with_source_are_kept_once(emulator_factory, tmp_path):
    emulator_factory(faults=("create:1:duplicate-lines=2",), shuffle_results=True)
    job_name, source = _job(tmp_path)
    dest, summary = _download(tmp_path, job_name, source=source.as_uri())
    assert_in_input_order(source, dest)
    assert (summary["requests"], summary["succeeded"], summary["duplicates"], summary["unmatched"]) == (7, 7, 2, 0)
    assert not (tmp_path / "out" / "results.failed.jsonl").exists() and summary["failed_uri"] is None


def test_complete_results_report_no_difference(emulator, tmp_path, capsys):
    job_name, source = _job(tmp_path)
    _, summary = _download(tmp_path, job_name, source=str(source))
    assert (summary["requests"], summary["expected_requests"], summary["missing"], summary["duplicates"]) == (
        7,
        7,
        0,
        0,
    )
    assert "differ" not in capsys.readouterr().out


@pytest.mark.usefixtures("without_store_providers")
@pytest.mark.parametrize("destination", ["s3://bucket/out/results.jsonl"])
def test_download_checks_the_destination_before_any_call(emulator, destination):
    with pytest.raises(MaaSInputError, match=r"apache-airflow-providers-amazon\[s3fs\]"):
        MaaSDownloadResultsOperator(task_id="d", job_name="1", destination=destination).execute(make_context())
    assert emulator.emulator.access_log == []


def test_a_missing_source_is_refused_before_downloading(emulator, tmp_path):
    with pytest.raises(MaaSInputError, match=r"source .* does not exist"):
        MaaSDownloadResultsOperator(
            task_id="d", job_name="1", destination=str(tmp_path / "r.jsonl"), source=str(tmp_path / "nope.jsonl")
        ).execute(make_context())
    assert emulator.emulator.access_log == []


def test_requests_is_the_old_name_of_source_and_still_works_with_a_deprecation_warning(emulator_factory, tmp_path):
    emulator_factory(shuffle_results=True)
    job_name, source = _job(tmp_path)
    with pytest.warns(AirflowProviderDeprecationWarning, match="requests is deprecated: use source") as warned:
        dest, summary = _download(tmp_path, job_name, requests=str(source))
    assert len([w for w in warned if issubclass(w.category, AirflowProviderDeprecationWarning)]) == 1
    assert_in_input_order(source, dest)
    assert (summary["requests"], summary["succeeded"], summary["missing"]) == (7, 7, 0)


def test_source_and_requests_together_are_refused_before_any_call(emulator, tmp_path):
    source = write_requests(tmp_path / "requests.jsonl", 2)
    with pytest.raises(MaaSInputError, match="requests is the old name of source: give source only"):
        MaaSDownloadResultsOperator(
            task_id="d", job_name="1", destination=str(tmp_path / "r.jsonl"), source=str(source), requests=str(source)
        )
    assert emulator.emulator.access_log == []
