"""Bounded memory on hostile input (issue 19, finding 13): a file of one 300 MB line (no newline) is
refused by every pass that reads requests or results as soon as the line is over its limit (50 MiB
for a request, the upload limit; 100 MiB for a results line), with Python's peak allocation a
fraction of the line. Before, the dedupe pass joined the whole line, then decoded it: several times
its size (a 2 GiB line took 6.2 GB). Time and RSS at 2 GiB: ``make bench`` (``hostile-line``)."""

from __future__ import annotations

import contextlib
import io
import tracemalloc

import pytest

from airflow_provider_maas.batch.answers.matching import AnswerStore
from airflow_provider_maas.batch.answers.merge import merge_results
from airflow_provider_maas.batch.answers.pay_once import write_requests_to_send
from airflow_provider_maas.batch.inputs.lines import MAX_RESULT_LINE_BYTES, ResultsFormatError
from airflow_provider_maas.batch.inputs.shards import plan_shards
from airflow_provider_maas.exceptions import MaaSInputError, MaaSIntegrityError
from tests.helpers import batch_operator, make_context, write_requests

LINE_MB = 300
#: What a refused line may cost: the limit, one 8 MiB read chunk, the join of the pieces read so far.
REQUEST_PEAK_MB = 2 * 50 + 16
RESULT_PEAK_MB = 2 * MAX_RESULT_LINE_BYTES // 2**20 + 16


@pytest.fixture(scope="module")
def one_line(tmp_path_factory):
    """300 MB that start like a request line and never end it."""
    path = tmp_path_factory.mktemp("hostile") / "one-line.jsonl"
    block = b"x" * 2**20
    with path.open("wb") as out:
        out.write(b'{"request": {"contents": [{"role": "user", "parts": [{"text": "')
        for _ in range(LINE_MB):
            out.write(block)
    return path


@contextlib.contextmanager
def peak_mb(limit: float):
    """Fails unless Python's peak allocation inside the block stays under ``limit`` MB."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / 2**20 < limit, f"peak {peak / 2**20:.0f} MB"


def _opener(item):
    return open(item, "rb")


def test_planning_pass_refuses_the_line_with_bounded_memory(one_line):
    refused = pytest.raises(MaaSInputError, match=r"^line 1: is at least \d+ bytes with its newline, over the limit")
    with peak_mb(REQUEST_PEAK_MB), one_line.open("rb") as handle, refused:
        plan_shards(handle)


def test_dedupe_pass_refuses_the_line_with_bounded_memory(one_line):
    refused = pytest.raises(MaaSInputError, match=r"^line 1: is at least .* over the limit of 52428800 bytes")
    with peak_mb(REQUEST_PEAK_MB), one_line.open("rb") as handle, refused:
        write_requests_to_send(handle, io.BytesIO(), opener=_opener, deduplicate=True)


def test_reuse_index_refuses_a_results_file_of_one_line_with_bounded_memory(one_line, tmp_path):
    source = write_requests(tmp_path / "in.jsonl", 3)
    refused = pytest.raises(ResultsFormatError, match=r"reuse_results\[0\].* line 1: at least \d+ bytes long, over")
    with peak_mb(RESULT_PEAK_MB), source.open("rb") as handle, refused:
        write_requests_to_send(handle, io.BytesIO(), reuse=[f"reuse_results[0] {one_line}"], opener=_reuse)
    refused = pytest.raises(ResultsFormatError, match="not a MaaS results file")
    with peak_mb(RESULT_PEAK_MB), AnswerStore() as store, one_line.open("rb") as handle, refused:
        store.add("earlier", handle)


def _reuse(item):
    return open(item.split(" ", 1)[1], "rb")


@pytest.mark.parametrize("which", ["requests", "results"])
def test_merge_operator_readers_refuse_the_line_with_bounded_memory(one_line, tmp_path, which):
    small = write_requests(tmp_path / "in.jsonl", 3)
    requests, results = (one_line, small) if which == "requests" else (small, one_line)
    error = MaaSInputError if which == "requests" else MaaSIntegrityError
    with peak_mb(REQUEST_PEAK_MB if which == "requests" else RESULT_PEAK_MB), pytest.raises(error, match="line 1"):
        merge_results([results], requests, tmp_path / "out.jsonl")


def test_batch_operator_refuses_before_sending_anything(one_line, emulator, tmp_path):
    with peak_mb(REQUEST_PEAK_MB), pytest.raises(MaaSInputError, match="line 1: is at least"):
        batch_operator(one_line, tmp_path / "out.jsonl").execute(make_context())
    assert emulator.emulator.jobs_created == 0
    assert not [e for e in emulator.emulator.access_log if e["method"] == "POST"]
