"""Cost is honest (issue 20): an answer without usable token counts (no ``usageMetadata``, counts as
strings, negative or absurd counts) makes the cost unknown, counted in ``cost_unknown_answers``,
never zero; prices outside a sane range are refused; the summary stays strict JSON."""

from __future__ import annotations

import functools
import io
import json
import math

import pytest

from airflow_provider_maas.batch.answers.pay_once import merge_answers
from airflow_provider_maas.batch.answers.results import iter_results, summarize
from airflow_provider_maas.batch.cost.prices import MAX_PRICE, check_prices, cost_of
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import open_source

PRICES = {"prompt": 0.3, "candidates": 2.5, "thoughts": 2.5}
GOOD = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
BAD_USAGE = {
    "missing": None,
    "strings": {"promptTokenCount": "10", "candidatesTokenCount": "5", "totalTokenCount": "15"},
    "negative": {"promptTokenCount": -1000, "candidatesTokenCount": 5, "totalTokenCount": -995},
    "float": {"promptTokenCount": 10.5, "candidatesTokenCount": 5},
    "absurd": {"promptTokenCount": 10**30, "candidatesTokenCount": 5},
    "no-prompt-count": {"candidatesTokenCount": 5, "totalTokenCount": 5},
}


def request(n: int) -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": f"q{n}"}]}]}


def answer(n: int, usage: dict | None) -> bytes:
    response: dict = {"candidates": [{"content": {"role": "model", "parts": [{"text": f"a{n}"}]}}]}
    if usage is not None:
        response["usageMetadata"] = usage
    return json.dumps({"request": request(n), "response": response, "status": ""}).encode() + b"\n"


@pytest.mark.parametrize("kind", sorted(BAD_USAGE))
def test_an_answer_without_usable_counts_is_counted_not_priced_at_zero(kind):
    data = answer(0, GOOD) + answer(1, BAD_USAGE[kind])
    summary = summarize(iter_results(io.BytesIO(data)))
    assert summary["cost_unknown_answers"] == 1
    assert (summary["prompt_tokens"], summary["candidates_tokens"], summary["total_tokens"]) == (10, 5, 15)


def test_a_failed_request_is_not_an_unknown_cost():
    failed = json.dumps({"request": request(2), "status": "INTERNAL"}).encode() + b"\n"
    assert summarize(iter_results(io.BytesIO(failed)))["cost_unknown_answers"] == 0


def merged(tmp_path, usages: list[dict | None], *, reuse: list[dict | None] = ()) -> dict:
    source = b"".join(json.dumps({"request": request(n)}).encode() + b"\n" for n in range(len(usages)))
    results = tmp_path / "round0.jsonl"
    offset = len(reuse)
    results.write_bytes(b"".join(answer(n, u) for n, u in enumerate(usages) if n >= offset))
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_bytes(b"".join(answer(n, u) for n, u in enumerate(reuse)))
    counts, origins, _ = merge_answers(
        io.BytesIO(source),
        io.BytesIO(),
        io.BytesIO(),
        reuse=[earlier] if reuse else [],
        results=[results],
        opener=functools.partial(open_source, what="results file"),
        prices=check_prices(PRICES),
    )
    summary = {**counts, **origins}
    json.dumps(summary, allow_nan=False)  # strict JSON, whatever the counts
    return summary


def test_the_cost_is_unknown_when_a_paid_answer_has_no_counts(tmp_path):
    summary = merged(tmp_path, [GOOD, None, BAD_USAGE["strings"], BAD_USAGE["negative"]])
    assert summary["cost_unknown_answers"] == 3
    assert summary["cost_usd"] is None  # not 0.0, not a negative number
    assert merged(tmp_path, [GOOD, GOOD])["cost_usd"] == pytest.approx(2 * (10 * 0.3 + 5 * 2.5) / 1e6)


def test_unknown_counts_of_reused_answers_make_only_the_avoided_cost_unknown(tmp_path):
    summary = merged(tmp_path, [None, GOOD], reuse=[None])
    assert summary["reused"] == 1 and summary["cost_unknown_answers"] == 1
    assert summary["cost_avoided_usd"]["reused"] is None
    assert summary["cost_usd"] == pytest.approx((10 * 0.3 + 5 * 2.5) / 1e6)


@pytest.mark.parametrize("price", [1e308, math.inf, math.nan, -0.01, MAX_PRICE * 1.01, "0.3", True])
def test_prices_outside_a_sane_range_are_refused(price):
    with pytest.raises(MaaSInputError, match="prices"):
        check_prices({"prompt": price, "candidates": 1.0})


def test_the_highest_price_is_accepted_and_a_cost_is_never_infinite():
    assert check_prices({"prompt": MAX_PRICE, "candidates": 0})["prompt"] == MAX_PRICE
    assert cost_of({"prompt_tokens": 10**300}, {"prompt": 1e300, "candidates": 0, "thoughts": 0}) is None
    assert cost_of({"prompt_tokens": 10}, PRICES, unknown=1) is None
