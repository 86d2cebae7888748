"""Issue 22 attacked again (session 5, a22b): bounds of file parts in odd places, the output ceiling
sent under a cap against ``reuse_results``, prices spelled differently between tries. The service
is ``tests/service_stub.py`` (it counts creates and reports the usage each test chooses).

Prices are free for prompts and $1 per 1M output tokens, so a job's cost is its output tokens.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_maas.batch.cost.bounds import refuse_unbounded
from airflow_provider_maas.batch.cost.estimates import estimate_request
from airflow_provider_maas.exceptions import MaaSBudgetExceededError, MaaSError, MaaSInputError
from tests.conftest import connection_env
from tests.cost_helpers import EMULATOR_MAX_OUT, PRICES, job_worst, shard_operator, write_priced_requests
from tests.helpers import make_context
from tests.service_stub import stub_service
from tests.test_trial_cost_caps import JOB_WORST, MAX_OUT, _answer, _requests, deferred_without_cap

VIDEO = {"fileData": {"fileUri": "gs://bucket/one-hour.mp4", "mimeType": "video/mp4"}}


def _write(path: Path, *requests: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps({"request": r}) + "\n" for r in requests))
    return path


# 1. File parts the estimate did not see: no bound, and no refusal -------------------------------
@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(
            {
                "contents": [
                    {"role": "user", "parts": [{"text": "what is in it?"}]},
                    {
                        "role": "user",
                        "parts": [{"functionResponse": {"name": "fetch", "response": {}, "parts": [VIDEO]}}],
                    },
                ]
            },
            id="functionResponse.parts fileData",
        ),
        pytest.param(
            {
                "contents": [
                    {"parts": [{"function_response": {"name": "f", "parts": [{"inline_data": {"data": "AAAA"}}]}}]}
                ]
            },
            id="function_response.parts inline_data",
        ),
        pytest.param(
            {"contents": [{"parts": [{"text": "hi"}]}], "systemInstruction": {"parts": VIDEO}},
            id="systemInstruction.parts an object",
        ),
    ],
)
def test_a_file_part_inside_another_part_needs_its_bound_under_a_cap(tmp_path, request_):
    """A multimodal function response carries its own parts (a one-hour video by URI: ~950,000
    prompt tokens); a system instruction may give its one part as an object. The worst case
    counted the URI's bytes (~60 tokens), and the refusal of unbounded file parts let it through:
    the cap admitted a job that could cost thousands of times its reservation."""
    assert estimate_request(request_).file_parts == 1
    assert estimate_request(request_, max_tokens_per_file_part=1_000_000).worst_prompt >= 1_000_000
    source = _write(tmp_path / "r.jsonl", request_)
    with pytest.raises(MaaSInputError, match=r"line 1: .*max_tokens_per_file_part"):
        refuse_unbounded(source, max_tokens_per_file_part=None, max_cached_content_tokens=None)


# 2. The ceiling written under a cap hid the answers already paid for ------------------------------
def test_answers_paid_without_a_cap_are_reused_by_a_run_with_one(monkeypatch, tmp_path):
    """A run without a cap paid for 10 answers (its requests set no maxOutputTokens). The next DAG
    run adds max_cost_usd and gives that destination as reuse_results, as the docs advise: the
    cap writes maxOutputTokens into every request, so no answer matched its request any more and
    all 10 were paid again."""
    usage = {"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT, "totalTokenCount": MAX_OUT + 1}
    with stub_service(respond=_answer(usage)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 10, config={})
        first = tmp_path / "first.jsonl"
        shard_operator(source, first).execute(make_context())
        paid = service.creates()
        assert paid == 2
        context = make_context()
        shard_operator(
            source,
            tmp_path / "second.jsonl",
            prices=PRICES,
            max_cost_usd=10 * JOB_WORST,
            default_max_output_tokens=MAX_OUT,
            reuse_results=str(first),
        ).execute(context)
        assert service.creates() == paid  # every answer reused: nothing paid again
    assert context["ti"].xcom["summary"]["reused"] == 10
    written = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    given = [json.loads(line)["request"] for line in source.read_text().splitlines()]
    # each answer at the line of the request it answers (the line shows the request as this run sends it)
    assert [w["request"]["contents"] for w in written] == [g["contents"] for g in given]
    assert all(w["request"]["generationConfig"] == {"maxOutputTokens": MAX_OUT} for w in written)


# 3. A job created without a cap that ended FAILED counted $0 ----------------------------------------
def test_failed_jobs_created_before_the_cap_keep_their_worst_case(monkeypatch, tmp_path):
    """A try without a cap created 2 jobs (no reservation stored); they ended FAILED while the
    worker was lost; the retry has the cap. A FAILED job keeps its reservation as spent (the
    service may have billed what it ran), but these had none: they counted $0, and the retry paid
    3 more jobs under a cap of 3 jobs' worst case (5 jobs in all)."""
    with stub_service(respond=_answer({"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source, dest, held = deferred_without_cap(service, tmp_path)
        held["state"] = "JOB_STATE_FAILED"  # the worker is lost; the jobs fail; the retry has the cap
        capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, max_active_jobs=1)
        with pytest.raises(MaaSBudgetExceededError):
            capped.execute(make_context())
        assert service.creates() <= 3


# 4. A null camelCase key hid the snake_case ceiling or config the service reads ------------------
@pytest.mark.parametrize(
    "request_",
    [
        {
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": None, "max_output_tokens": 500},
        },
        {
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": None,
            "generation_config": {"candidateCount": 5},
        },
        {
            "contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": None, "thinking_config": {"thinkingBudget": 500}},
        },
    ],
    ids=["maxOutputTokens null", "generationConfig null", "thinkingConfig null"],
)
def test_a_null_key_does_not_hide_the_other_spelling(request_):
    """The service drops nulls (``normalise_request`` does too): it reads the snake_case value. The
    estimate read the null camelCase one as "none set" and counted default_max_output_tokens
    (100): a request allowing 500 output tokens was reserved at 100, and the rewrite (under a cap)
    wrote its ceiling beside a config it did not read."""
    from airflow_provider_maas.batch.inputs.rewrite import Rewrite

    assert estimate_request(request_, 100).max_output >= 500
    sent = json.loads(json.dumps(request_))
    Rewrite(default_max_output=100).apply(sent)
    assert estimate_request(sent, 100).max_output >= 500


# 5. A create left uncertain by a try without the cap, cleared by a person into a try with one -------
def test_a_create_left_uncertain_without_a_cap_counts_its_worst_case_once_cleared(emulator_factory, tmp_path):
    """The create's answer was lost, by a try without a cap (no reservation stored): the job
    exists and is billed. A person clears the task with a cap of 2 jobs' worst case: the earlier
    job counted $0, so both shards were sent again (3 jobs under a cap of 2)."""
    handle = emulator_factory(faults=["create:1:lost-500"])
    source = write_priced_requests(tmp_path / "r.jsonl", range(10), config={"maxOutputTokens": EMULATOR_MAX_OUT})
    dest = tmp_path / "out.jsonl"  # 2 shards
    with pytest.raises(MaaSError):
        shard_operator(source, dest, max_active_jobs=1).execute(make_context(max_tries=1))
    assert handle.emulator.jobs_created == 1  # created, its answer lost
    capped = shard_operator(
        source, dest, prices=PRICES, max_cost_usd=2 * job_worst(EMULATOR_MAX_OUT), max_active_jobs=1
    )
    with pytest.raises(MaaSBudgetExceededError):
        capped.execute(make_context(max_tries=2))
    assert handle.emulator.jobs_created <= 2


# 6. The canary's estimate left out what the batch had already spent --------------------------------
def test_the_canary_counts_what_was_spent_besides_it(monkeypatch, tmp_path):
    """The canary's first job ended FAILED (its worst case stays spent, as documented); its second
    succeeded. At the canary's measured cost the 25 requests cost 5 jobs, the cap: the canary
    passed, though with the lost job the batch costs 6. The rest was sent until the reservations
    stopped it: 3 more jobs paid for a batch that could not finish under the cap."""
    from tests.service_stub import json_answer

    usage = {"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT, "totalTokenCount": MAX_OUT + 1}
    with stub_service(respond=_answer(usage)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        serve = service.answer

        def answer(method: str, target: str, body: bytes):
            path = target.split("?", 1)[0]
            if method == "GET" and path.endswith("/batchPredictionJobs/1"):  # the canary's first job
                service.requests.append((method, target))
                return json_answer({"name": "1", "state": "JOB_STATE_FAILED", "error": {"message": "internal"}})
            return serve(method, target, body)

        service.answer = answer  # type: ignore[method-assign]
        source = _requests(tmp_path / "r.jsonl", 25)
        context = make_context()
        with pytest.raises(MaaSBudgetExceededError, match="canary"):
            shard_operator(
                source,
                tmp_path / "out.jsonl",
                prices=PRICES,
                max_cost_usd=5 * JOB_WORST,
                canary_requests=5,
                max_active_jobs=1,
            ).execute(context)
        assert service.creates() == 2  # the canary's two jobs, nothing more


def _uncapped_jobs_then_a_new_line(service: Any, tmp_path: Path) -> tuple[Path, Path]:
    """:func:`deferred_without_cap`, then its 2 jobs succeed and a person adds a line to the input."""
    source, dest, held = deferred_without_cap(service, tmp_path)
    held["state"] = None
    with source.open("a") as handle:
        handle.write(json.dumps({"request": {"contents": [{"parts": [{"text": "one more"}]}]}}) + "\n")
    return source, dest


# 7. A state replaced by a try with the cap carried the uncapped jobs at $0 --------------------------
def test_a_new_input_with_a_cap_counts_the_uncapped_jobs_it_abandons(monkeypatch, tmp_path):
    """A try without a cap left 2 jobs running; a person adds a line to the input, adds the cap
    (3 jobs' worst case) and clears: the input changed, so the batch starts over, carrying the
    spend of the state it replaces. The 2 running jobs (billed) were carried at $0: 3 more jobs
    were paid, 5 under a cap of 3."""
    with stub_service(respond=_answer({"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source, dest = _uncapped_jobs_then_a_new_line(service, tmp_path)
        capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, max_active_jobs=1)
        with pytest.raises(MaaSBudgetExceededError):
            capped.execute(make_context(max_tries=2))
        assert service.creates() <= 3


# 2b. Reuse across the cap and the schema: the rule (docs/cost-control.md) -------------------------
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _text(text: str) -> Any:
    usage = {"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT, "totalTokenCount": MAX_OUT + 1}
    return lambda request: {"candidates": [{"content": {"parts": [{"text": text}]}}], "usageMetadata": usage}


@pytest.mark.parametrize(("text", "paid_again"), [('{"a": 1}', 0), ("not JSON", 2)], ids=["valid", "invalid"])
def test_answers_paid_without_a_schema_are_checked_when_reused_by_a_run_with_one(
    monkeypatch, tmp_path, text, paid_again
):
    """A run with response_schema adds responseSchema to every request: the answers of a run
    without it match once their requests get the same addition, and are checked against the
    schema like any answer: valid ones are reused, invalid ones are sent again."""
    with stub_service(respond=_text(text)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 10)
        first = tmp_path / "first.jsonl"
        shard_operator(source, first).execute(make_context())
        paid = service.creates()
        second = shard_operator(
            source, tmp_path / "second.jsonl", response_schema=SCHEMA, reuse_results=str(first), fail_on_partial=False
        )
        with pytest.raises(MaaSError) if paid_again else contextlib.nullcontext():  # invalid again: none succeeded
            second.execute(make_context())
        assert service.creates() == paid + paid_again


def test_answers_of_a_run_with_the_cap_are_reused_by_a_run_with_it(monkeypatch, tmp_path):
    """The rewrite leaves a request that has its ceiling alone: answers of a run with the cap
    still match the next run's requests."""
    usage = {"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT, "totalTokenCount": MAX_OUT + 1}
    capped = {"prices": PRICES, "max_cost_usd": 10 * JOB_WORST, "default_max_output_tokens": MAX_OUT}
    with stub_service(respond=_answer(usage)) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 10, config={})
        first = tmp_path / "first.jsonl"
        shard_operator(source, first, **capped).execute(make_context())
        paid = service.creates()
        shard_operator(source, tmp_path / "second.jsonl", reuse_results=str(first), **capped).execute(make_context())
        assert service.creates() == paid


def test_answers_of_a_run_with_a_schema_are_not_reused_by_one_without_it(monkeypatch, tmp_path):
    """The documented rule: the earlier requests asked for a shape (responseSchema added), this
    run's do not; they are other requests, and are sent."""
    with stub_service(respond=_text('{"a": 1}')) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = _requests(tmp_path / "r.jsonl", 10)
        first = tmp_path / "first.jsonl"
        shard_operator(source, first, response_schema=SCHEMA).execute(make_context())
        paid = service.creates()
        shard_operator(source, tmp_path / "second.jsonl", reuse_results=str(first)).execute(make_context())
        assert service.creates() == 2 * paid


# 7b. The jobs a replaced state holds no amount for: counted, bounded, or refused ------------------
def test_a_new_input_with_a_cap_refuses_when_the_abandoned_jobs_cannot_be_counted(monkeypatch, tmp_path):
    """The person rewrote the whole input: the requests of the 2 running jobs (created without a
    cap) are nowhere, so their worst case is unknown: nothing is created, the error names them and
    the way on."""
    with stub_service(respond=_answer({"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source, dest, held = deferred_without_cap(service, tmp_path)
        held["state"] = None
        _requests(source, 25, config={"maxOutputTokens": MAX_OUT - 1})
        capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=3 * JOB_WORST, max_active_jobs=1)
        with pytest.raises(MaaSInputError, match=r"2 shard\(s\) .*shard 0 \(job \d\), shard 1 \(job \d\).*Restore"):
            capped.execute(make_context(max_tries=2))
        assert service.creates() == 2


def test_a_replaced_state_prices_its_unpriced_jobs(tmp_path):
    """Unit: a job in flight without a reservation counts its shard's worst case (read from the
    old plan's requests), a part downloaded without prices its reported cost; once the requests
    are gone, without a cap the plan's bound (1 token a byte, default_max_output_tokens a
    request), under one a refusal."""
    from dataclasses import replace

    from airflow_provider_maas.batch.cost.prices import check_prices
    from airflow_provider_maas.batch.cost.spend_before import spend_left_behind
    from airflow_provider_maas.batch.inputs.shards import plan_shards
    from airflow_provider_maas.batch.record.state import BatchState, Round, ShardKey, ShardStatus, fingerprint
    from tests.helpers import batch_settings

    source = _requests(tmp_path / "r.jsonl", 10)
    with source.open("rb") as handle:
        plans = plan_shards(handle, max_requests=5, max_bytes=1_000_000)
    state = BatchState(fingerprint(plans), "d.t.r.-1", [Round(0, tuple(plans))])
    state.apply(state.shards[ShardKey(0, 0)].but(status=ShardStatus.RUNNING, job_name="1"))
    state.apply(state.shards[ShardKey(0, 1)].but(status=ShardStatus.DONE, job_name="2"))
    part = tmp_path / "part.jsonl"
    usage = {"promptTokenCount": 1, "candidatesTokenCount": 10, "totalTokenCount": 11}
    part.write_text(
        "".join(
            json.dumps({"request": {"n": i}, "response": {"candidates": [], "usageMetadata": usage}, "status": ""})
            + "\n"
            for i in range(5)
        )
    )
    settings = batch_settings(source, prices=check_prices(PRICES))
    spent, prices, tokens = spend_left_behind(state, settings, lambda key: part)
    assert (spent, prices, tokens) == (pytest.approx(JOB_WORST + 50 / 1e6), settings.prices, None)
    assert spend_left_behind(state, None, None) == (0.0, None, None)  # nothing to price them with

    _requests(source, 10, config={"maxOutputTokens": 7})  # the input rewritten: shard 0's requests are gone
    spent, _, _ = spend_left_behind(state, settings, lambda key: part)
    assert spent == pytest.approx(5 * settings.default_max_output_tokens / 1e6 + 50 / 1e6)
    with pytest.raises(MaaSInputError, match=r"shard 0 \(job 1\)"):
        spend_left_behind(state, replace(settings, max_cost_usd=1.0), lambda key: part)


def test_jobs_left_behind_without_prices_are_counted_once_a_try_has_them(monkeypatch, tmp_path):
    """A try without prices left 2 jobs running; a person adds a line to the input and clears, still
    without prices: the batch starts over (1 job created, then it defers) and no prices are known to
    count the 2 jobs at. They were carried as nothing: a later clear with prices and a cap their
    worst case already fills created more jobs. Kept in tokens, they are priced when the prices come."""
    from tests.compat import TaskDeferred

    with stub_service(respond=_answer({"promptTokenCount": 1, "candidatesTokenCount": MAX_OUT})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source, dest = _uncapped_jobs_then_a_new_line(service, tmp_path)
        with pytest.raises(TaskDeferred):
            shard_operator(source, dest, max_active_jobs=1, deferrable=True).execute(make_context(max_tries=2))
        assert service.creates() == 3
        capped = shard_operator(source, dest, prices=PRICES, max_cost_usd=2 * JOB_WORST, max_active_jobs=1)
        with pytest.raises(MaaSBudgetExceededError):
            capped.execute(make_context(max_tries=3))
        assert service.creates() == 3
