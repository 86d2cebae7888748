"""Issue 22, against the emulator over loopback HTTP: the dry run pays nothing, the budget cap stops
creates (across tries and resumes), the canary decides whether the rest is sent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.exceptions import (
    MaaSBudgetExceededError,
    MaaSCanaryFailedError,
    MaaSInputError,
    MaaSTimeoutError,
)
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from tests.compat import TaskDeferred
from tests.cost_helpers import EMULATOR_MAX_OUT, PRICES, shard_operator, succeeded_event, write_priced_requests
from tests.helpers import FakeStateStore, assert_in_input_order, make_context

#: The emulator's output is exactly maxOutputTokens: at PRICES a job's reported cost equals its worst
#: case, so the cap's arithmetic is exact.
MAX_OUT = EMULATOR_MAX_OUT
JOB_WORST = 5 * MAX_OUT / 1_000_000  # a job of 5 requests at MAX_OUT output tokens each


def _requests(path: Path, count: int, *, repeat: int = 0, max_out: int | None = MAX_OUT) -> Path:
    """``count`` requests, then repeats of requests 5, 6... (``repeat`` of them)."""
    config = {"maxOutputTokens": max_out} if max_out else None
    return write_priced_requests(path, [*range(count), *range(5, 5 + repeat)], config=config)


# Dry run ----------------------------------------------------------------------------------------
def test_a_dry_run_uploads_nothing_creates_nothing_and_its_plan_matches_the_input(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 12, repeat=3)
    earlier = tmp_path / "earlier.jsonl"
    shard_operator(_requests(tmp_path / "first.jsonl", 2), earlier).execute(make_context())  # answers requests 0, 1
    uploads_before, jobs_before = len(emulator.emulator.files), emulator.emulator.jobs_created
    context = make_context()
    op = shard_operator(source, tmp_path / "out.jsonl", dry_run=True, prices=PRICES, reuse_results=str(earlier))
    returned = op.execute(context)
    plan = context["ti"].xcom["plan"]
    assert returned == plan
    assert (len(emulator.emulator.files), emulator.emulator.jobs_created) == (uploads_before, jobs_before)
    assert (plan["requests"], plan["unique_requests"], plan["reused"], plan["to_send"]) == (15, 12, 2, 10)
    assert plan["deduplicated"] == 3
    assert (plan["shards"], plan["jobs"]) == (2, 2)
    assert plan["max_output_tokens"] == 10 * MAX_OUT
    assert plan["worst_case_cost_usd"] == pytest.approx(2 * JOB_WORST)
    assert "characters" in plan["basis"]
    assert not (tmp_path / "out.jsonl").exists()
    assert not BatchJournal.for_task(tmp_path / "out.jsonl", context).root.exists()


def test_the_dry_run_estimate_is_the_emulators_reported_prompt_tokens(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 7, max_out=None)
    context = make_context()
    shard_operator(source, tmp_path / "plan.jsonl", dry_run=True, default_max_output_tokens=100).execute(context)
    plan = context["ti"].xcom["plan"]
    assert plan["max_output_tokens"] == 700 and plan["estimated_cost_usd"] is None
    dest = tmp_path / "out.jsonl"
    shard_operator(source, dest).execute(context)
    reported = context["ti"].xcom["summary"]["prompt_tokens"]
    assert reported <= plan["estimated_prompt_tokens"] <= reported + 7  # rounded up, one token a request at most


@pytest.mark.parametrize(
    ("given", "plans"),
    [("false", False), ("False", False), ("0", False), ("", False), ("true", True), (" Yes ", True), ("1", True)],
)
def test_dry_run_given_as_a_string_is_read_as_a_flag(given, plans):
    """A string arrives from a Variable, a param read in the DAG file or a mapped value: "false" used to plan."""
    assert MaaSBatchPredictionOperator(task_id="p", source="a", destination="b", dry_run=given).plan_only is plans


@pytest.mark.parametrize(
    ("given", "says"),
    [("ture", "dry_run must be true or false, got 'ture'"), ("{{ params.dry_run }}", "dry_run is not templated")],
)
def test_a_dry_run_typo_or_template_is_refused_where_the_dag_is_parsed(given, says):
    with pytest.raises(MaaSInputError, match=re.escape(says)):
        MaaSBatchPredictionOperator(task_id="p", source="a", destination="b", dry_run=given)


def test_dry_run_false_as_a_string_runs_the_batch(emulator, tmp_path):
    source, dest = _requests(tmp_path / "r.jsonl", 7), tmp_path / "out.jsonl"
    context = make_context()
    assert shard_operator(source, dest, dry_run="false").execute(context) == f"file://{dest}"
    assert emulator.emulator.jobs_created == 2 and "plan" not in context["ti"].xcom
    assert all(r.succeeded for r in assert_in_input_order(source, dest))


# Budget cap -------------------------------------------------------------------------------------
def test_a_cap_allowing_k_jobs_stops_at_k_keeps_their_answers_and_a_retry_creates_nothing(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 20)  # 4 shards of 5
    dest = tmp_path / "out.jsonl"
    op = shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=10)
    context = make_context()
    with pytest.raises(MaaSBudgetExceededError) as info:
        op.execute(context)
    assert emulator.emulator.jobs_created == 2
    summary = context["ti"].xcom["summary"]
    assert summary["cost_usd"] == pytest.approx(2 * JOB_WORST) and summary["cost_reserved_usd"] == 0
    assert summary["budget_usd"] == 2 * JOB_WORST and summary["not_sent"] == 10
    assert (summary["succeeded"], summary["failed"]) == (10, 10)
    records = assert_in_input_order(source, dest)
    assert [r.succeeded for r in records] == [True] * 10 + [False] * 10
    assert records[-1].status.startswith("NOT_SENT: max_cost_usd")
    assert "10 requests got answers" in str(info.value) and "10 were not sent" in str(info.value)
    assert "reuse_results" in str(info.value)
    # The task is cleared (a new clear epoch): the spend is in the batch state, nothing more fits.
    context = make_context(max_tries=2)
    with pytest.raises(MaaSBudgetExceededError):
        shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=10).execute(context)
    assert emulator.emulator.jobs_created == 2
    # A higher cap goes on from there: only the requests not sent are paid for.
    shard_operator(source, dest, prices=PRICES, max_cost_usd=4 * JOB_WORST).execute(make_context(max_tries=3))
    assert emulator.emulator.jobs_created == 4
    assert all(r.succeeded for r in assert_in_input_order(source, dest))


def test_a_cap_reserves_jobs_in_flight_before_their_cost_is_known(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=0.5)
    source = _requests(tmp_path / "r.jsonl", 15)  # 3 shards; the cap fits 2 worst cases
    op = shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=2.5 * JOB_WORST, max_active_jobs=3)
    with pytest.raises(MaaSBudgetExceededError):
        op.execute(make_context())
    assert handle.emulator.jobs_created == 2  # the third was refused while two were in flight


def test_a_resume_after_deferral_honours_the_cap(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 15)
    dest = tmp_path / "out.jsonl"

    def operator() -> MaaSBatchPredictionOperator:
        kwargs = {"prices": PRICES, "max_cost_usd": 2 * JOB_WORST, "max_active_jobs": 1, "deferrable": True}
        return shard_operator(source, dest, **kwargs)

    with pytest.raises(TaskDeferred) as info:
        operator().execute(make_context())
    deferred = info.value
    context = make_context()
    for _ in range(3):  # each resume is a new operator: only the batch state carries the spend
        event = succeeded_event(handle, deferred)
        try:
            operator().execute_complete(context, event)
        except TaskDeferred as again:
            deferred = again
        except MaaSBudgetExceededError:
            break
    else:
        pytest.fail("the batch never stopped")
    assert handle.emulator.jobs_created == 2
    assert context["ti"].xcom["summary"]["not_sent"] == 5


def test_a_cap_needs_prices():
    with pytest.raises(MaaSInputError, match="needs prices"):
        MaaSBatchPredictionOperator(task_id="p", source="a", destination="b", max_cost_usd=1.0)


# Canary -----------------------------------------------------------------------------------------
def test_a_canary_goes_first_and_its_answers_are_part_of_the_results(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 12)
    dest = tmp_path / "out.jsonl"
    context = make_context()
    shard_operator(source, dest, canary_requests=3, prices=PRICES, max_cost_usd=1.0).execute(context)
    jobs = sorted(emulator.emulator.jobs.values(), key=lambda job: job.ordinal)
    counts = [job.request_count for job in jobs]
    assert counts[0] == 3 and sorted(counts[1:]) == [2, 2, 5]  # the canary (cut from shard 0), then the rest
    assert all(r.succeeded for r in assert_in_input_order(source, dest))
    canary = context["ti"].xcom["summary"]["canary"]
    assert canary["failed"] == 0 and canary["estimated_cost_usd"] == pytest.approx(12 * MAX_OUT / 1_000_000)
    assert context["ti"].xcom["plan"]["canary"] == canary  # the measured estimate, as the dry run's plan


def test_a_canary_with_mostly_failed_answers_stops_after_one_job(emulator_factory, tmp_path):
    handle = emulator_factory(faults=["create:1:fail-requests=index:1,2,3"])
    source = _requests(tmp_path / "r.jsonl", 20)
    context = make_context()
    with pytest.raises(MaaSCanaryFailedError) as info:
        shard_operator(source, tmp_path / "out.jsonl", canary_requests=4).execute(context)
    assert handle.emulator.jobs_created == 1
    assert "3 of its 4 requests failed" in str(info.value) and "Emulated failure" in str(info.value)
    assert context["ti"].xcom["summary"]["not_sent"] == 16


@pytest.mark.parametrize(("first", "then", "shards"), [(0, 3, [2, 5, 5]), (3, 0, [2, 2, 3, 5])])
def test_a_retry_with_another_canary_takes_over_the_stored_plan(emulator_factory, tmp_path, first, then, shards):
    """The state's input key holds the input and the shard settings, not ``canary_requests``
    (docs/cost-control.md "The canary"): a retry with another canary goes on with the stored plan and
    its jobs, as planned then (shard 0 is the canary, whatever its size); no shard is paid twice."""
    handle = emulator_factory(job_duration=0.5)
    source = _requests(tmp_path / "r.jsonl", 12)
    dest = tmp_path / "out.jsonl"
    store = FakeStateStore()
    capped = {"prices": PRICES, "max_cost_usd": 1.0}
    with pytest.raises(MaaSTimeoutError):
        shard_operator(source, dest, canary_requests=first, timeout=0.2, **capped).execute(
            make_context(store, max_tries=1)
        )
    context = make_context(store, max_tries=3)  # a person's clear (a new timeout), another canary_requests
    shard_operator(source, dest, canary_requests=then, **capped).execute(context)
    assert sorted(job.request_count for job in handle.emulator.jobs.values()) == shards  # each shard created once
    assert all(r.succeeded for r in assert_in_input_order(source, dest))
    assert context["ti"].xcom["summary"]["cost_usd"] == pytest.approx(12 * MAX_OUT / 1_000_000)


def test_a_canary_estimate_over_the_cap_stops_before_paying_for_the_rest(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 20)
    op = shard_operator(source, tmp_path / "out.jsonl", canary_requests=5, prices=PRICES, max_cost_usd=10 * JOB_WORST)
    # every job fits the cap alone, but at the canary's measured cost the 20 requests do not
    op.max_cost_usd = 3.5 * JOB_WORST
    with pytest.raises(MaaSBudgetExceededError, match="canary's measured tokens"):
        op.execute(make_context())
    assert emulator.emulator.jobs_created == 1


# Answers checked against a schema ---------------------------------------------------------------
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0}},
    "required": ["answer", "confidence"],
}


def _invalid_lines(source: Path, rate: float) -> list[int]:
    """0-based lines of ``source`` whose answer the emulator spoils (the request as sent: schema added)."""
    from airflow_provider_maas.batch.answers.schema import to_gemini_schema
    from airflow_provider_maas.batch.inputs.rewrite import Rewrite
    from airflow_provider_maas.emulator.results import answer_is_invalid

    spoilt = []
    for number, line in enumerate(source.read_text().splitlines()):
        request = json.loads(line)["request"]
        Rewrite(gemini_schema=to_gemini_schema(ANSWER_SCHEMA)).apply(request)
        if answer_is_invalid(request, 0, rate):
            spoilt.append(number)
    return spoilt


def test_schema_requests_get_valid_json_from_the_emulator(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 6, max_out=None)
    dest = tmp_path / "out.jsonl"
    context = make_context()
    shard_operator(source, dest, response_schema=ANSWER_SCHEMA).execute(context)
    records = assert_in_input_order_of_sent(dest, 6)
    assert all(r.succeeded for r in records)
    for record in records:
        assert record.request["generationConfig"]["responseMimeType"] == "application/json"
        assert record.request["generationConfig"]["responseSchema"]["properties"]["confidence"]["type"] == "NUMBER"
        assert set(json.loads(record.text)) == {"answer", "confidence"}
    assert context["ti"].xcom["summary"]["invalid_output"] == 0
    assert not list(tmp_path.glob(".out.jsonl.maas*"))  # the requests with the schema are removed too


def assert_in_input_order_of_sent(dest: Path, count: int) -> list:
    from airflow_provider_maas.batch.answers.results import iter_results

    with dest.open("rb") as handle:
        records = list(iter_results(handle))
    assert len(records) == count
    texts = [r.request["contents"][0]["parts"][0]["text"] for r in records]
    assert texts == [f"Question {i}: what is {i} + {i}?" for i in range(count)]
    return records


def test_invalid_answers_are_counted_placed_resent_once_then_left_failed(emulator_factory, tmp_path):
    rate = 0.3
    handle = emulator_factory(invalid_output_rate=rate)
    source = _requests(tmp_path / "r.jsonl", 20, max_out=None)
    spoilt = _invalid_lines(source, rate)
    assert 0 < len(spoilt) < 20
    dest = tmp_path / "out.jsonl"
    context = make_context()
    shard_operator(source, dest, response_schema=ANSWER_SCHEMA, retry_invalid=True, request_retries=1).execute(context)
    summary = context["ti"].xcom["summary"]
    assert summary["invalid_output"] == summary["failed"] == len(spoilt)
    assert summary["retry_rounds"] == [{"round": 1, "retried": len(spoilt), "succeeded": 0}]
    assert sum(job.request_count for job in handle.emulator.jobs.values()) == 20 + len(spoilt)  # resent once
    records = assert_in_input_order_of_sent(dest, 20)
    assert [n for n, r in enumerate(records) if not r.succeeded] == spoilt
    assert all(records[n].status.startswith("INVALID_OUTPUT: the answer does not match") for n in spoilt)
    assert records[spoilt[0]].response is not None  # the invalid answer is kept, for a person to look at
    failed = (tmp_path / "out.failed.jsonl").read_text().splitlines()
    assert len(failed) == len(spoilt)


def test_invalid_answers_are_not_resent_without_retry_invalid(emulator_factory, tmp_path):
    handle = emulator_factory(invalid_output_rate=0.3)
    source = _requests(tmp_path / "r.jsonl", 20, max_out=None)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", response_schema=ANSWER_SCHEMA).execute(context)
    assert handle.emulator.jobs_created == 4 and context["ti"].xcom["summary"]["retry_rounds"] == []
    assert context["ti"].xcom["summary"]["invalid_output"] == len(_invalid_lines(source, 0.3))


def test_a_canary_whose_answers_are_mostly_invalid_stops_after_one_job(emulator_factory, tmp_path):
    handle = emulator_factory(invalid_output_rate=0.9)
    source = _requests(tmp_path / "r.jsonl", 30, max_out=None)
    with pytest.raises(MaaSCanaryFailedError, match="INVALID_OUTPUT"):
        shard_operator(source, tmp_path / "out.jsonl", response_schema=ANSWER_SCHEMA, canary_requests=5).execute(
            make_context()
        )
    assert handle.emulator.jobs_created == 1


def test_a_pydantic_model_is_a_schema_too(emulator, tmp_path):
    from pydantic import BaseModel

    class Answer(BaseModel):
        answer: str
        confidence: float

    source = _requests(tmp_path / "r.jsonl", 3, max_out=None)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", response_schema=Answer).execute(context)
    assert context["ti"].xcom["summary"]["invalid_output"] == 0
    assert context["ti"].xcom["summary"]["succeeded"] == 3


def test_a_dry_run_with_a_schema_plans_the_requests_as_sent_and_writes_nothing(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 6)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", dry_run=True, response_schema=ANSWER_SCHEMA).execute(context)
    plan = context["ti"].xcom["plan"]
    assert (plan["requests"], plan["to_send"], plan["shards"]) == (6, 6, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]
    assert emulator.emulator.jobs_created == 0 and not emulator.emulator.files
