"""Adversarial trial of session 7's changes (the Bloom-filtered answer engine, the lineage wrapper
skipped on reads, the yes/no parameters read by one parser, the deprecated names through mapping, the
empty merge refused). Each test tries to break one promise; a failing test is a bug found."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_maas.batch.answers.matching as matching
from airflow_provider_maas.batch.answers.matching import AnswerStore
from airflow_provider_maas.batch.answers.results import request_digest
from airflow_provider_maas.exceptions import MaaSInputError, MaaSIntegrityError
from tests.conftest import ROOT
from tests.helpers import record_input_assets
from tests.test_results import echo, result_line


def _ask(n: int) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": f"q{n}"}]}]}


# --------------------------------------------------------------------------- the engine against a model


def _model(
    rows: list[tuple[int | None, bool, int]], asked: list[int], *, shared: bool, first_source: int
) -> tuple[list[int | None], list[bool], int, int]:
    """The promise, written naively. ``rows``: the answers indexed, in order, as (request or None for a
    line without one, succeeded, source); returns the row given to each request (its index), whether it
    repeats one before, and the unmatched and duplicate lines of sources >= ``first_source``."""
    given, repeated, count = [], [], {}
    for req in asked:
        repeated.append(req in count)
        count[req] = k = count.get(req, 0) + 1
        successes = [i for i, (r, ok, _) in enumerate(rows) if r == req and ok]
        failures = [i for i, (r, ok, _) in enumerate(rows) if r == req and not ok]
        last_failure = failures[-1] if failures else None
        if shared or k == 1:
            given.append(successes[0] if successes else last_failure)
        else:
            given.append(successes[k - 1] if len(successes) >= k else last_failure)
    unmatched = sum(1 for r, _, s in rows if s >= first_source and (r is None or r not in count))
    duplicates = 0
    for req, n in count.items():
        successes = [s for r, ok, s in rows if r == req and ok]
        duplicates += sum(1 for s in successes[1 if shared else n :] if s >= first_source)
    return given, repeated, unmatched, duplicates


def _line(req: int | None, ok: bool) -> bytes:
    if req is None:  # a line without a request: unmatched whatever is asked
        return json.dumps({"response": {"candidates": []}, "status": "" if ok else "INTERNAL"}).encode() + b"\n"
    return result_line(echo(_ask(req)), "a" if ok else None, "" if ok else "INTERNAL: boom")


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize(
    ("block", "flush", "bloom_bits"),
    [(1, 1, 8), (2, 3, 8), (5, 2, 16), (7, 50, 64), (3, 10_000, 1 << 12)],
    ids=["block1-flush1-bloom8", "block2-flush3-bloom8", "block5-flush2-bloom16", "block7-flush50", "big-bloom"],
)
@pytest.mark.parametrize("seed", range(4))
def test_the_engine_equals_a_naive_model_through_many_clears_leftovers_and_false_positives(
    monkeypatch, seed, block, flush, bloom_bits, shared
):
    """Tiny blocks, flushes after every digest or never, a Bloom filter of 8 bits (every lookup a false
    positive after a few digests), ten clear() cycles in one store, several sources (leftovers counted
    from a random ``first_source``), lines without a request, requests never answered, leftovers()
    asked between match() calls at random points, and match() called on pieces of the input."""
    monkeypatch.setattr(matching, "_MATCH_BLOCK", block)
    monkeypatch.setattr(matching, "_SEEN_FLUSH", flush)
    monkeypatch.setattr(matching, "_BLOOM_BITS", bloom_bits)
    monkeypatch.setattr(matching, "_BLOOM_MASK", bloom_bits - 1)
    rng = random.Random(f"{seed}-{block}-{flush}-{bloom_bits}-{shared}")
    digests = {n: request_digest(_ask(n)) for n in range(50)}
    with AnswerStore() as store:
        for cycle in range(10):
            store.clear()
            pool = rng.choice([3, 8, 20, 40])
            rows: list[tuple[int | None, bool, int]] = []
            base = len(store.sources)
            for number in range(rng.randrange(1, 4)):
                lines = [
                    (None if rng.random() < 0.08 else rng.randrange(pool), rng.random() < 0.6, base + number)
                    for _ in range(rng.randrange(0, 30))
                ]
                rows += lines
                store.add(f"cycle {cycle} file {number}", io.BytesIO(b"".join(_line(r, ok) for r, ok, _ in lines)))
            asked = [rng.randrange(pool + 5) for _ in range(rng.randrange(0, 60))]  # some never answered
            matched: list[tuple[int, Any, bool]] = []
            start = 0
            while start < len(asked):
                end = start + rng.randrange(1, 12)
                matched += store.match(asked[start:end], digests.__getitem__, shared=shared)
                start = end
                if rng.random() < 0.4:
                    store.leftovers(base, shared=shared)  # asked midway: must change nothing
            first_source = base + rng.randrange(0, len(store.sources) - base)
            left = store.leftovers(first_source, shared=shared)
            given, repeated, unmatched, duplicates = _model(rows, asked, shared=shared, first_source=first_source)
            locations = [(source, line) for source, line, _, _, _ in _locations(store, base)]
            got = [None if a is None else locations.index((a.source, a.line)) for _, a, _ in matched]
            assert [item for item, _, _ in matched] == asked
            assert got == given, f"cycle {cycle}"
            assert [r for _, _, r in matched] == repeated, f"cycle {cycle}"
            assert (left.unmatched, left.duplicates) == (unmatched, duplicates), f"cycle {cycle}"


def _locations(store: AnswerStore, base: int) -> list[tuple[int, int, int, int, int]]:
    """The answers rows of this cycle, in the order they were indexed."""
    return store._db.execute(
        "SELECT source, line, offset, length, ok FROM answers WHERE source >= ? ORDER BY rowid", (base,)
    ).fetchall()


def test_300_000_distinct_digests_in_the_full_size_filter_give_no_false_repeat():
    """The real filter (8 MiB, two bits) over 300,000 distinct requests in real blocks: no request is
    called a repeat, and a second pass over the same requests calls every one a repeat."""
    keys = [i.to_bytes(16, "big") for i in range(300_000)]
    with AnswerStore() as store:
        assert not any(repeated for _, _, repeated in store.match(keys, bytes, shared=True))
        assert all(repeated for _, _, repeated in store.match(keys[::-7], bytes, shared=True))


# --------------------------------------------------------------------------- a results file changed under the merge


def _changing(tmp_path: Path, how: str) -> tuple[Path, Path]:
    asked = [_ask(n) for n in range(30)]
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(json.dumps({"request": r}).encode() + b"\n" for r in asked))
    results = tmp_path / "results.jsonl"
    results.write_bytes(b"".join(result_line(echo(r), f"answer {n}") for n, r in enumerate(reversed(asked))))
    return requests, results


@pytest.mark.parametrize("how", ["truncate", "truncate-to-half", "rewrite-in-place"])
@pytest.mark.parametrize("uri", [True, False], ids=["file-uri", "path"])
def test_a_results_file_changed_between_indexing_and_reading_is_noticed_as_before(tmp_path, monkeypatch, how, uri):
    """The file is truncated (or rewritten in place, same size) once indexed, before any answer is read:
    the merge refuses it as the previous engine did (a short read), and writes nothing."""
    from airflow_provider_maas.batch.answers import merge as merge_module
    from airflow_provider_maas.batch.answers.merge import merge_results
    from airflow_provider_maas.batch.inputs.lines import ResultsFormatError

    requests, results = _changing(tmp_path, how)
    real_reader = merge_module.reader

    def reader_after_a_change(files, labels):
        data = results.read_bytes()
        with open(results, "r+b") as handle:  # the same file (inode) changed, as a writer still at work would
            if how == "truncate":
                handle.truncate(len(data) - 5)
            elif how == "truncate-to-half":
                handle.truncate(len(data) // 2)
            else:
                handle.write(data.replace(b"answer", b"ANSWER"))
        return real_reader(files, labels)

    monkeypatch.setattr(merge_module, "reader", reader_after_a_change)
    given = f"file://{results}" if uri else results
    out = tmp_path / "out.jsonl"
    if how == "rewrite-in-place":  # same length: not a short read; what is written is what the file holds now
        merge_results([given], requests, out)
        assert b"ANSWER" in out.read_bytes()
        return
    with pytest.raises((ResultsFormatError, MaaSIntegrityError), match="did the file change"):
        merge_results([given], requests, out)
    assert not out.exists()


def test_lineage_of_each_results_file_is_still_recorded_by_the_shard_merge(tmp_path, monkeypatch):
    """merge_shard_results reads each shard through the wrapper once (indexing), then past it: each shard's
    results file is still recorded as an input asset, however small (read into memory) or large."""
    from airflow_provider_maas.batch.answers import merge as merge_module
    from airflow_provider_maas.batch.answers.merge import merge_shard_results

    recorded = record_input_assets(monkeypatch)
    asked = [_ask(n) for n in range(12)]
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(json.dumps({"request": r}).encode() + b"\n" for r in asked))
    parts = []
    for number, (first, last) in enumerate([(1, 6), (7, 12)]):
        path = tmp_path / f"part-{number}.jsonl"
        path.write_bytes(b"".join(result_line(echo(r), f"a{n}") for n, r in enumerate(asked[first - 1 : last])))
        parts.append((f"file://{path}", first, last))
    for small in (True, False):
        recorded.clear()
        if not small:
            monkeypatch.setattr(merge_module, "_in_memory_if_small", lambda handle: handle, raising=False)
        summary = merge_shard_results(parts, requests, tmp_path / f"out-{small}.jsonl")
        assert summary["succeeded"] == 12
        for number in range(2):
            assert any(uri.endswith(f"part-{number}.jsonl") for uri in recorded), (small, recorded)


# --------------------------------------------------------------------------- yes/no parameters


def _operators() -> list[tuple[type, dict[str, Any], str, str]]:
    from tests.test_operator_flags import FLAGS

    return FLAGS


FLAG_CASES = _operators()
FLAG_IDS = [f"{operator.__name__}.{name}" for operator, _, name, _ in FLAG_CASES]


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAG_CASES, ids=FLAG_IDS)
@pytest.mark.parametrize(
    ("given", "read"),
    [("False ", False), ("0", False), ("no", False), ("None", False), ("", False), ("\tOFF\n", False), ("1", True)],
)
def test_the_spellings_of_false_are_false_for_every_flag(operator, required, name, attribute, given, read):
    assert getattr(operator(task_id="t", **required, **{name: given}), attribute) is read


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAG_CASES, ids=FLAG_IDS)
@pytest.mark.parametrize(
    "given",
    ["{{ params.x }}", "{{params.x}}", "nope", "2", "-1", "true false", "y", "n", "t", "f", "1.0", "False,", 0, 1.0],
)
def test_anything_not_a_flag_is_refused_where_the_dag_is_parsed_and_in_partial(
    operator, required, name, attribute, given
):
    with pytest.raises(MaaSInputError, match=re.escape(name)):
        operator(task_id="t", **required, **{name: given})
    _, *rest = required.items()
    with pytest.raises(MaaSInputError, match=re.escape(name)):
        operator.partial(task_id="t", **dict(rest), **{name: given})


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAG_CASES, ids=FLAG_IDS)
def test_a_bad_flag_in_default_args_is_refused_where_the_dag_is_parsed(operator, required, name, attribute):
    """``default_args`` reach ``__init__`` of an operator made in the DAG file, and ``.partial()`` through
    the DAG: a typo there must be refused where the DAG is parsed too, not by each mapped task instance."""
    from airflow.sdk import DAG, TaskGroup

    first, *rest = required.items()
    with (
        pytest.raises(MaaSInputError, match=re.escape(name)),
        DAG("default_args_plain", schedule=None, default_args={name: "ture"}),
    ):
        operator(task_id="t", **required)
    with (
        pytest.raises(MaaSInputError, match=re.escape(name)),
        DAG("default_args_partial", schedule=None, default_args={name: "ture"}),
    ):
        operator.partial(task_id="t", **dict(rest)).expand(**{first[0]: [first[1]]})
    with (
        pytest.raises(MaaSInputError, match=re.escape(name)),
        DAG("default_args_group", schedule=None),
        TaskGroup("g", default_args={name: "ture"}),
    ):
        operator.partial(task_id="t", **dict(rest)).expand(**{first[0]: [first[1]]})
    with pytest.raises(MaaSInputError, match=re.escape(name)):
        operator.partial(task_id="t", default_args={name: "{{ params.x }}"}, **dict(rest))
    with DAG("default_args_good", schedule=None, default_args={name: "ture"}):  # the task's own value wins
        operator.partial(task_id="t", **dict(rest), **{name: "false"})
    with DAG("default_args_false", schedule=None, default_args={name: "false"}):
        mapped = operator.partial(task_id="t", **dict(rest)).expand(**{first[0]: [first[1]]})
    assert getattr(mapped.unmap({first[0]: first[1]}), attribute) is False


@pytest.mark.parametrize(
    ("rendered", "read"),
    [
        ("False ", False),
        ("0", False),
        ("no", False),
        ("None", False),
        ("", False),
        (" true\n", True),
        ("1", True),
    ],
)
def test_start_over_rendered_reads_only_a_true_spelling_as_true(rendered, read):
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

    op = MaaSBatchPredictionOperator(task_id="t", source="a", destination="b", start_over="{{ params.s }}")
    op.start_over = rendered
    assert op._settings().start_over is read


@pytest.mark.parametrize(
    "rendered", ["ture", "False,", "[True]", "{'x': True}", "y", "2", "True False", "yes please", "0.0", "nan"]
)
def test_start_over_that_is_not_a_flag_is_refused_never_read_as_true(rendered):
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

    op = MaaSBatchPredictionOperator(task_id="t", source="a", destination="b", start_over="{{ params.s }}")
    op.start_over = rendered
    with pytest.raises(MaaSInputError, match="start_over must be true or false"):
        op._settings()


# --------------------------------------------------------------------------- empty merges, renamed names


@pytest.mark.parametrize("results", [[], (), iter([])])
def test_an_empty_results_is_refused_and_nothing_is_written(tmp_path, results):
    from airflow_provider_maas.batch.answers.merge import merge_results

    requests = tmp_path / "r.jsonl"
    requests.write_bytes(json.dumps({"request": _ask(1)}).encode() + b"\n")
    with pytest.raises(MaaSInputError, match="No results files to merge"):
        merge_results(results, requests, tmp_path / "out" / "m.jsonl")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_merge_operator_refuses_an_empty_results_before_writing(tmp_path):
    from airflow_provider_maas.operators.maas import MaaSMergeResultsOperator
    from tests.helpers import make_context

    requests = tmp_path / "r.jsonl"
    requests.write_bytes(json.dumps({"request": _ask(1)}).encode() + b"\n")
    for empty in ([], ()):
        op = MaaSMergeResultsOperator(task_id="m", results=empty, source=requests, destination=tmp_path / "m.jsonl")
        with pytest.raises(MaaSInputError, match="No results files to merge"):
            op.execute(make_context())
        assert not (tmp_path / "m.jsonl").exists() and not (tmp_path / "m.failed.jsonl").exists()


def test_old_and_new_name_both_in_partial_or_split_between_partial_and_expand_is_refused():
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator, MaaSMergeResultsOperator

    with pytest.raises(MaaSInputError, match="sources is the old name of results"):
        MaaSMergeResultsOperator.partial(task_id="m", sources=["a"], results=["b"])
    with pytest.raises(MaaSInputError, match="wait_timeout is the old name of timeout"):
        MaaSBatchPredictionOperator.partial(task_id="b", source="a", wait_timeout=3, timeout=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped = MaaSMergeResultsOperator.partial(task_id="m2", results=["b"], destination="d").expand(
            sources=[["a"]], source=["r"]
        )
    with pytest.raises(MaaSInputError, match="sources is the old name of results"):
        mapped.unmap({"sources": ["a"], "source": "r"})


# --------------------------------------------------------------------------- flags through mapping, in a real run


def test_flag_strings_and_old_names_through_partial_and_expand_in_a_real_run(emulator, tmp_path, monkeypatch):
    """A batch mapped over dry_run ("no": the paid batch; " YES ": a plan, nothing created), with
    deduplicate="False " and deferrable="false" in .partial(), fail_on_partial from default_args and the
    old wait_timeout name; a merge mapped over the old names. Exactly one batch of three identical
    requests is paid for, each sent (not deduplicated)."""
    import importlib.util

    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"request": {"contents": [{"role": "user", "parts": [{"text": "same"}]}]}}\n' * 3)
    out = tmp_path / "out"
    monkeypatch.setenv("MAAS_TRIAL_REQUESTS", str(requests))
    monkeypatch.setenv("MAAS_TRIAL_OUTPUT", str(out))
    spec = importlib.util.spec_from_file_location(
        "maas_trial_s7_flags_under_test", ROOT / "tests" / "dags" / "maas_trial_s7_flags.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert emulator.emulator.jobs_created == 1
    paid = [json.loads(line) for line in (out / "paid.jsonl").read_text().splitlines()]
    assert len(paid) == 3 and all(line.get("status") == "" for line in paid)
    assert not (out / "plan.jsonl").exists()
    assert (out / "merged.jsonl").read_bytes() == (out / "paid.jsonl").read_bytes()


# --------------------------------------------------------------------------- parse-time refusals, as before the trim

_PARSE_SCRIPT = r"""
import json, warnings
warnings.simplefilter("ignore")
from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator, MaaSDownloadResultsOperator, MaaSMergeResultsOperator, MaaSSplitRequestsOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

BATCH = {"source": "a", "destination": "b"}
CASES = {
    "batch": (MaaSBatchPredictionOperator, BATCH, [
        {"max_requests_per_file": 0}, {"max_requests_per_file": 10**9}, {"max_bytes_per_file": -1},
        {"max_bytes_per_file": 10**12}, {"retry_failures": ["("]}, {"retry_failures": 3}, {"prices": {"m": -1}},
        {"prices": "x"}, {"max_cost_usd": -5, "prices": {"m": 1.0}}, {"max_cost_usd": 5},
        {"canary_requests": -1}, {"canary_max_failed": 2}, {"default_max_output_tokens": 0},
        {"max_tokens_per_file_part": 0}, {"request_retries": -1}, {"shard_retries": -1}, {"max_active_jobs": 0},
        {"max_parallel_transfers": 0}, {"max_consecutive_poll_errors": 0}, {"poll_interval": -1}, {"timeout": -1},
        {"response_schema": "x"}, {"response_schema": 3}, {"max_requests_per_file": "10"},
        {"wait_timeout": 3, "timeout": 4}, {"canary_requests": 5, "dry_run": True},
    ]),
    "split": (MaaSSplitRequestsOperator, {"source": "a", "destination_prefix": "b"}, [
        {"max_requests_per_file": 0}, {"max_requests_per_file": 10**9}, {"max_bytes_per_file": 0},
        {"max_bytes_per_file": 10**12},
    ]),
    "sensor": (MaaSBatchJobSensor, {"job_name": "j"}, [{"poll_interval": -1}, {"poll_interval": 0}, {"timeout": -1}]),
    "merge": (MaaSMergeResultsOperator, {"destination": "d"}, [{}, {"results": ["a"]}, {"source": "r"}]),
    "download": (MaaSDownloadResultsOperator, {"job_name": "j", "destination": "b"}, [{"requests": "a", "source": "b"}]),
}
report = {}
for label, (operator, required, cases) in CASES.items():
    for number, case in enumerate(cases):
        try:
            operator(task_id="t", **required, **case)
            report[f"{label}-{number}-{sorted(case)}"] = None
        except Exception as err:
            report[f"{label}-{number}-{sorted(case)}"] = type(err).__name__
print(json.dumps(report, sort_keys=True))
"""


def test_every_bad_parameter_is_refused_where_the_dag_is_parsed():
    """The construction checks moved (batch/parameters.py, BatchSettings loaded at execute): each bad
    parameter is refused when the operator is made, in a fresh interpreter (what a DAG parse loads),
    with MaaSInputError. Main before session 7 accepted the batch operator's ``poll_interval=-1`` and
    ``timeout=-1`` and the sensor's ``poll_interval=0`` (``-1``: Airflow's ValueError)."""
    result = subprocess.run(
        [sys.executable, "-c", _PARSE_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) == 37
    accepted = {case for case, error in report.items() if error is None}
    assert accepted == {"batch-25-['canary_requests', 'dry_run']"}  # a canary planned by a dry run: fine
    assert report.pop("sensor-2-['timeout']") == "ValueError"  # Airflow's own check of a sensor's timeout
    assert {error for error in report.values() if error is not None} == {"MaaSInputError"}


def test_the_old_timeout_name_mapped_with_expand_reaches_timeout():
    from airflow_provider_maas._compat import AirflowProviderDeprecationWarning
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

    mapped = MaaSBatchPredictionOperator.partial(task_id="b", source="a", destination="d").expand(wait_timeout=[30, 60])
    with pytest.warns(AirflowProviderDeprecationWarning, match="wait_timeout is deprecated"):
        assert mapped.unmap({"wait_timeout": 60}).timeout == 60
    with pytest.raises(MaaSInputError, match="wait_timeout is the old name of timeout"):
        MaaSBatchPredictionOperator.partial(task_id="c", source="a", destination="d", timeout=5).expand(
            wait_timeout=[30]
        ).unmap({"wait_timeout": 30})
