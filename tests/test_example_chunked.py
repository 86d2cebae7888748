"""``example_maas_batch_chunked`` end to end (``dag.test()``) against the emulator (issue 11, item 5).

The input is cut into chunks of more than one shard, each chunk runs as one mapped
``MaaSBatchPredictionOperator`` instance, and the merge writes one results file in input order.
The emulator shuffles results, so the order proves the matching, not luck.
"""

from __future__ import annotations

import pytest

from airflow_provider_maas.exceptions import MaaSInputError
from tests.helpers import assert_in_input_order, write_requests
from tests.test_example_dags import _assert_no_key, _load_dag, _only

REQUESTS = 250
CHUNK_SIZE = 120  # chunks of 120, 120 and 10 requests; shards of at most 100: 2 + 2 + 1 jobs


def test_chunked_example_merges_every_chunk_in_input_order(emulator_factory, tmp_path, monkeypatch, capsys):
    emu = emulator_factory(job_duration=0.5, shuffle_results=True, normalise_requests=True)
    requests = write_requests(tmp_path / "requests.jsonl", REQUESTS)
    dag = _load_dag("example_maas_batch_chunked", monkeypatch, tmp_path / "out")
    run = dag.test(run_conf={"source": str(requests), "chunk_size": CHUNK_SIZE})
    assert run.state == "success"
    chunks = sorted(tmp_path.rglob("chunks/chunk-*.jsonl"))
    assert [sum(1 for _ in path.open()) for path in chunks] == [120, 120, 10]
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "predict"]
    assert sorted(ti.map_index for ti in mapped) == [0, 1, 2]
    assert {ti.state for ti in mapped} == {"success"}
    assert emu.emulator.jobs_created == 5  # one job per shard of each chunk, none twice
    merged = _only("results.jsonl", tmp_path / "out")
    assert_in_input_order(requests, merged)
    assert merged.with_name("results.failed.jsonl").read_bytes() == b""
    _assert_no_key(capsys.readouterr(), run, emu)


def test_chunking_refuses_a_bad_line_before_writing_any_chunk(tmp_path, monkeypatch):
    module_dag = _load_dag("example_maas_batch_chunked", monkeypatch, tmp_path)
    chunk = module_dag.get_task("chunk_requests").python_callable
    source = tmp_path / "requests.jsonl"
    source.write_text('{"request": {"contents": [{"role": "user", "parts": [{"text": "ok"}]}]}}\nnot json\n')
    with pytest.raises(MaaSInputError, match="line 2"):
        chunk(str(source), 1, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "chunks").exists()
