"""Reuse of earlier results, deduplication, retry selection, merge and cost: the pure modules (no service)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from airflow_provider_maas.batch.answers.matching import AnswerStore
from airflow_provider_maas.batch.answers.pay_once import (
    DEFAULT_RETRY_FAILURES,
    merge_answers,
    retry_predicate,
    write_requests_to_send,
    write_retries,
)
from airflow_provider_maas.batch.answers.results import MISSING_STATUS, ResultsFormatError
from airflow_provider_maas.batch.cost.prices import check_prices, cost_of


def request(text: str) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def input_lines(texts: list[str]) -> bytes:
    return b"".join(json.dumps({"request": request(t)}).encode() + b"\n" for t in texts)


def result_line(text: str, *, status: str = "", tokens: int = 10, compact: bool = False) -> bytes:
    echo = {"contents": [{"role": "user", "parts": [{"text": text, "file_data": None}]}]}  # as the service echoes
    line: dict = {"request": echo}
    if not status:
        line["response"] = {
            "candidates": [{"content": {"parts": [{"text": f"answer to {text}"}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": tokens,
                "candidatesTokenCount": 2 * tokens,
                "thoughtsTokenCount": 3 * tokens,
                "totalTokenCount": 6 * tokens,
            },
        }
    line["processed_time"] = "2026-01-29T02:15:47+00:00"
    line["status"] = status
    separators = (",", ":") if compact else None
    return json.dumps(line, separators=separators).encode() + b"\n"


def results_file(tmp_path: Path, name: str, lines: list[bytes]) -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return path


def opener(item):
    return open(item, "rb")


def sent_texts(data: bytes) -> list[str]:
    return [json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in data.splitlines()]


def answer_texts(data: bytes) -> list[str | None]:
    out = []
    for line in data.splitlines():
        obj = json.loads(line)
        out.append(obj["request"]["contents"][0]["parts"][0]["text"] if not obj["status"] else None)
    return out


# --------------------------------------------------------------------------- the store


def test_store_finds_the_echoed_request_both_layouts_and_prefers_success(tmp_path):
    path = results_file(
        tmp_path,
        "r.jsonl",
        [result_line("a", status="INTERNAL"), result_line("a", compact=True), b"\n", result_line("b")],
    )
    from airflow_provider_maas.batch.answers.results import request_digest

    with AnswerStore() as store, path.open("rb") as handle:
        added = store.add("r", handle)
        assert (added.lines, added.succeeded) == (3, 2)
        asked = [request(name) for name in ("a", "c", "b", "b")]
        answers = [answer for _, answer, _ in store.match(asked, request_digest, shared=False)]
        assert answers[0] is not None and answers[0].succeeded and answers[0].line == 2
        assert answers[1] is None
        assert answers[2] is not None and answers[2].line == 4
        assert answers[3] is None  # its one answer went to the first "b"


def test_store_names_file_and_line_of_a_damaged_results_file(tmp_path):
    path = results_file(tmp_path, "bad.jsonl", [result_line("a"), b'{"request": {"x": 1}, "response": {\n'])
    with AnswerStore() as store, path.open("rb") as handle, pytest.raises(ResultsFormatError, match="bad line 2"):
        store.add("bad", handle)


def test_store_memory_is_a_temporary_file_removed_on_exit():
    with AnswerStore() as store:
        assert Path(store.path).exists()
    assert not Path(store.path).exists()


# --------------------------------------------------------------------------- reuse and dedup


def test_reuse_sends_only_what_has_no_earlier_success(tmp_path):
    earlier = results_file(tmp_path, "earlier.jsonl", [result_line("q1"), result_line("q2", status="INTERNAL")])
    out = io.BytesIO()
    coverage = write_requests_to_send(io.BytesIO(input_lines(["q1", "q2", "q3"])), out, reuse=[earlier], opener=opener)
    assert sent_texts(out.getvalue()) == ["q2", "q3"]  # a failed earlier answer is not reused
    assert (coverage.requests, coverage.reused, coverage.deduplicated, coverage.to_send) == (3, 1, 0, 2)


def test_identical_requests_sent_once_unless_deduplicate_is_off(tmp_path):
    data = input_lines(["x", "y", "x", "x"])
    out = io.BytesIO()
    coverage = write_requests_to_send(io.BytesIO(data), out, opener=opener)
    assert sent_texts(out.getvalue()) == ["x", "y"] and coverage.deduplicated == 2
    out = io.BytesIO()
    coverage = write_requests_to_send(io.BytesIO(data), out, opener=opener, deduplicate=False)
    assert sent_texts(out.getvalue()) == ["x", "y", "x", "x"] and coverage.deduplicated == 0


def test_without_deduplicate_each_earlier_answer_is_reused_once(tmp_path):
    earlier = results_file(tmp_path, "earlier.jsonl", [result_line("x")])
    out = io.BytesIO()
    write_requests_to_send(io.BytesIO(input_lines(["x", "x"])), out, reuse=[earlier], opener=opener, deduplicate=False)
    assert sent_texts(out.getvalue()) == ["x"]


# --------------------------------------------------------------------------- retries


def test_default_retry_patterns_take_transient_failures_only():
    should_retry = retry_predicate(None)
    for status in (
        'Internal: {"error": {"code": 500, "message": "boom", "status": "INTERNAL"}}',
        "RESOURCE_EXHAUSTED: quota",
        "429 Too Many Requests",
        "The service is overloaded, try again later",
        "DEADLINE_EXCEEDED",
    ):
        assert should_retry(status), status
    for status in (
        'Bad Request: {"error": {"code": 400, "message": "Emulated failure of request 500", "status": "INVALID_ARGUMENT"}}',
        "PERMISSION_DENIED",
        "blocked by safety filters",
    ):
        assert not should_retry(status), status
    assert DEFAULT_RETRY_FAILURES
    assert retry_predicate(["Emulated"])("Emulated failure")
    assert retry_predicate(lambda status: True)("anything")


@pytest.mark.parametrize(
    ("value", "message"),
    [("INTERNAL", "a single pattern goes in a list"), (["("], "not a valid regular"), ([3], "not a regular")],
)
def test_bad_retry_failures_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        retry_predicate(value)


def test_retries_gather_retryable_failures_and_missing_once_each(tmp_path):
    round0 = results_file(
        tmp_path,
        "r0.jsonl",
        [result_line("a"), result_line("b", status="UNAVAILABLE"), result_line("c", status="INVALID_ARGUMENT")],
    )
    out = io.BytesIO()
    count = write_retries(
        io.BytesIO(input_lines(["a", "b", "c", "d", "b"])),
        out,
        reuse=[],
        results=[round0],
        opener=opener,
        should_retry=retry_predicate(None),
    )
    assert sent_texts(out.getvalue()) == ["b", "d"] and count == 2  # c: not transient; d: missing


# --------------------------------------------------------------------------- merge and cost


def test_merge_takes_the_latest_answer_in_input_order_and_counts_origins(tmp_path):
    earlier = results_file(tmp_path, "earlier.jsonl", [result_line("r", tokens=100)])
    round0 = results_file(
        tmp_path, "r0.jsonl", [result_line("f", status="UNAVAILABLE"), result_line("x"), result_line("g", status="X")]
    )
    round1 = results_file(tmp_path, "r1.jsonl", [result_line("f"), result_line("g", status="LAST REASON")])
    out, failed = io.BytesIO(), io.BytesIO()
    prices = check_prices({"prompt": 1.0, "candidates": 2.0})
    counts, origins, round_succeeded = merge_answers(
        io.BytesIO(input_lines(["x", "r", "f", "x", "g", "m"])),
        out,
        failed,
        reuse=[earlier],
        results=[round0, round1],
        opener=opener,
        prices=prices,
    )
    summary = {**counts, **origins}
    assert answer_texts(out.getvalue()) == ["x", "r", "f", "x", None, None]  # one line per request
    assert json.loads(out.getvalue().splitlines()[5]) == {"request": request("m"), "status": MISSING_STATUS}
    assert json.loads(out.getvalue().splitlines()[4])["status"] == "LAST REASON"
    assert sent_texts(failed.getvalue()) == ["g", "m"]
    assert summary["requests"] == 6 and summary["succeeded"] == 4 and summary["missing"] == 1
    assert (summary["reused"], summary["deduplicated"]) == (1, 1) and "sent" not in summary  # the batch counts sends
    assert round_succeeded == [1, 1] and "round_succeeded" not in summary
    assert summary["tokens_reused"]["prompt_tokens"] == 100
    # paid: x, f (10 prompt, 20 candidates, 30 thoughts each); thoughts priced as candidates
    assert summary["cost_usd"] == pytest.approx(2 * (10 * 1 + 20 * 2 + 30 * 2) / 1e6)
    assert summary["cost_avoided_usd"] == {
        "reused": pytest.approx((100 + 400 + 600) / 1e6),
        "deduplicated": pytest.approx(110 / 1e6),
    }
    assert summary["unmatched"] == 0 and summary["duplicates"] == 0


def test_merge_counts_results_matching_no_request(tmp_path):
    round0 = results_file(tmp_path, "r0.jsonl", [result_line("a"), result_line("zzz"), result_line("a")])
    summary = merge_answers(
        io.BytesIO(input_lines(["a"])), io.BytesIO(), io.BytesIO(), reuse=[], results=[round0], opener=opener
    ).counts
    assert (summary["unmatched"], summary["duplicates"]) == (1, 1)
    assert MISSING_STATUS  # the missing status is ResultSummary's


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ([1, 2], "must be a dict"),
        ({"prompt": 1}, "needs candidates"),
        ({"prompt": 1, "candidates": -1}, "number from 0 to 10000"),
        ({"prompt": 1, "candidates": 1, "output": 2}, "unknown keys"),
    ],
)
def test_bad_prices_are_refused(prices, message):
    with pytest.raises(ValueError, match=message):
        check_prices(prices)


def test_cost_of_token_totals():
    prices = check_prices({"prompt": 0.3, "candidates": 2.5, "thoughts": 2.5})
    assert cost_of({"prompt_tokens": 1_000_000, "candidates_tokens": 2_000_000, "thoughts_tokens": 0}, prices) == 5.3


def test_all_succeeded_reads_no_json_and_says_look_closer_otherwise():
    from airflow_provider_maas.batch.answers.pay_once import all_succeeded

    good = result_line("a") + b"\n" + result_line("b", compact=True)
    assert all_succeeded(io.BytesIO(good), 2)
    assert not all_succeeded(io.BytesIO(good), 3)  # one missing
    assert not all_succeeded(io.BytesIO(good + result_line("c", status="UNAVAILABLE")), 3)
    assert not all_succeeded(io.BytesIO(b'{"status": "", "request": {}}\n'), 1)  # another layout
