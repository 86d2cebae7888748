"""Issue 22 attacked from its text: where the cap could be passed, or answers lost.

Each test failed before its fix. The emulator bills every job it runs; its output is exactly
``maxOutputTokens``, so with prompt tokens free a job costs exactly its worst case and
``jobs_created * JOB_WORST`` is what the batch really paid.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from airflow_provider_maas.batch.answers.schema import AnswerCheck
from airflow_provider_maas.batch.cost.bounds import unbounded
from airflow_provider_maas.batch.cost.budget import SpendGate
from airflow_provider_maas.batch.cost.estimates import estimate_request
from airflow_provider_maas.batch.record.state import ShardKey, ShardRecord, ShardStatus
from airflow_provider_maas.exceptions import MaaSBudgetExceededError, MaaSError, MaaSInputError
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator
from tests.cost_helpers import (
    EMULATOR_MAX_OUT,
    PRICES,
    deferred_event,
    shard_operator,
    succeeded_event,
    write_priced_requests,
)
from tests.helpers import make_context

MAX_OUT = EMULATOR_MAX_OUT
JOB_WORST = 5 * MAX_OUT / 1_000_000  # a job of 5 requests at MAX_OUT output tokens each


def _requests(path: Path, count: int) -> Path:
    return write_priced_requests(path, range(count), config={"maxOutputTokens": MAX_OUT})


# A job paid for that reported nothing ----------------------------------------------------------
def test_a_job_whose_results_are_gone_still_counts_against_the_cap(emulator_factory, tmp_path):
    """The job ran (and was billed); its results expired before the download. Releasing its
    reservation let the shard be sent again on top of it: 3 jobs paid under a cap of 2."""
    handle = emulator_factory(faults=["content:1:results-gone"])
    source = _requests(tmp_path / "r.jsonl", 10)  # 2 shards
    op = shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=1)
    with pytest.raises(MaaSBudgetExceededError):
        op.execute(make_context())
    assert handle.emulator.jobs_created * JOB_WORST <= 2 * JOB_WORST + 1e-12


def test_a_create_left_uncertain_then_cleared_still_counts_against_the_cap(emulator_factory, tmp_path):
    """The create's answer was lost but the job exists (and is billed). A person clears the task:
    the new try may create again, but the earlier job's reservation must not be dropped."""
    handle = emulator_factory(faults=["create:1:lost-500"])
    source = _requests(tmp_path / "r.jsonl", 10)  # 2 shards
    dest = tmp_path / "out.jsonl"

    def operator() -> MaaSBatchPredictionOperator:
        return shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=1)

    with pytest.raises(MaaSError):
        operator().execute(make_context(max_tries=1))
    assert handle.emulator.jobs_created == 1  # created, its answer lost
    with pytest.raises(MaaSBudgetExceededError):
        operator().execute(make_context(max_tries=2))
    assert handle.emulator.jobs_created * JOB_WORST <= 2 * JOB_WORST + 1e-12


def _part(tmp_path: Path, lines: list[dict]) -> Path:
    part = tmp_path / "part.jsonl"
    part.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return part


def test_answers_whose_usage_never_arrives_are_charged_their_reservation(tmp_path):
    """A response without usageMetadata was still paid: counting it as $0 lets the next creates
    pass the cap."""
    answer = {"candidates": [{"content": {"parts": [{"text": "4"}]}}]}
    part = _part(tmp_path, [{"request": {}, "response": answer}] * 5)
    gate = SpendGate(source=None, parts=None, prices={**PRICES, "thoughts": 1.0}, max_cost_usd=1.0)
    record = ShardRecord(ShardKey(0, 0), status=ShardStatus.RUNNING, reserve_usd=JOB_WORST)
    from airflow.sdk import ObjectStoragePath

    fields = gate.downloaded(record, ObjectStoragePath(f"file://{part}"))
    assert fields["cost_usd"] >= JOB_WORST


def test_negative_token_counts_do_not_lower_the_spend(tmp_path):
    answer = {
        "candidates": [{"content": {"parts": [{"text": "4"}]}}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": -1_000_000, "totalTokenCount": 1},
    }
    part = _part(tmp_path, [{"request": {}, "response": answer}])
    gate = SpendGate(source=None, parts=None, prices={**PRICES, "thoughts": 1.0}, max_cost_usd=1.0)
    record = ShardRecord(ShardKey(0, 0), status=ShardStatus.RUNNING, reserve_usd=JOB_WORST)
    from airflow.sdk import ObjectStoragePath

    assert gate.downloaded(record, ObjectStoragePath(f"file://{part}"))["cost_usd"] >= 0


# The worst case is a bound ---------------------------------------------------------------------
def test_the_worst_case_prompt_bounds_non_ascii_text():
    """A tokenizer with byte fallback spends up to one token per UTF-8 byte (emoji, rare scripts)."""
    text = "\U0001f600" * 100  # 100 characters, 400 bytes
    request = {"contents": [{"parts": [{"text": text}]}]}
    assert estimate_request(request).worst_prompt >= len(text.encode())


def test_the_worst_case_prompt_counts_function_responses_and_tools():
    """Function responses, function calls and tool declarations are prompt tokens too."""
    big = "y" * 10_000
    request = {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": big}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"r": big}}}]},
        ],
        "tools": [{"functionDeclarations": [{"name": "f", "description": big}]}],
    }
    assert estimate_request(request).worst_prompt >= 3 * len(big)


def test_the_worst_case_output_counts_every_candidate():
    """candidateCount=4 asks for 4 answers, each up to maxOutputTokens, all billed."""
    request = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 100, "candidateCount": 4},
    }
    assert estimate_request(request).max_output == 400


# Malicious answers -----------------------------------------------------------------------------
def test_a_deeply_nested_answer_is_invalid_not_a_crash():
    """json.loads raises RecursionError (not ValueError) on deep nesting: the download handling
    crashed, the shard stayed RUNNING and every retry downloaded and crashed again."""
    check = AnswerCheck({"type": "object"})
    problem = check.error("[" * 200_000 + "]" * 200_000)
    assert problem is not None and len(problem) <= 300


def test_a_deeply_nested_answer_against_a_recursive_schema_is_invalid_not_a_crash():
    schema = {"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}
    check = AnswerCheck(schema)
    problem = check.error("[" * 900 + "]" * 900)
    assert problem is None or len(problem) <= 300  # valid or invalid, but an answer either way


# Continuing after the budget stopped the batch -------------------------------------------------
def test_a_clear_with_reuse_results_on_the_destination_does_not_reset_the_spend(emulator, tmp_path):
    """reuse_results pointing at the destination (the advice of the error) changes what is sent, so
    a cleared try starts a new plan: it must not start with a new spend, or each clear pays the
    cap again."""
    source = _requests(tmp_path / "r.jsonl", 20)  # 4 shards
    dest = tmp_path / "out.jsonl"

    def operator(**kwargs) -> MaaSBatchPredictionOperator:
        return shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=1, **kwargs)

    with pytest.raises(MaaSBudgetExceededError):
        operator().execute(make_context())
    assert emulator.emulator.jobs_created == 2
    with pytest.raises(MaaSBudgetExceededError):
        operator(reuse_results=str(dest)).execute(make_context(max_tries=2))
    assert emulator.emulator.jobs_created == 2  # the same cap, already spent: nothing more


def test_the_advice_of_the_budget_error_works_a_new_run_reuses_what_was_paid(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 20)  # 4 shards
    dest = tmp_path / "out.jsonl"
    with pytest.raises(MaaSBudgetExceededError) as info:
        shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST).execute(make_context())
    assert "reuse_results" in str(info.value)
    context = make_context(run_id="run2")
    op = shard_operator(
        source, tmp_path / "out2.jsonl", prices=PRICES, max_cost_usd=2 * JOB_WORST, reuse_results=str(dest)
    )
    op.execute(context)
    assert emulator.emulator.jobs_created == 4
    summary = context["ti"].xcom["summary"]
    assert (summary["succeeded"], summary["reused"]) == (20, 10)


def test_a_numeric_string_max_output_tokens_is_the_ceiling_the_service_uses():
    """Protobuf JSON takes "5000" (and 5000.0) for an int32: the service allows 5000 output tokens,
    so a lower default_max_output_tokens must not be the worst case."""
    for value in ("5000", 5000.0):
        request = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": value}}
        assert estimate_request(request, 100).max_output == 5000
    request = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"candidateCount": "3"}}
    assert estimate_request(request, 100).max_output == 300


def test_tool_use_prompt_tokens_count_against_the_cap(tmp_path):
    """Grounding and code execution bill toolUsePromptTokenCount as input; it is in totalTokenCount
    but in none of the priced fields."""
    usage = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 10,
        "toolUsePromptTokenCount": 1_000_000,
        "totalTokenCount": 1_000_020,
    }
    answer = {"candidates": [{"content": {"parts": [{"text": "4"}]}}], "usageMetadata": usage}
    part = _part(tmp_path, [{"request": {}, "response": answer}])
    gate = SpendGate(source=None, parts=None, prices={"prompt": 1.0, "candidates": 1.0, "thoughts": 1.0})
    record = ShardRecord(ShardKey(0, 0), status=ShardStatus.RUNNING)
    from airflow.sdk import ObjectStoragePath

    assert gate.downloaded(record, ObjectStoragePath(f"file://{part}"))["cost_usd"] >= 1.0


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def test_reused_answers_are_checked_against_the_schema_too(emulator, tmp_path):
    """Requests that ask for no schema of their own (set_response_schema=False) match earlier
    plain-text results: those answers must not pass as valid without being checked."""
    source = _requests(tmp_path / "r.jsonl", 5)
    earlier = tmp_path / "earlier.jsonl"
    shard_operator(source, earlier).execute(make_context())  # plain text answers, not JSON
    context = make_context(run_id="run2")
    op = shard_operator(
        source,
        tmp_path / "out.jsonl",
        response_schema=SCHEMA,
        set_response_schema=False,
        reuse_results=str(earlier),
        request_retries=0,
    )
    with contextlib.suppress(MaaSError):  # no request succeeded: fine, as long as no invalid answer passes
        op.execute(context)
    summary = context["ti"].xcom["summary"]
    assert summary["succeeded"] == 0 and summary["invalid_output"] + summary.get("sent", 0) >= 5


def test_a_cap_added_on_a_resume_counts_what_earlier_tries_spent_without_prices(emulator_factory, tmp_path):
    """The DAG changed between tries (prices and a cap added): the jobs downloaded by a try that
    had no prices were still paid for, and count."""
    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 30)  # 6 shards
    dest = tmp_path / "out.jsonl"
    plain = {"max_active_jobs": 2, "deferrable": True}
    first = deferred_event(handle, shard_operator(source, dest, **plain))
    with pytest.raises(TaskDeferred) as again:  # shards 0, 1 downloaded (no prices), 2, 3 created
        shard_operator(source, dest, **plain).execute_complete(make_context(), first)
    assert handle.emulator.jobs_created == 4
    capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, **plain)
    with pytest.raises(MaaSBudgetExceededError):
        capped.execute_complete(make_context(), succeeded_event(handle, again.value))
    assert handle.emulator.jobs_created == 4  # 4 jobs paid already: nothing more under a cap of 3


def test_jobs_in_flight_created_without_a_cap_are_reserved_when_a_cap_is_added(emulator_factory, tmp_path):
    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 30)  # 6 shards
    dest = tmp_path / "out.jsonl"
    with pytest.raises(TaskDeferred):
        shard_operator(source, dest, max_active_jobs=2, deferrable=True).execute(make_context())
    assert handle.emulator.jobs_created == 2
    # Running (its worker lost), the task is retried with a cap of 3 jobs: 2 are in flight.
    capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, max_active_jobs=6, deferrable=True)
    with pytest.raises(TaskDeferred):
        capped.execute(make_context())
    assert handle.emulator.jobs_created == 3


# Held: recorded so they stay held --------------------------------------------------------------
def test_a_retry_after_a_failed_canary_sends_nothing_not_even_the_canary_again(emulator_factory, tmp_path):
    from airflow_provider_maas.exceptions import MaaSCanaryFailedError

    handle = emulator_factory(invalid_output_rate=0.9)
    source = _requests(tmp_path / "r.jsonl", 30)
    dest = tmp_path / "out.jsonl"
    for _ in range(2):  # the first try, then a retry (same clear epoch)
        with pytest.raises(MaaSCanaryFailedError):
            shard_operator(source, dest, response_schema=SCHEMA, canary_requests=5).execute(make_context())
    assert handle.emulator.jobs_created == 1


def test_a_canary_larger_than_the_input_is_the_whole_batch_once(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 3)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", canary_requests=100, prices=PRICES).execute(context)
    assert emulator.emulator.jobs_created == 1
    assert context["ti"].xcom["summary"]["canary"]["requests"] == 3


def test_the_advice_works_with_the_destination_as_its_own_reuse_results(emulator, tmp_path):
    source = _requests(tmp_path / "r.jsonl", 20)  # 4 shards
    dest = tmp_path / "out.jsonl"
    with pytest.raises(MaaSBudgetExceededError):
        shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST).execute(make_context())
    context = make_context(run_id="run2")  # a new run writes its own destination (one owner per destination)
    dest2 = tmp_path / "out2.jsonl"
    shard_operator(source, dest2, prices=PRICES, max_cost_usd=2 * JOB_WORST, reuse_results=str(dest)).execute(context)
    assert emulator.emulator.jobs_created == 4
    summary = context["ti"].xcom["summary"]
    assert (summary["succeeded"], summary["reused"], summary["cost_usd"]) == (20, 10, pytest.approx(2 * JOB_WORST))


def test_the_worst_case_bounds_requests_with_long_files_or_cached_content():
    """A file part counted 258 tokens (one small image) and cachedContent none, whatever they hold;
    a PDF is 258 per page, video ~263 per second. The worst case counts the bounds given."""
    pdf = {"fileData": {"fileUri": "gs://b/book.pdf", "mimeType": "application/pdf"}}  # 1,000 pages
    request = {"contents": [{"parts": [{"text": "Summarise"}, pdf]}]}
    tokens = estimate_request(request, max_tokens_per_file_part=1000 * 258)
    assert tokens.worst_prompt >= 1000 * 258 and tokens.file_parts == 1
    cached = {"cachedContent": "cachedContents/abc", "contents": [{"parts": [{"text": "Q?"}]}]}
    tokens = estimate_request(cached, max_cached_content_tokens=32_768)
    assert tokens.worst_prompt >= 32_768 and tokens.cached == 1  # the smallest cache Gemini makes
    # Without a bound the worst case is no bound, and the one place deciding it says so.
    assert "max_tokens_per_file_part" in unbounded(estimate_request(request), None, None)
    assert "max_cached_content_tokens" in unbounded(estimate_request(cached), None, None)
    assert unbounded(estimate_request(request, max_tokens_per_file_part=1), 1, None) is None


def _file_requests(path: Path, count: int, *, bad: dict[int, dict] | None = None) -> Path:
    """``count`` requests of a question and an image each (line n+1 replaced by ``bad[n]``)."""
    with path.open("w") as handle:
        for i in range(count):
            image = {"file_data": {"file_uri": f"gs://b/{i}.png", "mime_type": "image/png"}}
            request = {
                "contents": [{"role": "user", "parts": [{"text": f"Describe image {i}"}, image]}],
                "generationConfig": {"maxOutputTokens": MAX_OUT},
            }
            handle.write(json.dumps({"request": (bad or {}).get(i, request)}) + "\n")
    return path


_TEXT = {"contents": [{"parts": [{"text": "hi"}]}]}
_VIDEO = {**_TEXT, "contents": [{"parts": [{"fileData": {"fileUri": "gs://b/v.mp4"}}]}]}
_UNBOUNDED = {  # name: (request line, the parameter the error names)
    "inline": (
        json.dumps({"request": {"contents": [{"parts": [{"inlineData": {"mimeType": "audio/mp3", "data": "AA"}}]}]}}),
        "max_tokens_per_file_part",
    ),
    "cache": (json.dumps({"request": {**_TEXT, "cachedContent": "cachedContents/big"}}), "max_cached_content_tokens"),
    # "fileData" written with a JSON escape: a byte search for the key alone would miss it
    "escaped-key": (
        json.dumps({"request": _VIDEO}).replace('"fileData"', '"\\u0066ileData"'),
        "max_tokens_per_file_part",
    ),
}


@pytest.mark.parametrize("case", sorted(_UNBOUNDED))
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_cap_refuses_unbounded_files_and_caches_before_anything_is_uploaded(emulator, tmp_path, case, dry_run):
    line, parameter = _UNBOUNDED[case]
    assert json.loads(line)  # valid JSON, the escape included
    source = tmp_path / "r.jsonl"
    text = _requests(tmp_path / "ok.jsonl", 5).read_text().splitlines()
    text[3] = line  # line 4
    source.write_text("\n".join(text) + "\n")
    op = shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=1.0, dry_run=dry_run)
    with pytest.raises(MaaSInputError, match=rf"line 4: .*{parameter}") as info:
        op.execute(make_context())
    assert info.value.line_number == 4
    assert emulator.emulator.jobs_created == 0 and not emulator.emulator.uploads_by_name
    assert not list(tmp_path.glob(".out.jsonl.maas*"))  # no state written either
    # The bound given, the same input is accepted.
    given = {"max_tokens_per_file_part": 10_000, "max_cached_content_tokens": 100_000}
    shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=1.0, dry_run=True, **given).execute(
        make_context()
    )


def test_without_a_cap_unbounded_files_are_sent_and_the_plan_says_its_worst_case_is_no_bound(tmp_path):
    source = _file_requests(tmp_path / "r.jsonl", 3)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, dry_run=True).execute(context)
    plan = context["ti"].xcom["plan"]
    assert (plan["file_parts"], plan["max_tokens_per_file_part"]) == (3, None)
    assert any("no bound" in note and "max_tokens_per_file_part" in note for note in plan["notes"])
    assert "no max_tokens_per_file_part: no bound" in plan["basis"]


def _job_worst(source: Path, per_file: int) -> float:
    """The worst case of the first shard (5 requests) of ``source``, each file at ``per_file``."""
    lines = source.read_text().splitlines()[:5]
    tokens = [estimate_request(json.loads(line)["request"], max_tokens_per_file_part=per_file) for line in lines]
    return sum(t.worst_prompt * FILE_PRICES["prompt"] + t.max_output * FILE_PRICES["candidates"] for t in tokens) / 1e6


FILE_PRICES = {"prompt": 1.0, "candidates": 1.0}


def test_a_cap_with_file_parts_stops_at_k_jobs_and_its_plan_states_the_bound(emulator, tmp_path):
    """Each file counts the bound (300; the emulator reports 258): a cap of 2 jobs' worst case
    creates 2 jobs, keeps their answers, and spends no more than the cap."""
    source = _file_requests(tmp_path / "r.jsonl", 20)  # 4 shards, same sizes
    worst = _job_worst(source, 300)
    kwargs = {"prices": FILE_PRICES, "max_cost_usd": 2 * worst + 1e-9, "max_tokens_per_file_part": 300}
    plan = make_context()
    shard_operator(source, tmp_path / "out.jsonl", dry_run=True, **kwargs).execute(plan)
    assert (plan["ti"].xcom["plan"]["max_tokens_per_file_part"], plan["ti"].xcom["plan"]["file_parts"]) == (300, 20)
    assert "max_tokens_per_file_part=300" in plan["ti"].xcom["plan"]["basis"]
    context = make_context()
    with pytest.raises(MaaSBudgetExceededError):
        shard_operator(source, tmp_path / "out.jsonl", max_active_jobs=1, **kwargs).execute(context)
    assert emulator.emulator.jobs_created == 2
    summary = context["ti"].xcom["summary"]
    assert summary["succeeded"] == 10 and summary["not_sent"] == 10
    assert summary["cost_usd"] <= kwargs["max_cost_usd"] and summary["answers_over_worst_case"] == 0


def test_answers_past_the_file_bound_count_at_their_real_usage_and_show(emulator, tmp_path, caplog):
    """The bound given (100 tokens a file) is below what the service reports (258): the jobs count
    at their reported usage, the log and the summary say so."""
    source = _file_requests(tmp_path / "r.jsonl", 10)
    context = make_context()
    op = shard_operator(
        source, tmp_path / "out.jsonl", prices=FILE_PRICES, max_cost_usd=10.0, max_tokens_per_file_part=100
    )
    op.execute(context)
    summary = context["ti"].xcom["summary"]
    assert summary["answers_over_worst_case"] == 10
    reported = (summary["prompt_tokens"] + summary["candidates_tokens"] + summary["thoughts_tokens"]) / 1e6
    assert summary["cost_usd"] == pytest.approx(reported)
    assert "report more prompt tokens than their worst case" in caplog.text


def test_a_cap_added_to_a_planned_batch_refuses_an_unbounded_shard_before_its_create(emulator_factory, tmp_path):
    """The check at the start of a try reads the input; a resume after deferral does not: the
    budget's own check of each shard refuses it then."""
    handle = emulator_factory(job_duration=60)
    source = _file_requests(tmp_path / "r.jsonl", 15)  # 3 shards
    dest = tmp_path / "out.jsonl"
    event = deferred_event(handle, shard_operator(source, dest, max_active_jobs=1, deferrable=True))
    capped = shard_operator(source, dest, max_active_jobs=1, deferrable=True, prices=FILE_PRICES, max_cost_usd=1.0)
    with pytest.raises(MaaSInputError, match=r"shard 1 was not sent: .*max_tokens_per_file_part"):
        capped.execute_complete(make_context(), event)
    assert handle.emulator.jobs_created == 1


# Jobs that end without results ---------------------------------------------------------------
@pytest.mark.parametrize("final_state", ["JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"])
def test_a_job_that_ends_without_results_keeps_its_reservation_as_spent(emulator_factory, tmp_path, final_state):
    """The API says nothing of billing such jobs: releasing the reservation let every retry of the
    shard pass the cap (8 jobs under a cap of 2). Kept as spent, the cap stops at 2 jobs."""
    handle = emulator_factory(final_state=final_state, job_duration=0.05)
    source = _requests(tmp_path / "r.jsonl", 10)  # 2 shards
    context = make_context()
    op = shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=1)
    op.shard_retries = 3
    with pytest.raises(MaaSBudgetExceededError):
        op.execute(context)
    assert handle.emulator.jobs_created == 2
    assert context["ti"].xcom["summary"]["cost_usd"] == pytest.approx(2 * JOB_WORST)


def test_a_lost_canary_part_is_downloaded_again_not_a_crash_on_every_try(emulator_factory, tmp_path):
    """The canary's downloaded results are gone (a cleanup, another worker's disk) while the rest
    waits: the verdict must come back (download again), not crash every resume and retry."""
    from tests.compat import TaskDeferred

    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 15)  # canary of 5, then 2 shards of 5
    dest = tmp_path / "out.jsonl"

    def operator() -> MaaSBatchPredictionOperator:
        return shard_operator(source, dest, canary_requests=5, max_active_jobs=1, deferrable=True, prices=PRICES)

    with pytest.raises(TaskDeferred) as info:
        operator().execute(make_context())
    first = succeeded_event(handle, info.value)
    with pytest.raises(TaskDeferred) as info:  # the canary downloaded and judged; shard 1 created
        operator().execute_complete(make_context(), first)
    parts = list(tmp_path.glob(".out.jsonl.maas/*/parts/r0-000000.jsonl")) or list(tmp_path.rglob("r0-000000.jsonl"))
    assert parts, "the canary's part was not found"
    parts[0].unlink()
    event = succeeded_event(handle, info.value)
    for _ in range(3):
        try:
            operator().execute_complete(make_context(), event)
            break
        except TaskDeferred as again:
            event = succeeded_event(handle, again)
    assert handle.emulator.jobs_created == 3


def test_the_worst_case_prompt_counts_the_response_schema():
    """Gemini counts the response schema toward the input tokens: set_response_schema adds it to
    every request, so a large schema is paid once per request."""
    properties = {f"field_{n}": {"type": "STRING", "description": "x" * 100} for n in range(50)}
    schema = {"type": "OBJECT", "properties": properties}
    request = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"responseSchema": schema}}
    assert estimate_request(request).worst_prompt >= len(json.dumps(schema))


def test_duplicated_result_lines_do_not_hide_missing_canary_answers():
    """The service wrote some answers twice and left others out (both are emulator faults): the
    canary counted lines, so 2 duplicates hid 2 missing answers and a bad canary passed."""
    import io

    from airflow_provider_maas.batch.answers.results import request_digest
    from airflow_provider_maas.batch.cost.canary import judge

    requests = [{"contents": [{"parts": [{"text": f"q{n}"}]}]} for n in range(5)]
    usage = {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}
    answer = {"candidates": [{"content": {"parts": [{"text": "a"}]}}], "usageMetadata": usage}
    lines = [{"request": requests[n], "response": answer} for n in (0, 1, 2, 0, 1)]  # 3, 4 missing
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    expected = [request_digest(r) for r in requests]
    verdict = judge(data, 5, expected=expected)
    assert verdict.failed == 2


def test_the_plan_states_the_canary_a_run_sends(tmp_path):
    """The canary is one shard: within max_requests_per_file, it holds fewer requests than asked."""
    source = _requests(tmp_path / "r.jsonl", 30)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", dry_run=True, canary_requests=20).execute(context)
    assert context["ti"].xcom["plan"]["canary_requests"] == 5


def test_a_good_canary_with_a_schema_and_duplicated_lines_passes(emulator_factory, tmp_path):
    """Counting each request's answer once must match the answers to the requests as sent (the
    schema added) and ignore the repeats, not fail a good canary."""
    handle = emulator_factory(faults=["create:1:duplicate-lines=2"])
    source = _requests(tmp_path / "r.jsonl", 15)
    context = make_context()
    shard_operator(source, tmp_path / "out.jsonl", response_schema=SCHEMA, canary_requests=5, prices=PRICES).execute(
        context
    )
    assert handle.emulator.jobs_created == 3
    assert context["ti"].xcom["summary"]["canary"]["failed"] == 0
