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
REQUESTS_PER_CHUNK = 120  # chunks of 120, 120 and 10 requests; shards of at most 100: 2 + 2 + 1 jobs


def test_chunked_example_merges_every_chunk_in_input_order(emulator_factory, tmp_path, monkeypatch, capsys):
    emu = emulator_factory(job_duration=0.5, shuffle_results=True, normalise_requests=True)
    requests = write_requests(tmp_path / "requests.jsonl", REQUESTS)
    monkeypatch.setenv("MAAS_EXAMPLE_REQUESTS_PER_CHUNK", str(REQUESTS_PER_CHUNK))
    dag = _load_dag("example_maas_batch_chunked", monkeypatch, tmp_path / "out")
    run = dag.test(run_conf={"source": str(requests)})
    assert run.state == "success"
    chunks = sorted(tmp_path.rglob("chunks/chunk-*.jsonl"))
    assert [sum(1 for _ in path.open()) for path in chunks] == [120, 120, 10]
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "predict"]
    assert sorted(ti.map_index for ti in mapped) == [0, 1, 2]
    assert {ti.state for ti in mapped} == {"success"}
    assert emu.emulator.jobs_created == 5  # one job per shard of each chunk, none twice
    merged = _only("results.jsonl", tmp_path / "out")
    assert_in_input_order(requests, merged)
    assert not merged.with_name("results.failed.jsonl").exists()  # none failed: no failed file
    _assert_no_key(capsys.readouterr(), run, emu)


def test_chunking_refuses_a_bad_line_before_writing_any_chunk(tmp_path):
    from airflow_provider_maas.operators.maas import MaaSSplitRequestsOperator

    source = tmp_path / "requests.jsonl"
    source.write_text('{"request": {"contents": [{"role": "user", "parts": [{"text": "ok"}]}]}}\nnot json\n')
    split = MaaSSplitRequestsOperator(
        task_id="chunk", source=str(source), destination_prefix=str(tmp_path / "chunks"), for_upload=False
    )
    with pytest.raises(MaaSInputError, match="line 2"):
        split.execute({})
    assert not (tmp_path / "chunks").exists()


def test_split_cuts_chunks_over_the_upload_limits_only_when_asked(tmp_path):
    from airflow_provider_maas.operators.maas import MaaSSplitRequestsOperator

    source = write_requests(tmp_path / "requests.jsonl", 250)
    with pytest.raises(MaaSInputError, match="max_requests_per_file must be between 1 and 100"):
        MaaSSplitRequestsOperator(
            task_id="split", source=str(source), destination_prefix=str(tmp_path / "shards"), max_requests_per_file=120
        ).execute({})
    uris = MaaSSplitRequestsOperator(
        task_id="chunk",
        source=str(source),
        destination_prefix=str(tmp_path / "chunks"),
        max_requests_per_file=120,
        for_upload=False,
    ).execute({})
    assert [uri.rsplit("/", 1)[1] for uri in uris] == ["chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl"]
    assert [sum(1 for _ in (tmp_path / "chunks" / f"chunk-0000{i}.jsonl").open()) for i in range(3)] == [120, 120, 10]
    assert (
        b"".join((tmp_path / "chunks" / f"chunk-0000{i}.jsonl").read_bytes() for i in range(3)) == source.read_bytes()
    )
