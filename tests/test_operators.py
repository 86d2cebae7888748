from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_maas._compat import AirflowProviderDeprecationWarning
from airflow_provider_maas.exceptions import MaaSInputError, MaaSJobFailedError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import (
    JOB_STATE_KEY,
    MaaSBatchPredictionOperator,
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
    MaaSSplitRequestsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger
from tests.compat import TaskDeferred
from tests.helpers import FakeStateStore, assert_in_input_order, make_context, write_requests
from tests.test_results import echo, result_line

# Upload ---------------------------------------------------------------------------------------


def test_upload_returns_name_unique_per_run_and_stable_across_retries(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 5)
    op = MaaSUploadFileOperator(task_id="upload", source=str(source))
    first = op.execute(make_context(run_id="run1"))
    again = op.execute(make_context(run_id="run1"))
    other_run = op.execute(make_context(run_id="run2"))
    mapped = op.execute(make_context(run_id="run1", map_index=3))
    assert first == again
    assert len({first, other_run, mapped}) == 3
    assert first in emulator.emulator.files
    assert emulator.emulator.uploads_by_name[first] == 2


def test_upload_accepts_uri_and_explicit_name(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 2)
    op = MaaSUploadFileOperator(task_id="upload", source=source.as_uri(), file_name="mine.jsonl")
    assert op.execute(make_context()) == "mine.jsonl"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no requests"),
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}]}}\n{not json\n', "line 2"),
        (b'{"foo": 1}\n', "line 1"),
        (b'{"request": {"contents": []}}\n', "line 1"),
        (b'{"request": {"contents": [{"parts": [{"text": "\xff"}]}]}}\n', "UTF-8"),
        (b'{"request": {"contents": [{"parts": [{"text": "a"}]}]}}\n' * 101, "101"),
    ],
)
def test_invalid_file_fails_and_uploads_nothing(emulator, tmp_path, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content)
    with pytest.raises(MaaSInputError, match=message):
        MaaSUploadFileOperator(task_id="upload", source=str(source)).execute(make_context())
    assert emulator.emulator.files == {}


def test_upload_missing_source_is_an_input_error(emulator, tmp_path):
    with pytest.raises(MaaSInputError, match="does not exist"):
        MaaSUploadFileOperator(task_id="upload", source=str(tmp_path / "nope.jsonl")).execute(make_context())


# Create ---------------------------------------------------------------------------------------


def _uploaded(tmp_path, count: int = 3) -> str:
    return MaaSHook().upload_file(write_requests(tmp_path / "r.jsonl", count), "c.jsonl")["name"]


def test_create_retry_reuses_the_stored_job(emulator, tmp_path, capsys):
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)
    first = op.execute(make_context(store))
    assert store.data[JOB_STATE_KEY] == {"job_name": first, "file_name": file_name}
    second = op.execute(make_context(store))
    assert second == first
    assert emulator.emulator.jobs_created == 1
    assert "Reusing job" in capsys.readouterr().out


@pytest.mark.parametrize("state", ["JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"])
def test_create_retry_after_failed_job_creates_a_new_one(emulator, tmp_path, state):
    file_name = _uploaded(tmp_path)
    store = FakeStateStore()
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name)
    first = op.execute(make_context(store))
    emulator.emulator.set_job_state(first, state)
    second = op.execute(make_context(store))
    assert second != first
    assert emulator.emulator.jobs_created == 2


def test_create_without_task_state_store_still_works(emulator, tmp_path):
    file_name = _uploaded(tmp_path)
    op = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name, display_name="custom")
    job_name = op.execute(make_context())
    assert MaaSHook().get_batch_job(job_name)["displayName"] == "custom"


def test_create_default_display_name_identifies_dag_task_run(emulator, tmp_path):
    file_name = _uploaded(tmp_path)
    job_name = MaaSCreateBatchJobOperator(task_id="create", file_name=file_name).execute(
        make_context(dag_id="d1", task_id="create", run_id="r9")
    )
    assert MaaSHook().get_batch_job(job_name)["displayName"] == "d1/create/r9"


# Download -------------------------------------------------------------------------------------


def _finished_job(tmp_path, count: int = 6) -> tuple[str, object]:
    hook = MaaSHook()
    source = write_requests(tmp_path / "r.jsonl", count)
    job = hook.create_batch_job(hook.upload_file(source, "d.jsonl")["name"], "dl")
    hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
    return job["name"], source


def test_download_writes_results_and_pushes_summary(emulator, tmp_path):
    job_name, _ = _finished_job(tmp_path)
    dest = tmp_path / "out" / "results.jsonl"
    context = make_context()
    uri = MaaSDownloadResultsOperator(task_id="download", job_name=job_name, destination=str(dest)).execute(context)
    assert uri == dest.as_uri()
    summary = context["ti"].xcom["summary"]
    assert summary["requests"] == summary["succeeded"] == 6
    assert summary["failed"] == 0
    assert summary["bytes"] == dest.stat().st_size
    assert summary["total_tokens"] > 0
    assert summary["job_name"] == job_name
    assert not (tmp_path / "out" / "results.failed.jsonl").exists() and summary["failed_uri"] is None


def test_download_partial_failures_go_to_failed_file(emulator_factory, tmp_path):
    emulator_factory(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=3)
    job_name, _ = _finished_job(tmp_path)
    dest = tmp_path / "results.jsonl"
    context = make_context()
    MaaSDownloadResultsOperator(task_id="download", job_name=job_name, destination=dest.as_uri()).execute(context)
    summary = context["ti"].xcom["summary"]
    assert (summary["succeeded"], summary["failed"]) == (4, 2)
    failed = [json.loads(line) for line in (tmp_path / "results.failed.jsonl").read_text().splitlines()]
    assert len(failed) == 2
    for line in failed:  # input format, null fields of the echo removed: ready to resubmit
        assert set(line) == {"request"}
        assert "null" not in json.dumps(line)


def test_download_refuses_destination_outside_allowed_prefix(emulator, tmp_path):
    with pytest.raises(MaaSInputError, match="outside the allowed prefix"):
        MaaSDownloadResultsOperator(
            task_id="d", job_name="1", destination=str(tmp_path / "x.jsonl"), allowed_prefix=str(tmp_path / "safe")
        ).execute(make_context())
    with pytest.raises(MaaSInputError, match=r"'\.\.'"):
        MaaSDownloadResultsOperator(
            task_id="d", job_name="1", destination=str(tmp_path) + "/safe/../../etc/x.jsonl"
        ).execute(make_context())
    assert emulator.emulator.access_log == []


# Split and merge ------------------------------------------------------------------------------


def test_split_then_merge_round_trip(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 250)
    shards = MaaSSplitRequestsOperator(
        task_id="split", source=str(source), destination_prefix=str(tmp_path / "shards")
    ).execute(make_context())
    assert shards == [(tmp_path / "shards" / f"part-0000{i}.jsonl").as_uri() for i in range(3)]
    hook = MaaSHook()
    parts = []
    for i, shard in enumerate(shards):
        job = hook.create_batch_job(hook.upload_file(shard, f"shard{i}.jsonl")["name"], f"s{i}")
        hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
        part = tmp_path / "parts" / f"part-{i}.jsonl"
        hook.download_results(job["name"], part)
        parts.append(part.as_uri())
    dest = tmp_path / "merged.jsonl"
    context = make_context()
    MaaSMergeResultsOperator(task_id="merge", results=parts, source=str(source), destination=str(dest)).execute(context)
    assert_in_input_order(source, dest)
    summary = context["ti"].xcom["summary"]
    assert summary["requests"] == summary["succeeded"] == 250
    assert summary["missing"] == 0


def _reversed_results(tmp_path: Path, source: Path) -> Path:
    """The answers to ``source`` in reverse order, as a shard's results file."""
    requests = [json.loads(line)["request"] for line in source.read_text().splitlines()]
    lines = [result_line(echo(r), r["contents"][0]["parts"][0]["text"]) for r in reversed(requests)]
    results = tmp_path / "results.jsonl"
    results.write_bytes(b"".join(lines))
    return results


def test_merge_takes_requests_the_old_name_of_source_with_a_deprecation_warning(tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 5)
    results, dest = _reversed_results(tmp_path, source), tmp_path / "merged.jsonl"
    with pytest.warns(AirflowProviderDeprecationWarning, match="requests is deprecated: use source") as warned:
        merge = MaaSMergeResultsOperator(
            task_id="m", results=[str(results)], requests=str(source), destination=str(dest)
        )
    assert len([w for w in warned if issubclass(w.category, AirflowProviderDeprecationWarning)]) == 1
    assert merge.source == str(source) and "source" in merge.template_fields and not hasattr(merge, "requests")
    merge.execute(make_context())
    assert_in_input_order(source, dest)


def test_merge_refuses_source_and_requests_together_and_neither(tmp_path):
    source, dest = str(write_requests(tmp_path / "r.jsonl", 1)), str(tmp_path / "merged.jsonl")
    with pytest.raises(MaaSInputError, match="requests is the old name of source: give source only"):
        MaaSMergeResultsOperator(task_id="m", results=[source], source=source, requests=source, destination=dest)
    with pytest.raises(MaaSInputError, match="needs source"):
        MaaSMergeResultsOperator(task_id="m", results=[source], destination=dest)
    assert not Path(dest).exists()


def test_merge_takes_sources_the_old_name_of_results_with_a_deprecation_warning(tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 5)
    results, dest = _reversed_results(tmp_path, source), tmp_path / "merged.jsonl"
    with pytest.warns(AirflowProviderDeprecationWarning, match="sources is deprecated: use results"):
        merge = MaaSMergeResultsOperator(task_id="m", sources=[str(results)], source=str(source), destination=str(dest))
    assert merge.results == [str(results)] and "results" in merge.template_fields and not hasattr(merge, "sources")
    merge.execute(make_context())
    assert_in_input_order(source, dest)
    with pytest.raises(MaaSInputError, match="sources is the old name of results: give results only"):
        MaaSMergeResultsOperator(
            task_id="m", results=[str(results)], sources=[str(results)], source=str(source), destination=str(dest)
        )
    with pytest.raises(MaaSInputError, match="needs results"):
        MaaSMergeResultsOperator(task_id="m", source=str(source), destination=str(dest))


def test_split_refuses_limits_above_the_service(tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 2)
    with pytest.raises(MaaSInputError, match="max_requests_per_file"):
        MaaSSplitRequestsOperator(
            task_id="split", source=str(source), destination_prefix=str(tmp_path), max_requests_per_file=101
        ).execute(make_context())


# One task -------------------------------------------------------------------------------------


def test_batch_operator_250_requests_in_input_order(emulator_factory, tmp_path):
    handle = emulator_factory(shuffle_results=True, normalise_requests=True, job_duration=0.2)
    source = write_requests(tmp_path / "r.jsonl", 250)
    dest = tmp_path / "out" / "results.jsonl"
    context = make_context(FakeStateStore())
    op = MaaSBatchPredictionOperator(
        task_id="predict",
        source=str(source),
        destination=str(dest),
        poll_interval=0.05,
        deferrable=False,
        max_active_jobs=2,
    )
    assert op.execute(context) == dest.as_uri()
    assert_in_input_order(source, dest)
    summary = context["ti"].xcom["summary"]
    assert (summary["requests"], summary["succeeded"], summary["failed"], summary["shards"]) == (250, 250, 0, 3)
    assert handle.emulator.jobs_created == 3
    assert not (tmp_path / "out" / ".results.jsonl.parts").exists()


def test_batch_operator_partial_failures_to_failed_file(emulator_factory, tmp_path):
    emulator_factory(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=10, job_duration=0.1)
    source = write_requests(tmp_path / "r.jsonl", 120)
    dest = tmp_path / "results.jsonl"
    context = make_context()
    MaaSBatchPredictionOperator(
        task_id="p", source=str(source), destination=str(dest), poll_interval=0.05, deferrable=False
    ).execute(context)
    summary = context["ti"].xcom["summary"]
    assert summary["failed"] == 12
    failed_lines = (tmp_path / "results.failed.jsonl").read_bytes().splitlines(keepends=True)
    source_lines = source.read_bytes().splitlines(keepends=True)
    assert len(failed_lines) == 12
    assert set(failed_lines) <= set(source_lines)  # the original input lines, ready to resubmit
    with pytest.raises(MaaSJobFailedError, match="fail_on_partial"):
        MaaSBatchPredictionOperator(
            task_id="p",
            source=str(source),
            destination=str(dest),
            poll_interval=0.05,
            deferrable=False,
            fail_on_partial=True,
        ).execute(make_context())


def test_batch_operator_retry_reattaches_to_its_jobs(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.3)
    source = write_requests(tmp_path / "r.jsonl", 150)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    op = MaaSBatchPredictionOperator(
        task_id="p", source=str(source), destination=str(dest), poll_interval=0.05, deferrable=True
    )
    with pytest.raises(TaskDeferred) as info:  # first try: jobs created, then the worker "dies"
        op.execute(make_context(store))
    assert isinstance(info.value.trigger, MaaSBatchJobsTrigger)
    assert handle.emulator.jobs_created == 2
    retry = MaaSBatchPredictionOperator(
        task_id="p", source=str(source), destination=str(dest), poll_interval=0.05, deferrable=False
    )
    retry.execute(make_context(store))
    assert handle.emulator.jobs_created == 2
    assert_in_input_order(source, dest)


def test_batch_operator_resubmits_failed_shard(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=30)
    source = write_requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "results.jsonl"
    store = FakeStateStore()
    op = MaaSBatchPredictionOperator(
        task_id="p", source=str(source), destination=str(dest), poll_interval=0.05, deferrable=True, shard_retries=1
    )
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context(store))
    (first_job,) = info.value.trigger.job_names
    handle.emulator.set_job_state(first_job, "JOB_STATE_FAILED", error={"code": 13, "message": "internal"})
    with pytest.raises(TaskDeferred) as again:  # the real trigger's event, fed to the real execute_complete
        op.execute_complete(make_context(store), _trigger_event(info.value.trigger))
    (second_job,) = again.value.trigger.job_names
    assert second_job != first_job
    handle.emulator.set_job_state(second_job, "JOB_STATE_SUCCEEDED")
    assert op.execute_complete(make_context(store), _trigger_event(again.value.trigger)) == dest.as_uri()
    assert_in_input_order(source, dest)
    assert handle.emulator.jobs_created == 2


def _trigger_event(trigger):
    import asyncio

    async def first():
        return (await trigger.run().__anext__()).payload

    return asyncio.run(first())


def test_download_extracts_inline_images(emulator_factory, tmp_path):
    emulator_factory(image_output=True)
    job_name, _ = _finished_job(tmp_path, count=3)
    dest = tmp_path / "out" / "results.jsonl"
    context = make_context()
    MaaSDownloadResultsOperator(
        task_id="download", job_name=job_name, destination=str(dest), extract_images=True
    ).execute(context)
    images = context["ti"].xcom["images"]
    assert len(images) == 3
    assert context["ti"].xcom["summary"]["images"] == 3
    for uri in images:
        data = Path(uri.removeprefix("file://")).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert uri.startswith((tmp_path / "out" / "results_images").as_uri())


def test_upload_normalises_blank_lines_and_missing_final_newline(emulator, tmp_path):
    source = tmp_path / "messy.jsonl"
    line = b'{"request": {"contents": [{"role": "user", "parts": [{"text": "hi %d"}]}]}}'
    source.write_bytes(line % 1 + b"\n\n  \n" + line % 2)  # a blank line, a whitespace line, no final newline
    name = MaaSUploadFileOperator(task_id="upload", source=str(source)).execute(make_context())
    uploaded = emulator.emulator.files[name]
    assert uploaded["request_count"] == 2
    assert int(uploaded["size"]) == len(line % 1) + len(line % 2) + 2
