"""Issue 22's cap, attacked a second time (session 5) against ``tests/service_stub.py``, whose answers
report the usage each test chooses: what is created must never pass ``max_cost_usd`` by the
operator's own accounting, and the canary must decide before more is paid.

Prices are free for prompts and $1 per 1M output tokens, so a job's cost is its output tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_maas.batch.cost.estimates import estimate_request
from airflow_provider_maas.exceptions import MaaSBudgetExceededError, MaaSError, MaaSInputError
from tests.conftest import connection_env
from tests.cost_helpers import (
    EMULATOR_MAX_OUT,
    ITEM,
    PRICES,
    deferred_event,
    job_worst,
    shard_operator,
    write_priced_requests,
)
from tests.helpers import make_context
from tests.service_stub import json_answer, stub_service

MAX_OUT = 40
JOB_WORST = job_worst(MAX_OUT)


def _requests(path: Path, count: int, *, config: dict[str, Any] | None = None) -> Path:
    """``count`` requests, each with ``config`` (default: ``maxOutputTokens`` MAX_OUT; ``{}``: none)."""
    config = {"maxOutputTokens": MAX_OUT} if config is None else config
    return write_priced_requests(path, range(count), config=config, prompt=ITEM)


def _answer(usage: dict[str, Any] | None) -> Any:
    def respond(request: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}}]}
        if usage is not None:
            answer["usageMetadata"] = usage
        return answer

    return respond


def deferred_without_cap(service: Any, tmp_path: Path) -> tuple[Path, Path, dict[str, str | None]]:
    """A try without a cap creates 2 jobs (25 requests, 5 a shard) and defers. Jobs 1 and 2 are
    polled in ``held["state"]`` (first RUNNING) until the test sets it to None: they then succeed."""
    from tests.compat import TaskDeferred

    held: dict[str, str | None] = {"state": "JOB_STATE_RUNNING"}
    serve = service.answer

    def answer(method: str, target: str, body: bytes):
        path = target.split("?", 1)[0]
        name = path.rsplit("/", 1)[-1]
        if held["state"] and method == "GET" and "/batchPredictionJobs/" in path and name in ("1", "2"):
            service.requests.append((method, target))
            return json_answer({"name": name, "state": held["state"], "error": {"message": "internal"}})
        return serve(method, target, body)

    service.answer = answer
    source = _requests(tmp_path / "r.jsonl", 25)
    dest = tmp_path / "out.jsonl"
    with pytest.raises(TaskDeferred):
        shard_operator(source, dest, max_active_jobs=2, deferrable=True).execute(make_context(max_tries=1))
    assert service.creates() == 2
    return source, dest, held


# 1. The canary's estimate ignored what the operator itself counted the canary job at --------------
def test_a_canary_without_usage_is_estimated_at_what_it_was_counted_not_at_zero(monkeypatch, tmp_path):
    """The service reports no usageMetadata: the spend counts the canary job at its worst case, but
    its "measured" estimate was $0, so the canary passed and jobs were paid up to the cap. At the
    canary's own cost per request the 25 requests cost 5 jobs' worst case: over a cap of 3."""
    with stub_service(respond=_answer(None)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 25)
        context = make_context()
        with pytest.raises(MaaSBudgetExceededError, match="canary"):
            shard_operator(
                source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=3 * JOB_WORST, canary_requests=5
            ).execute(context)
        assert service.creates() == 1
    canary = context["ti"].xcom["summary"]["canary"]
    assert canary["estimated_cost_usd"] == pytest.approx(5 * JOB_WORST)


def test_the_canary_estimate_counts_tool_use_tokens_as_the_spend_does(monkeypatch, tmp_path):
    """Grounding bills toolUsePromptTokenCount (in totalTokenCount only): the spend counts it, the
    canary's estimate did not."""
    usage = {"promptTokenCount": 1, "candidatesTokenCount": 1, "toolUsePromptTokenCount": 999, "totalTokenCount": 1001}
    prices = {"prompt": 1.0, "candidates": 1.0}
    with stub_service(respond=_answer(usage)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 10)
        context = make_context()
        shard_operator(source, tmp_path / "out.jsonl", prices=prices, canary_requests=5).execute(context)
    summary = context["ti"].xcom["summary"]
    assert summary["canary"]["estimated_cost_usd"] == pytest.approx(10 * 1001 / 1e6)


# 2. default_max_output_tokens was not sent: the service did not know it --------------------------
def test_the_default_output_ceiling_bounds_what_the_service_may_answer(monkeypatch, tmp_path):
    seen: list[dict[str, Any]] = []

    def respond(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        config = request.get("generationConfig") or {}
        out = int(config.get("maxOutputTokens") or 65_536)  # the model's own limit when none is asked
        usage = {"promptTokenCount": 1, "candidatesTokenCount": out, "totalTokenCount": out + 1}
        return {"candidates": [{"content": {"parts": [{"text": "ok"}]}}], "usageMetadata": usage}

    with stub_service(respond=respond) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 25, config={})
        context = make_context()
        with pytest.raises(MaaSBudgetExceededError):
            shard_operator(
                source,
                tmp_path / "out.jsonl",
                prices=PRICES,
                max_cost_usd=3 * JOB_WORST,
                default_max_output_tokens=MAX_OUT,
            ).execute(context)
    assert context["ti"].xcom["summary"]["cost_usd"] <= 3 * JOB_WORST + 1e-9
    assert {r["generationConfig"]["maxOutputTokens"] for r in seen} == {MAX_OUT}  # the ceiling is sent


# 3. A job that reports more than its worst case: the worst case is no bound -----------------------
def test_a_job_costing_more_than_its_worst_case_stops_the_creates(monkeypatch, tmp_path):
    """The first job reports 1.5 times its worst case (a file part, a thinking overshoot, a ceiling
    the service ignores): the reservation rule went on admitting jobs at a worst case shown false,
    and the cap was passed by the last one. Evidence that the bound is wrong stops the creates."""
    out = MAX_OUT * 3 // 2
    usage = {"promptTokenCount": 1, "candidatesTokenCount": out, "totalTokenCount": out + 1}
    with stub_service(respond=_answer(usage)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 50)  # 10 shards
        dest = tmp_path / "out.jsonl"
        kwargs = {"prices": PRICES, "max_cost_usd": 10 * JOB_WORST, "max_active_jobs": 1}
        with pytest.raises(MaaSBudgetExceededError, match="more than its worst case"):
            shard_operator(source, dest, **kwargs).execute(make_context(max_tries=1))
        created = service.creates()
        assert created <= 2  # the first job, and one created while its results were downloaded (was 7)
        retry = make_context(max_tries=1)  # a retry of the task (its state kept) creates nothing either
        with pytest.raises(MaaSBudgetExceededError, match="more than its worst case"):
            shard_operator(source, dest, **kwargs).execute(retry)
        assert service.creates() == created
        assert retry["ti"].xcom["summary"]["cost_usd"] <= 10 * JOB_WORST
        # A person saw the error and clears the task with a higher cap: creates go on (the overrun
        # seen is accepted) until a job of the new clear epoch costs more than its worst case again.
        with pytest.raises(MaaSBudgetExceededError, match=r"shard [1-9].* more than its worst case"):
            shard_operator(source, dest, **{**kwargs, "max_cost_usd": 20 * JOB_WORST}).execute(
                make_context(max_tries=2)
            )
        assert created < service.creates() <= created + 2


# 4. Thinking budgets ---------------------------------------------------------------------------
def test_a_thinking_budget_above_the_default_ceiling_is_in_the_worst_case():
    """Without maxOutputTokens the request itself allows thinkingBudget thinking tokens (billed as
    output): a lower default_max_output_tokens must not be its worst case."""
    for config in (
        {"thinkingConfig": {"thinkingBudget": 24_576}},
        {"thinking_config": {"thinking_budget": "24576"}},
    ):
        request = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": config}
        assert estimate_request(request, 1000).max_output >= 24_576
    bounded = {"maxOutputTokens": 2000, "thinkingConfig": {"thinkingBudget": 24_576}}  # thinking counts in it
    request = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": bounded}
    assert estimate_request(request, 1000).max_output == 2000


# 5. Prices corrected between tries ---------------------------------------------------------------
def test_prices_changed_on_a_retry_are_refused_before_anything_is_created(monkeypatch, tmp_path):
    """The spend is kept in USD at the prices of the try that counted it: a retry with corrected
    (higher) prices added new worst cases to it and paid 4 jobs under a cap of 3. The state keeps
    the prices; a try with other prices is refused, naming both and the way on."""
    usage = {"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT, "totalTokenCount": MAX_OUT + 1}
    with stub_service(respond=_answer(usage)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        refuse_third = service.answer

        def answer(method: str, target: str, body: bytes):  # the 3rd create is refused (400): the try fails
            if method == "POST" and target.endswith("/batchPredictionJobs") and service.creates() == 2:
                service.requests.append((method, target))
                return json_answer({"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}, 400)
            return refuse_third(method, target, body)

        service.answer = answer  # type: ignore[method-assign]
        source = _requests(tmp_path / "r.jsonl", 25)
        dest = tmp_path / "out.jsonl"
        typo = {"prompt": 0.0, "candidates": 0.1}  # a tenth of the real price
        with pytest.raises(MaaSError):
            shard_operator(source, dest, prices=typo, max_cost_usd=3 * JOB_WORST, max_active_jobs=1).execute(
                make_context()
            )
        assert service.creates() == 3  # 2 jobs paid (the third refused)
        for context in (make_context(), make_context(max_tries=2)):  # a retry, and a person's clear
            with pytest.raises(MaaSInputError, match=r"prices changed .* at prices \{'prompt': 0.0, 'candidates': 0.1"):
                shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, max_active_jobs=1).execute(
                    context
                )
            assert service.creates() == 3  # nothing created


# 6. An answer written twice ----------------------------------------------------------------------
def test_an_answer_written_twice_is_paid_once_and_stops_nothing(emulator_factory, tmp_path):
    """The service wrote 2 result lines twice (the emulator's duplicate-lines fault): the spend
    counted them twice, so the job "cost" more than its worst case and the batch stopped."""
    handle = emulator_factory(faults=["create:1:duplicate-lines=2"])
    source = write_priced_requests(tmp_path / "r.jsonl", range(20), config={"maxOutputTokens": EMULATOR_MAX_OUT})
    worst = job_worst(EMULATOR_MAX_OUT)
    context = make_context()
    op = shard_operator(source, tmp_path / "out.jsonl", prices=PRICES, max_cost_usd=10 * worst, max_active_jobs=1)
    op.execute(context)
    assert handle.emulator.jobs_created == 4
    assert context["ti"].xcom["summary"]["cost_usd"] == pytest.approx(4 * worst)


# 7. Jobs created without a cap, downloaded by a try with one, that report no usage ---------------
def test_jobs_created_before_the_cap_that_report_no_usage_count_at_their_worst_case(monkeypatch, tmp_path):
    """A try without a cap created 2 jobs (no reservation stored); the retry has the cap. Their
    answers report no usageMetadata: they were counted at $0 (no reservation to fall back on), so
    the retry paid for 3 more jobs under a cap of 3."""
    with stub_service(respond=_answer(None)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source, dest, held = deferred_without_cap(service, tmp_path)
        held["state"] = None  # the worker is lost; the jobs end; the retry has prices and a cap
        capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, max_active_jobs=1)
        with pytest.raises(MaaSBudgetExceededError):
            capped.execute(make_context())
        assert service.creates() <= 3


# 8. A cap added while the batch is deferred: the ceiling it sends changes the requests ------------
def test_a_cap_added_while_deferred_sends_no_shard_planned_without_its_ceiling(emulator_factory, tmp_path):
    """The shards were planned from requests without maxOutputTokens; the resume has a cap, which
    sends the ceiling: a shard not yet sent is refused as a changed input, not sent unbounded."""
    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 20, config={})
    dest = tmp_path / "out.jsonl"
    event = deferred_event(handle, shard_operator(source, dest, max_active_jobs=2, deferrable=True))
    capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=1.0, max_active_jobs=2, deferrable=True)
    with pytest.raises(MaaSInputError, match="changed since it was planned"):
        capped.execute_complete(make_context(), event)
    assert handle.emulator.jobs_created == 2
