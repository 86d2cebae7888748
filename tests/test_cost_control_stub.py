"""Issue 22 against a second, independent server (``tests/service_stub.py``, written from the API
document): its jobs succeed at once and answer what the test says, with the usage it says. The same
claims as ``test_cost_control.py`` makes against the emulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.exceptions import MaaSBudgetExceededError, MaaSCanaryFailedError
from tests.compat import TaskDeferred
from tests.conftest import connection_env
from tests.cost_helpers import ITEM, PRICES, job_worst, shard_operator, write_priced_requests
from tests.helpers import make_context
from tests.service_stub import stub_service

MAX_OUT = 40
JOB_WORST = job_worst(MAX_OUT)
SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}


def _requests(path: Path, count: int, *, repeat: int = 0) -> Path:
    """``count`` requests, then repeats of requests 0, 1... (``repeat`` of them)."""
    return write_priced_requests(
        path, [*range(count), *range(repeat)], config={"maxOutputTokens": MAX_OUT}, prompt=ITEM
    )


def _respond(invalid: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    """Answers of the stub: JSON of SCHEMA (not JSON for the items in ``invalid``), every job's
    output exactly maxOutputTokens (so its cost is its worst case)."""

    def respond(request: dict[str, Any]) -> dict[str, Any]:
        number = int(request["contents"][0]["parts"][0]["text"].split()[1])
        text = "no JSON here" if number in invalid else json.dumps({"label": f"item {number}"})
        usage = {"promptTokenCount": 3, "candidatesTokenCount": MAX_OUT, "totalTokenCount": 3 + MAX_OUT}
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}], "usageMetadata": usage}

    return respond


def test_a_dry_run_sends_nothing_to_the_stub(monkeypatch, tmp_path):
    with stub_service(respond=_respond()) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 11, repeat=2)
        context = make_context()
        shard_operator(source, tmp_path / "out.jsonl", dry_run=True, prices=PRICES).execute(context)
    assert service.requests == []
    plan = context["ti"].xcom["plan"]
    assert (plan["requests"], plan["unique_requests"], plan["reused"], plan["shards"]) == (13, 11, 0, 3)
    assert plan["worst_case_cost_usd"] == pytest.approx(11 * MAX_OUT / 1e6)


def test_a_cap_allowing_k_jobs_stops_at_k_and_a_cleared_retry_creates_nothing(monkeypatch, tmp_path):
    with stub_service(respond=_respond()) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 25)  # 5 shards of 5
        dest = tmp_path / "out.jsonl"
        context = make_context()
        with pytest.raises(MaaSBudgetExceededError, match="15 requests got answers"):
            shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST).execute(context)
        assert service.creates() == 3
        summary = context["ti"].xcom["summary"]
        assert summary["cost_usd"] == pytest.approx(3 * JOB_WORST) and summary["not_sent"] == 10
        assert summary["cost_reserved_usd"] == 0 and summary["succeeded"] == 15
        with pytest.raises(MaaSBudgetExceededError):
            shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST).execute(make_context(max_tries=2))
        assert service.creates() == 3
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [line["status"][:8] for line in lines[15:]] == ["NOT_SENT"] * 10
    assert BatchJournal.for_task(dest, make_context()).load() is not None  # the spend is kept


def test_a_resume_after_deferral_honours_the_cap(monkeypatch, tmp_path):
    with stub_service(respond=_respond()) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 15)
        dest = tmp_path / "out.jsonl"
        kwargs = {"prices": PRICES, "max_cost_usd": 2 * JOB_WORST, "max_active_jobs": 1, "deferrable": True}
        with pytest.raises(TaskDeferred) as info:
            shard_operator(source, dest, **kwargs).execute(make_context())
        context = make_context()
        deferred = info.value
        with pytest.raises(MaaSBudgetExceededError):
            for _ in range(5):  # each resume may defer again on the job it just created
                event = asyncio.run(anext(deferred.trigger.run())).payload
                try:
                    shard_operator(source, dest, **kwargs).execute_complete(context, event)
                except TaskDeferred as again:
                    deferred = again
        assert service.creates() == 2  # no resume created a job past the cap
    assert context["ti"].xcom["summary"]["not_sent"] == 5


def test_a_canary_with_mostly_invalid_answers_stops_after_one_job(monkeypatch, tmp_path):
    with stub_service(respond=_respond(invalid={0, 1, 2})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 20)
        with pytest.raises(MaaSCanaryFailedError, match="3 of its 4 requests"):
            shard_operator(source, tmp_path / "out.jsonl", response_schema=SCHEMA, canary_requests=4).execute(
                make_context()
            )
        assert service.creates() == 1


def test_invalid_answers_are_counted_placed_resent_once_then_left_failed(monkeypatch, tmp_path):
    with stub_service(respond=_respond(invalid={2, 7})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 10)
        dest = tmp_path / "out.jsonl"
        context = make_context()
        shard_operator(source, dest, response_schema=SCHEMA, retry_invalid=True, request_retries=1).execute(context)
        assert service.creates() == 3  # two shards, then the two invalid answers' requests once more
    summary = context["ti"].xcom["summary"]
    assert summary["invalid_output"] == 2 and summary["failed"] == 2
    assert summary["retry_rounds"] == [{"round": 1, "retried": 2, "succeeded": 0}]
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [n for n, line in enumerate(lines) if line["status"]] == [2, 7]
    assert lines[2]["status"].startswith("INVALID_OUTPUT") and lines[2]["response"]
    assert len((tmp_path / "out.failed.jsonl").read_text().splitlines()) == 2
