"""Issue 22's pure modules, without Airflow or the emulator: estimates (batch.cost.estimates, batch.cost.bounds),
the dry run's plan (batch.cost.dry_run), the canary's shard (batch.cost.canary), the reservation rule
(batch.cost.budget, batch.cost.spend, batch.cost.budget_checks), answers checked (batch.answers.schema)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from airflow_provider_maas.batch.answers.answer_lines import parse_result_line
from airflow_provider_maas.batch.answers.schema import (
    INVALID_OUTPUT,
    AnswerCheck,
    count_invalid,
    retry_rule,
    to_gemini_schema,
)
from airflow_provider_maas.batch.cost.bounds import Bounds
from airflow_provider_maas.batch.cost.budget import Admission, SpendGate
from airflow_provider_maas.batch.cost.budget_checks import check_budget, check_same_prices
from airflow_provider_maas.batch.cost.canary import check_canary, judge, split_first
from airflow_provider_maas.batch.cost.dry_run import make_plan
from airflow_provider_maas.batch.cost.estimates import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Tokens,
    estimate_request,
    worst_case_usd,
)
from airflow_provider_maas.batch.inputs.rewrite import Rewrite, write_rewritten
from airflow_provider_maas.batch.inputs.shards import copy_shard, plan_shards
from airflow_provider_maas.batch.record.state import BatchState, Round, ShardKey, ShardRecord, ShardStatus
from airflow_provider_maas.exceptions import MaaSInputError


def _request(text: str, max_out: int | None = None, files: int = 0) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": text}]
    parts += [{"file_data": {"file_uri": f"gs://b/{n}.png", "mime_type": "image/png"}} for n in range(files)]
    request: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}]}
    if max_out is not None:
        request["generationConfig"] = {"maxOutputTokens": max_out}
    return request


def _lines(*requests: dict[str, Any], blank_after: int | None = None) -> bytes:
    out = b""
    for number, request in enumerate(requests):
        out += json.dumps({"request": request}).encode() + b"\n"
        if blank_after == number:
            out += b"\n   \n"
    return out


# Estimates -------------------------------------------------------------------------------------
def test_a_request_is_estimated_from_its_text_its_files_and_its_output_ceiling():
    tokens = estimate_request(_request("x" * 10, max_out=50, files=2))
    assert (tokens.prompt, tokens.worst_prompt, tokens.max_output) == (3 + 2 * 258, 10 + 2 * 258, 50)
    assert tokens.output == 50  # the estimate: as long as its prompt, capped at the ceiling
    assert estimate_request(_request("abcd")).max_output == DEFAULT_MAX_OUTPUT_TOKENS
    system = {**_request("abcd"), "systemInstruction": {"parts": [{"text": "efgh"}]}}
    assert estimate_request(system).prompt == 2


def test_worst_case_prices_output_at_the_dearer_output_price():
    tokens = Tokens(requests=1, prompt=1, worst_prompt=1_000_000, max_output=1_000_000, output=1)
    assert worst_case_usd(tokens, {"prompt": 1.0, "candidates": 2.0, "thoughts": 3.0}) == 4.0


def test_the_plan_states_its_basis_and_warns_when_the_worst_case_passes_the_cap():
    tokens, bounds = Tokens(), Bounds(DEFAULT_MAX_OUTPUT_TOKENS)
    for line in _lines(_request("hello", max_out=1000), _request("world", max_out=1000)).splitlines():
        tokens.add(bounds.line(line))  # as the budget estimates a shard's lines
    plans = plan_shards(io.BytesIO(_lines(_request("hello", max_out=1000), _request("world", max_out=1000))))
    plan = make_plan(
        requests=3,
        reused=0,
        deduplicated=1,
        plans=plans,
        tokens=tokens,
        default_max_output=DEFAULT_MAX_OUTPUT_TOKENS,
        prices={"prompt": 1.0, "candidates": 1.0},
        budget_usd=0.001,
    )
    assert (plan.requests, plan.unique_requests, plan.to_send, plan.shards) == (3, 2, 2, 1)
    assert plan.worst_case_cost_usd == pytest.approx((10 + 2000) / 1e6)
    assert "passes max_cost_usd" in plan.notes[0]
    table = plan.table()
    assert "worst case cost usd" in table and "$0.002010" in table and "characters / 4" in table
    assert json.loads(json.dumps(plan.as_dict()))["basis"] == plan.basis


# The canary's shard -----------------------------------------------------------------------------
@pytest.mark.parametrize("blank_after", [None, 1, 3])
def test_the_canary_is_cut_from_the_first_shard_and_the_copies_are_the_same_requests(blank_after):
    data = _lines(*(_request(f"q{n}") for n in range(7)), blank_after=blank_after)
    plans = plan_shards(io.BytesIO(data), max_requests=5)
    cut = split_first(io.BytesIO(data), plans, 2)
    assert [p.requests for p in cut] == [2, 3, 2] and [p.index for p in cut] == [0, 1, 2]
    copied = []
    for plan in cut:
        out = io.BytesIO()
        copy_shard(io.BytesIO(data), plan, out)
        lines = out.getvalue().splitlines()
        assert len(lines) == plan.requests
        copied += [json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in lines]
    assert copied == [f"q{n}" for n in range(7)]
    assert split_first(io.BytesIO(data), plans, 5) == plans  # the first shard is small enough already


def test_canary_settings_are_checked():
    check_canary(100, 0.5)
    for requests, share in ((101, 0.5), (-1, 0.5), (True, 0.5), (3, 1.5), (3, "half")):
        with pytest.raises(MaaSInputError):
            check_canary(requests, share)


def test_the_canary_verdict_counts_failed_and_missing_answers():
    ok = {
        "request": {},
        "response": {"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6}},
        "status": "",
    }
    bad = {"request": {}, "status": "Bad Request: no"}
    results = io.BytesIO(b"".join(json.dumps(x).encode() + b"\n" for x in (ok, bad, ok)))
    verdict = judge(results, 4)  # one answer is missing
    assert (verdict.failed, verdict.failed_share()) == (2, 0.5)
    assert verdict.per_request()["prompt_tokens"] == 2.0 and "line 2: Bad Request" in verdict.samples[0]
    assert verdict.estimated_usd(1_000_000, {"prompt": 1.0, "candidates": 1.0, "thoughts": 1.0}) == 5.0


# The reservation rule ---------------------------------------------------------------------------
def _state(shards: int) -> BatchState:
    data = _lines(*(_request(f"q{n}", max_out=10) for n in range(shards)))
    plans = tuple(plan_shards(io.BytesIO(data), max_requests=1))
    return BatchState(fingerprint="f", identity="i", rounds=[Round(0, plans)])


def test_the_spend_is_kept_with_its_prices_and_other_prices_are_refused():
    old, new = {"prompt": 0.0, "candidates": 0.1}, {"prompt": 0.0, "candidates": 1.0}
    state = _state(2)
    assert check_same_prices(state, old, "s") is True  # nothing counted yet: it takes them
    loaded = _state(2)
    loaded.apply_meta(json.loads(json.dumps(state.meta())))
    assert loaded.prices == old and check_same_prices(loaded, old, "s") is False
    assert check_same_prices(loaded, new, "s") is True  # still nothing counted: a price fix is free
    loaded.apply(loaded.shards[ShardKey(0, 0)].but(status=ShardStatus.DONE, cost_usd=0.5))
    with pytest.raises(MaaSInputError, match=r"at prices \{'prompt': 0.0, 'candidates': 1.0\}, this try has"):
        check_same_prices(loaded, old, "s")
    older = _state(2)  # a state written before the prices were kept, with a spend: unknown prices
    older.spent_before_usd = 0.2
    with pytest.raises(MaaSInputError, match="not recorded"):
        check_same_prices(older, old, "s")


def _gate(**kwargs: Any) -> SpendGate:
    gate = SpendGate(source=None, parts=None, prices={"prompt": 0.0, "candidates": 1e6}, **kwargs)
    gate._worst.update({ShardKey(0, n): 10.0 for n in range(10)})  # each job's worst case: $10
    return gate


def test_spent_plus_reserved_plus_the_new_worst_case_must_fit():
    state = _state(4)
    gate = _gate(max_cost_usd=25.0)
    state.apply(ShardRecord(ShardKey(0, 0), ShardStatus.DONE, cost_usd=4.0))  # reported: $4
    state.apply(ShardRecord(ShardKey(0, 1), ShardStatus.RUNNING, reserve_usd=10.0))  # in flight: $10
    assert gate.admit(ShardKey(0, 2), state) is Admission.GO  # 4 + 10 + 10 = 24
    assert gate.reserved(state) == 20.0  # admitted, not created yet: reserved too
    assert gate.admit(ShardKey(0, 3), state) is Admission.STOP  # 4 + 20 + 10 = 34
    assert "$4.000000 spent + $20.000000 reserved" in (gate.reason or "")
    assert gate.admit(ShardKey(0, 2), state) is Admission.STOP  # stopped for good
    unsent = gate.unsent(state, [ShardKey(0, 3)])
    assert [(r.status, r.unsent) for r in unsent] == [(ShardStatus.FAILED, True)]


def test_a_new_gate_finds_the_stop_and_the_spend_in_the_state():
    state = _state(3)
    state.apply(ShardRecord(ShardKey(0, 0), ShardStatus.DONE, cost_usd=9.0))
    state.apply(ShardRecord(ShardKey(0, 2), ShardStatus.FAILED, error="NOT_SENT: x", unsent=True))
    records = [ShardRecord.from_json(json.loads(json.dumps(r.to_json()))) for r in state.shards.values()]
    assert records == list(state.shards.values())  # the new fields survive the journal
    gate = _gate(max_cost_usd=100.0)
    assert gate.admit(ShardKey(0, 1), state) is Admission.STOP
    assert gate.not_sent(state) == 1 and gate.summary_fields(state)["cost_usd"] == 9.0


def test_records_of_older_state_files_load_without_the_new_fields():
    record = ShardRecord.from_json({"r": 0, "i": 1, "status": "running", "job_name": "7", "attempts": 1})
    assert (record.reserve_usd, record.cost_usd, record.unsent) == (None, None, False)
    assert "unsent" not in record.to_json() and "cost_usd" not in record.to_json()


def test_the_canary_holds_the_other_shards_back_until_its_results_are_in():
    state = _state(3)
    gate = _gate(canary_requests=1)
    assert gate.admit(ShardKey(0, 0), state) is Admission.GO
    assert gate.admit(ShardKey(0, 1), state) is Admission.WAIT
    state.apply(ShardRecord(ShardKey(0, 0), ShardStatus.FAILED, error="job failed"))
    assert gate.admit(ShardKey(0, 1), state) is Admission.STOP
    assert "the canary failed: 1 of its 1 requests" in (gate.reason or "")


def test_a_cap_needs_prices_and_a_number():
    check_budget(1.5, {"prompt": 1.0}, 10)
    for cap, prices, default in ((1.0, None, 10), (-1.0, {}, 10), ("1", {}, 10), (None, None, 0)):
        with pytest.raises(MaaSInputError):
            check_budget(cap, prices, default)


# Answers checked against a schema ---------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _result(text: str | None, status: str = "") -> dict[str, Any]:
    parts = [{"text": text}] if text is not None else []
    return {"request": {"contents": []}, "response": {"candidates": [{"content": {"parts": parts}}]}, "status": status}


def test_a_json_schema_accepts_valid_answers_and_says_why_others_are_not():
    check = AnswerCheck(SCHEMA)
    assert check.error('{"n": 3}') is None
    assert "'n' is a required property" in (check.error("{}") or "")
    assert (check.error("Sure! {") or "").startswith("not JSON")
    assert check.error(None) == "the answer has no text"
    assert len(check.error(json.dumps({"n": "x" * 1000})) or "") == 300


def test_a_pydantic_model_checks_answers_too():
    from pydantic import BaseModel

    class Answer(BaseModel):
        n: int

    check = AnswerCheck(Answer)
    assert check.error('{"n": 3}') is None and "n:" in (check.error('{"n": "three"}') or "")


def test_a_bad_schema_is_refused_where_the_dag_is_parsed():
    with pytest.raises(MaaSInputError, match="not a valid JSON Schema"):
        AnswerCheck({"type": "no-such-type"})
    with pytest.raises(MaaSInputError, match="dict"):
        AnswerCheck("{}")


def test_invalid_answers_are_rewritten_in_place_with_a_status_and_count_as_failed():
    lines = [_result('{"n": 1}'), _result("{}"), _result(None, status="Bad Request: x")]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    out = io.BytesIO()
    assert AnswerCheck(SCHEMA).check_lines(io.BytesIO(data), out) == 1
    written = out.getvalue().splitlines()
    assert written[0] == data.splitlines()[0] and written[2] == data.splitlines()[2]  # copied as they were
    rewritten = json.loads(written[1])
    assert rewritten["status"].startswith(f"{INVALID_OUTPUT}: the answer does not match response_schema")
    assert list(rewritten)[-1] == "status" and rewritten["response"] == lines[1]["response"]
    assert parse_result_line(json.JSONDecoder().raw_decode, written[1], "part", 2) == ({"contents": []}, False)
    assert count_invalid(io.BytesIO(out.getvalue())) == 1


def test_invalid_answers_are_retried_only_with_retry_invalid():
    base = lambda status: "UNAVAILABLE" in status  # noqa: E731
    invalid = f"{INVALID_OUTPUT}: 'UNAVAILABLE' is not of type 'integer'"
    assert retry_rule(base, retry_invalid=False)(invalid) is False
    assert retry_rule(base, retry_invalid=True)(invalid) is True
    assert retry_rule(base, retry_invalid=False)("503 UNAVAILABLE") is True


def test_a_pydantic_schema_becomes_geminis_response_schema():
    from pydantic import BaseModel

    class Item(BaseModel):
        name: str
        tags: list[str]

    class Answer(BaseModel):
        items: list[Item]
        note: str | None = None

    gemini = to_gemini_schema(Answer.model_json_schema())
    assert gemini["type"] == "OBJECT" and gemini["required"] == ["items"]
    assert gemini["propertyOrdering"] == ["items", "note"]
    item = gemini["properties"]["items"]["items"]
    tags = item["properties"]["tags"]
    assert item["type"] == "OBJECT" and (tags["type"], tags["items"], tags["title"]) == (
        "ARRAY",
        {"type": "STRING"},
        "Tags",
    )
    assert gemini["properties"]["note"]["nullable"] is True and gemini["properties"]["note"]["type"] == "STRING"
    assert "$defs" not in json.dumps(gemini) and "additionalProperties" not in json.dumps(gemini)


def test_requests_asking_for_no_schema_get_it_others_are_copied_as_they_are():
    own = {**_request("a"), "generationConfig": {"responseSchema": {"type": "STRING"}}}
    data = _lines(_request("b", max_out=7), own)
    out = io.BytesIO()
    asks = Rewrite(gemini_schema={"type": "OBJECT"})
    assert write_rewritten(io.BytesIO(data), out, asks) == 1
    first, second = out.getvalue().splitlines()
    config = json.loads(first)["request"]["generationConfig"]
    assert config == {
        "maxOutputTokens": 7,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT"},
    }
    assert second == data.splitlines()[1]
    assert asks.apply(json.loads(second)["request"]) is False


@pytest.mark.parametrize("blank_after", [None, 2])
def test_a_file_of_validated_lines_is_planned_the_same_without_parsing_again(blank_after):
    """The dry run plans its file of requests to send (written from validated lines) without
    parsing them again: the same shards as the parsing pass, and the size limits still hold."""
    data = _lines(*(_request(f"q{n}" * n) for n in range(9)), blank_after=blank_after)
    parsed = plan_shards(io.BytesIO(data), max_requests=4, max_bytes=600)
    assert plan_shards(io.BytesIO(data), max_requests=4, max_bytes=600, validated=True) == parsed
    with pytest.raises(MaaSInputError, match="line 1: is at least"):
        plan_shards(io.BytesIO(data), max_requests=4, max_bytes=20, validated=True)


def test_a_snake_case_mime_type_or_ceiling_is_not_added_twice():
    request = {**_request("a"), "generation_config": {"response_mime_type": "text/x.enum", "max_output_tokens": 9}}
    rewrite = Rewrite(gemini_schema={"type": "OBJECT"}, default_max_output=100)
    assert rewrite.apply(request) is True
    assert request["generation_config"] == {
        "response_mime_type": "text/x.enum",
        "max_output_tokens": 9,
        "responseSchema": {"type": "OBJECT"},
    }
    assert "generationConfig" not in request


def test_under_a_cap_the_output_ceiling_counted_is_the_one_sent():
    """The ceiling written is the one the worst case counts (the default, or a larger thinking budget);
    a null one is replaced; a request's own ceiling is kept; blank and unparsed lines keep their place."""
    thinking = {**_request("b"), "generationConfig": {"thinkingConfig": {"thinkingBudget": 500}}}
    null = {**_request("c"), "generationConfig": {"max_output_tokens": None}}
    data = _lines(_request("a"), thinking, blank_after=1) + _lines(null, _request("d", max_out=7)) + b"{bad\n"
    out = io.BytesIO()
    assert write_rewritten(io.BytesIO(data), out, Rewrite(default_max_output=100)) == 3
    lines = out.getvalue().split(b"\n")
    sent = [json.loads(line)["request"] for line in lines[:2] + lines[4:6]]
    assert [estimate_request(r, 1).max_output for r in sent] == [100, 500, 100, 7]
    assert sent[0]["generationConfig"] == {"maxOutputTokens": 100}
    assert sent[2]["generationConfig"] == {"max_output_tokens": 100}
    assert lines[2:4] == [b"", b""] and lines[6] == b"{bad"  # line numbers are the input's
    assert lines[5] == data.split(b"\n")[5]  # its own ceiling: copied byte for byte


@pytest.mark.parametrize("ceiling", [0, -3, "many", True, 1.5])
def test_under_a_cap_a_ceiling_that_bounds_nothing_is_refused(ceiling):
    request = {**_request("a"), "generationConfig": {"maxOutputTokens": ceiling}}
    with pytest.raises(MaaSInputError, match=r"requests line 2: generationConfig\.maxOutputTokens"):
        Rewrite(default_max_output=100).apply(request, 2)
    assert Rewrite(gemini_schema={"type": "OBJECT"}).apply(request) is True  # no cap: not checked
