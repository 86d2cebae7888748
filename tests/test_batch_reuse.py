"""MaaSBatchPredictionOperator pays once per answer: request-level retries, reuse_results, identical
requests sent once, cost in the summary. Against the emulator over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from tests.compat import TaskDeferred
from tests.helpers import assert_in_input_order, make_context, write_requests
from tests.test_storage import memfs  # noqa: F401  (fixture)

EMULATED = ["Emulated failure"]  # the emulator's failed requests say so (a 400: not retried by default)


def _operator(source: Path, dest: Path, **kwargs) -> MaaSBatchPredictionOperator:
    kwargs = {"poll_interval": 0.05, "deferrable": False, **kwargs}
    return MaaSBatchPredictionOperator(task_id="p", source=str(source), destination=str(dest), **kwargs)


def _run(source: Path, dest: Path, **kwargs) -> dict:
    context = make_context()
    _operator(source, dest, **kwargs).execute(context)
    return context["ti"].xcom["summary"]


def _sent_per_job(handle) -> list[int]:
    return [job.request_count for job in handle.emulator.jobs.values()]


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in path.read_bytes().splitlines()]


def test_failed_requests_are_sent_again_in_one_extra_job_and_end_in_input_order(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:fail-requests=index:1,3"], shuffle_results=True)
    source = write_requests(tmp_path / "r.jsonl", 6)
    dest = tmp_path / "results.jsonl"
    summary = _run(source, dest, retry_failures=EMULATED)
    assert handle.emulator.jobs_created == 2 and _sent_per_job(handle) == [6, 2]
    records = assert_in_input_order(source, dest)
    assert all(r.succeeded for r in records)
    assert summary["retry_rounds"] == [{"round": 1, "retried": 2, "succeeded": 2}]
    assert (summary["succeeded"], summary["failed"], summary["jobs"]) == (6, 0, 2)
    assert summary["sent"] == sum(_sent_per_job(handle)) == 8  # every send counted, the retry round's included
    assert not (tmp_path / "results.failed.jsonl").exists() and summary["failed_uri"] is None
    assert not BatchJournal.for_task(dest, make_context()).root.exists()  # rounds' files removed


def test_a_request_failing_every_round_goes_to_the_failed_file_with_its_last_reason(emulator_factory, tmp_path):
    handle = emulator_factory(fail_every=2)  # every 2nd request of every job fails
    source = write_requests(tmp_path / "r.jsonl", 4)
    dest = tmp_path / "results.jsonl"
    summary = _run(source, dest, retry_failures=EMULATED)
    assert handle.emulator.jobs_created == 2 and _sent_per_job(handle) == [4, 2]
    records = assert_in_input_order(source, dest)
    assert [r.succeeded for r in records] == [True, True, True, False]
    assert "request 2 of the input file" in records[3].status  # round 1's reason: 2nd of its file
    assert _texts(tmp_path / "results.failed.jsonl") == ["Question 3: what is 3 + 3?"]
    assert summary["retry_rounds"] == [{"round": 1, "retried": 2, "succeeded": 1}]


def test_missing_results_are_retried_by_default(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:partial-missing=2"])
    source = write_requests(tmp_path / "r.jsonl", 5)
    dest = tmp_path / "results.jsonl"
    summary = _run(source, dest)
    assert _sent_per_job(handle) == [5, 2]
    assert all(r.succeeded for r in assert_in_input_order(source, dest))
    assert summary["retry_rounds"] == [{"round": 1, "retried": 2, "succeeded": 2}] and summary["missing"] == 0


def test_client_errors_are_not_retried_by_default(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:fail-requests=index:2"])
    source = write_requests(tmp_path / "r.jsonl", 3)
    summary = _run(source, tmp_path / "results.jsonl")
    assert handle.emulator.jobs_created == 1
    assert (summary["failed"], summary["retry_rounds"]) == (1, [])


def test_request_retries_zero_sends_no_round(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:fail-requests=index:2"])
    source = write_requests(tmp_path / "r.jsonl", 3)
    summary = _run(source, tmp_path / "results.jsonl", request_retries=0, retry_failures=EMULATED)
    assert handle.emulator.jobs_created == 1 and summary["failed"] == 1


def test_reuse_of_an_identical_earlier_run_creates_no_job(emulator_factory, tmp_path):
    handle = emulator_factory(shuffle_results=True, normalise_requests=True)
    source = write_requests(tmp_path / "r.jsonl", 120)
    first = tmp_path / "day1" / "results.jsonl"
    _run(source, first)
    jobs = handle.emulator.jobs_created
    uploads = len(handle.emulator.files)
    second = tmp_path / "day2" / "results.jsonl"
    summary = _run(source, second, reuse_results=str(first))
    assert (handle.emulator.jobs_created, len(handle.emulator.files)) == (jobs, uploads)  # nothing sent
    assert second.read_bytes() == first.read_bytes()
    assert (summary["reused"], summary["sent"], summary["jobs"], summary["shards"]) == (120, 0, 0, 0)


def test_with_ten_percent_changed_only_those_are_sent(emulator_factory, tmp_path):
    handle = emulator_factory(shuffle_results=True, normalise_requests=True)
    source = write_requests(tmp_path / "r.jsonl", 50)
    first = tmp_path / "day1.jsonl"
    _run(source, first, max_requests_per_file=20)
    lines = source.read_text().splitlines()
    changed = {3, 17, 22, 40, 49}
    for i in changed:
        lines[i] = lines[i].replace("what is", "what, really, is")
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    before = handle.emulator.jobs_created
    second = tmp_path / "day2.jsonl"
    summary = _run(edited, second, reuse_results=[str(first)], max_requests_per_file=20)
    assert handle.emulator.jobs_created == before + 1 and _sent_per_job(handle)[-1] == len(changed)
    assert (summary["reused"], summary["sent"]) == (45, 5)
    records = assert_in_input_order(edited, second)
    assert all(r.succeeded for r in records)
    assert [i for i, text in enumerate(_texts(second)) if "really" in text] == sorted(changed)


def test_identical_requests_are_sent_once_unless_deduplicate_is_off(emulator_factory, tmp_path):
    handle = emulator_factory()
    source = tmp_path / "r.jsonl"
    lines = write_requests(tmp_path / "base.jsonl", 3).read_text().splitlines()
    source.write_text("\n".join([lines[0], lines[1], lines[0], lines[2], lines[0]]) + "\n")
    dest = tmp_path / "results.jsonl"
    summary = _run(source, dest)
    assert _sent_per_job(handle) == [3]
    records = assert_in_input_order(source, dest)
    assert records[0].text == records[2].text == records[4].text
    assert (summary["requests"], summary["deduplicated"], summary["sent"]) == (5, 2, 3)
    _run(source, tmp_path / "samples.jsonl", deduplicate=False)
    assert _sent_per_job(handle) == [3, 5]


def test_cost_of_the_run_and_cost_avoided(emulator_factory, tmp_path):
    emulator_factory()
    source = write_requests(tmp_path / "r.jsonl", 10)
    first = tmp_path / "first.jsonl"
    prices = {"prompt": 0.3, "candidates": 2.5}
    one = _run(source, first, prices=prices)
    paid = one["prompt_tokens"] * 0.3 + (one["candidates_tokens"] + one["thoughts_tokens"]) * 2.5
    assert one["cost_usd"] == pytest.approx(paid / 1e6)
    assert one["cost_avoided_usd"] == {"reused": 0.0, "deduplicated": 0.0}
    two = _run(source, tmp_path / "second.jsonl", prices=prices, reuse_results=str(first))
    assert two["cost_usd"] == 0.0 and two["cost_avoided_usd"]["reused"] == pytest.approx(one["cost_usd"])
    assert two["tokens_reused"]["total_tokens"] == one["total_tokens"] > 0


def test_retry_round_survives_retries_of_the_task_without_a_second_job(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:fail-requests=index:2"], job_duration=600)
    source = write_requests(tmp_path / "r.jsonl", 4)
    dest = tmp_path / "results.jsonl"

    def attempt():
        op = _operator(source, dest, deferrable=True, retry_failures=EMULATED)
        context = make_context()
        return op.execute(context), context

    def end_every_job():
        for name in list(handle.emulator.jobs):
            handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")

    with pytest.raises(TaskDeferred):
        attempt()  # round 0's job runs
    end_every_job()
    with pytest.raises(TaskDeferred):
        attempt()  # a new try: round 0 downloaded, round 1 created, deferred on its job
    assert handle.emulator.jobs_created == 2
    assert len(BatchJournal.for_task(dest, make_context()).load().rounds) == 2
    with pytest.raises(TaskDeferred):
        attempt()  # another try finds round 1's job running: nothing created
    assert handle.emulator.jobs_created == 2
    end_every_job()
    _, context = attempt()
    assert handle.emulator.jobs_created == 2
    assert all(r.succeeded for r in assert_in_input_order(source, dest))
    assert context["ti"].xcom["summary"]["retry_rounds"] == [{"round": 1, "retried": 1, "succeeded": 1}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"request_retries": -1}, "request_retries"),
        ({"retry_failures": "INTERNAL"}, "a single pattern goes in a list"),
        ({"retry_failures": ["("]}, "not a valid regular expression"),
        ({"prices": {"prompt": 1}}, "needs candidates"),
    ],
)
def test_bad_settings_are_refused_when_the_dag_is_parsed(tmp_path, kwargs, message):
    with pytest.raises(MaaSInputError, match=message):
        _operator(tmp_path / "r.jsonl", tmp_path / "o.jsonl", **kwargs)


def test_missing_or_damaged_reuse_results_refused_before_anything_is_sent(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 3)
    with pytest.raises(MaaSInputError, match=r"reuse_results\[0\] .*nope.jsonl is not a file"):
        _run(source, tmp_path / "o.jsonl", reuse_results=str(tmp_path / "nope.jsonl"))
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"request": {"a": 1}, "response": {}, "status": ""}\nnot json\n')
    with pytest.raises(MaaSInputError, match=r"damaged.jsonl.* line 2"):
        _run(source, tmp_path / "o.jsonl", reuse_results=[str(damaged)], reuse_other_models=True)
    assert emulator.emulator.jobs_created == 0 and not emulator.emulator.files


def test_example_dag_reuses_an_earlier_run(emulator_factory, tmp_path, monkeypatch):
    from tests.test_example_dags import EXAMPLES, _load_dag, _only

    handle = emulator_factory(job_duration=0.5, shuffle_results=True, normalise_requests=True)
    dag = _load_dag("example_maas_batch_single_task", monkeypatch, tmp_path / "first")
    assert dag.test().state == "success"
    first = _only("results.jsonl", tmp_path / "first")
    assert handle.emulator.jobs_created == 1
    dag = _load_dag("example_maas_batch_single_task", monkeypatch, tmp_path / "second")
    assert dag.test(run_conf={"reuse_results": str(first)}).state == "success"
    assert handle.emulator.jobs_created == 1  # every answer reused: no job
    assert_in_input_order(EXAMPLES / "data" / "example_requests.jsonl", _only("results.jsonl", tmp_path / "second"))


def test_object_store_reuse_and_retry_round_leave_only_the_results(emulator_factory, tmp_path, request):
    store_fs = request.getfixturevalue("memfs")
    handle = emulator_factory(faults=["create:1:fail-requests=index:2"])
    source = write_requests(tmp_path / "r.jsonl", 30)
    first = "memory://bucket/day1/results.jsonl"
    _run(source, first, retry_failures=EMULATED)  # round 1 read from the object store
    assert handle.emulator.jobs_created == 2
    summary = _run(source, "memory://bucket/day2/results.jsonl", reuse_results=first)
    assert handle.emulator.jobs_created == 2 and summary["reused"] == 30
    assert store_fs.cat("bucket/day2/results.jsonl") == store_fs.cat("bucket/day1/results.jsonl")
    assert sorted(store_fs.store) == [  # the results and the ENDPOINT that wrote them; none failed: no failed file
        f"/bucket/{day}/{name}" for day in ("day1", "day2") for name in (".results.jsonl.origin.json", "results.jsonl")
    ]


def test_example_dag_retries_missing_requests_in_one_more_job(emulator_factory, tmp_path, monkeypatch):
    from tests.test_example_dags import EXAMPLES, _load_dag, _only

    handle = emulator_factory(job_duration=0.5, shuffle_results=True, faults=["create:1:partial-missing=2"])
    dag = _load_dag("example_maas_batch_single_task", monkeypatch, tmp_path)
    assert dag.test().state == "success"  # real trigger, real resume (execute_complete) into round 1
    assert handle.emulator.jobs_created == 2 and _sent_per_job(handle)[-1] == 2
    records = assert_in_input_order(EXAMPLES / "data" / "example_requests.jsonl", _only("results.jsonl", tmp_path))
    assert all(r.succeeded for r in records)
