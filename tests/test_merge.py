"""The streaming merge (one shard's results indexed at a time) against the merge of one big index."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from airflow_provider_maas.batch.answers.merge import merge_results, merge_shard_results, summarise_results
from airflow_provider_maas.batch.answers.results import MISSING_STATUS, ResultsFormatError
from airflow_provider_maas.exceptions import MaaSInputError, MaaSIntegrityError
from tests.test_results import echo, result_line


def request(n: int) -> dict:
    """Line n's request; lines 3 and 5 ask the same (identical requests pair first come, first served)."""
    return {"contents": [{"role": "user", "parts": [{"text": f"question {3 if n == 5 else n}"}]}]}


def _shards(tmp_path: Path) -> tuple[Path, list[tuple[Path, int, int]]]:
    """40 input lines (a blank one), 4 shards; failures, missing results, duplicates, identical requests, strays."""
    rng = random.Random(7)
    lines = [json.dumps({"request": request(n)}).encode() + b"\n" for n in range(1, 41)]
    lines[17] = b"\n"
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(lines))
    parts = []
    for number, (first, last) in enumerate([(1, 10), (11, 20), (21, 30), (31, 40)]):
        results = []
        for n in range(first, last + 1):
            if n == 18 or n % 9 == 0:  # blank line; missing results
                continue
            status = "INTERNAL: boom" if n % 7 == 0 else ""
            line = result_line(echo(request(n)), None if status else f"answer {n}", status, promptTokenCount=n)
            results.append(line)
            if n % 11 == 0:
                results.append(line)  # the service wrote it twice
        results.append(result_line({"contents": [{"parts": [{"text": f"stray {number}"}]}]}))
        rng.shuffle(results)
        path = tmp_path / f"part-{number}.jsonl"
        path.write_bytes(b"".join(results))
        parts.append((path, first, last))
    return requests, parts


def test_merge_shard_results_equals_merge_results(tmp_path: Path):
    requests, parts = _shards(tmp_path)
    whole = merge_results([path for path, _, _ in parts], requests, tmp_path / "whole" / "out.jsonl")
    streamed = merge_shard_results(iter(parts), requests, tmp_path / "streamed" / "out.jsonl")

    assert {k: v for k, v in streamed.items() if k != "failed_uri"} == {
        k: v for k, v in whole.items() if k != "failed_uri"
    }
    assert (streamed["requests"], streamed["missing"], streamed["duplicates"], streamed["unmatched"]) == (39, 3, 3, 4)
    assert streamed["failed"] == 3 + 5  # lines 9, 27, 36 missing (18 is blank); 7, 14, 21, 28, 35 failed
    for name in ("out.jsonl", "out.failed.jsonl"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    # One line per input request, in input order: a missing one holds its request and MISSING_STATUS.
    lines = [json.loads(line) for line in (tmp_path / "streamed" / "out.jsonl").read_bytes().splitlines()]
    expected = [n for n in range(1, 41) if n != 18]
    assert [obj["request"] for obj in lines] == [request(n) if n % 9 == 0 else echo(request(n)) for n in expected]
    missing = [n for n, obj in zip(expected, lines, strict=True) if obj["status"] == MISSING_STATUS]
    assert missing == [9, 27, 36] and all("response" not in lines[expected.index(n)] for n in missing)


def test_merge_shard_results_counts_lines_outside_every_shard_as_missing(tmp_path: Path):
    requests, parts = _shards(tmp_path)
    summary = merge_shard_results(parts[1:3], requests, tmp_path / "out.jsonl")
    assert summary["requests"] == 39
    assert summary["missing"] == 10 + 10 + 1  # shards 1 and 4 absent; line 27 has no result


def test_merge_shard_results_refuses_parts_out_of_order(tmp_path: Path):
    requests, parts = _shards(tmp_path)
    with pytest.raises(ValueError, match="input order"):
        merge_shard_results([parts[1], parts[0]], requests, tmp_path / "out.jsonl")


def test_a_damaged_results_file_is_an_integrity_error_naming_the_file_and_line(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_bytes(result_line(request(1), "fine") + b'{"request": \n')
    with results.open("rb") as handle, pytest.raises(MaaSIntegrityError) as info:
        summarise_results(handle)  # an open file object is named by its name
    assert str(info.value).startswith(f"results file {results} line 2: not valid JSON")
    assert isinstance(info.value.__cause__, ResultsFormatError) and info.value.__cause__.line_number == 2
    with pytest.raises(MaaSIntegrityError, match=rf"^results file file://{results} line 2: not valid JSON"):
        summarise_results(str(results))


def test_the_failed_file_exists_only_when_a_request_failed_and_a_stale_one_is_removed(tmp_path: Path):
    requests, parts = _shards(tmp_path)
    failed = tmp_path / "out.failed.jsonl"
    summary = merge_shard_results(parts, requests, tmp_path / "out.jsonl")
    assert failed.exists() and summary["failed_uri"] == failed.as_uri()
    answered = tmp_path / "answered.jsonl"  # every request of lines 1-4 answered: nothing failed
    answered.write_bytes(b"".join(result_line(echo(request(n)), f"answer {n}") for n in range(1, 5)))
    only_four = tmp_path / "four.jsonl"
    only_four.write_bytes(b"".join(requests.read_bytes().splitlines(keepends=True)[:4]))
    for merge in (
        lambda: merge_results([answered], only_four, tmp_path / "out.jsonl"),
        lambda: merge_shard_results([(answered, 1, 4)], only_four, tmp_path / "out.jsonl"),
    ):
        failed.write_bytes(b"an earlier run's failures\n")
        summary = merge()
        assert (summary["failed"], summary["failed_uri"]) == (0, None)
        assert not failed.exists()  # it would name failures of another run
    failed.write_bytes(b"stale\n")
    summary = summarise_results(answered, failed_destination=failed)
    assert (summary["failed"], summary["failed_uri"], failed.exists()) == (0, None, False)


def test_without_the_input_a_duplicate_is_a_line_repeated_byte_for_byte(tmp_path: Path):
    same = result_line(echo(request(1)), "answer")
    other = result_line(echo(request(1)), "another answer")  # an identical request answered again: not a duplicate
    results = tmp_path / "r.jsonl"
    results.write_bytes(same + other + same)
    summary = summarise_results(results)
    assert (summary["requests"], summary["duplicates"]) == (2, 1)


class _LazyResults:
    """An XCom of a mapped upstream read lazily (``download.output``), holding no results files."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> str:
        raise IndexError(index)


@pytest.mark.parametrize("results", [[], (), _LazyResults()], ids=["list", "tuple", "mapped upstream"])
def test_no_results_files_are_refused_before_anything_is_written(tmp_path: Path, results):
    """It used to succeed, writing every request as missing: a successful task with nothing merged."""
    from airflow_provider_maas.operators.maas import MaaSMergeResultsOperator
    from tests.helpers import make_context

    requests, _ = _shards(tmp_path)
    says = f"No results files to merge into the order of the requests file {requests.as_uri()}"
    with pytest.raises(MaaSInputError, match=re.escape(says)):
        merge_results(iter(results), requests, tmp_path / "out.jsonl")
    merge = MaaSMergeResultsOperator(
        task_id="merge", results=results, source=str(requests), destination=str(tmp_path / "out.jsonl")
    )
    context = make_context()
    with pytest.raises(MaaSInputError, match="every request would be written as missing, so nothing was written"):
        merge.execute(context)
    assert not any(tmp_path.glob("out*")) and "summary" not in context["ti"].xcom
