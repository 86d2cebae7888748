"""One output line per input request (issue 19, finding 14): whoever pairs input line i with output
line i gets the answer to request i, also when the service returned no line for some requests.
Such a request keeps its place with its request and ``MISSING_STATUS``; the summary counts it as
``missing`` and the failed file lists it."""

from __future__ import annotations

import json
import random

import pytest

from airflow_provider_maas.batch.answers.results import MISSING_STATUS
from airflow_provider_maas.operators.maas import MaaSMergeResultsOperator
from tests.helpers import assert_in_input_order, batch_operator, make_context, write_requests
from tests.test_results import result_line

REQUESTS, DROPPED = 250, 35


def _failed_texts(path) -> list[str]:
    return [json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(
    ("request_retries", "faults", "dropped"),
    [
        # 3 shards (100, 100, 50); two jobs' results lack 20 and 15 lines: 35 in all (merged shard by shard).
        (0, ["create:1:partial-missing=20", "create:1:partial-missing=15"], DROPPED),
        # Every job loses its last 7 lines, the retry round's too: 7 stay missing (merged across rounds).
        (1, ["create:*:partial-missing=7"], 7),
    ],
)
def test_batch_destination_has_a_line_for_every_request_the_service_dropped(
    emulator_factory, tmp_path, request_retries, faults, dropped
):
    emulator_factory(faults=faults, shuffle_results=True)
    source = write_requests(tmp_path / "in.jsonl", REQUESTS)
    dest = tmp_path / "results.jsonl"
    context = make_context()
    batch_operator(source, dest, request_retries=request_retries).execute(context)

    records = assert_in_input_order(source, dest, expect_missing=dropped)  # line i answers request i
    assert len(dest.read_bytes().splitlines()) == REQUESTS
    summary = context["ti"].xcom["summary"]
    assert (summary["requests"], summary["succeeded"], summary["missing"]) == (REQUESTS, REQUESTS - dropped, dropped)
    missing = [r.request["contents"][0]["parts"][0]["text"] for r in records if r.status == MISSING_STATUS]
    assert _failed_texts(tmp_path / "results.failed.jsonl") == missing
    assert all(r.response is None for r in records if r.status == MISSING_STATUS)


def test_merge_operator_output_has_a_line_for_every_request(tmp_path):
    source = write_requests(tmp_path / "in.jsonl", REQUESTS)
    requests = [json.loads(line)["request"] for line in source.read_bytes().splitlines()]
    rng = random.Random(19)
    dropped = set(rng.sample(range(REQUESTS), DROPPED))
    sources = []
    for number, (first, last) in enumerate([(0, 100), (100, 200), (200, REQUESTS)]):
        lines = [result_line(requests[i], f"answer {i}") for i in range(first, last) if i not in dropped]
        rng.shuffle(lines)
        path = tmp_path / f"part-{number}.jsonl"
        path.write_bytes(b"".join(lines))
        sources.append(str(path))
    dest = tmp_path / "merged.jsonl"
    context = make_context()
    MaaSMergeResultsOperator(task_id="merge", results=sources, source=str(source), destination=str(dest)).execute(
        context
    )

    lines = [json.loads(line) for line in dest.read_bytes().splitlines()]
    assert [line["request"] for line in lines] == requests
    assert [i for i, line in enumerate(lines) if line["status"] == MISSING_STATUS] == sorted(dropped)
    assert all(
        lines[i]["response"]["candidates"][0]["content"]["parts"][1]["text"] == f"answer {i}"
        for i in range(REQUESTS)
        if i not in dropped
    )
    summary = context["ti"].xcom["summary"]
    assert (summary["requests"], summary["missing"], summary["failed"]) == (REQUESTS, DROPPED, DROPPED)
    assert len(_failed_texts(tmp_path / "merged.failed.jsonl")) == DROPPED
