"""OpenLineage: the operators that read and write files report them (input JSONL -> service file ->
job results -> results and failed files) through ``get_openlineage_facets_on_complete``; without
the OpenLineage provider the method returns None and nothing of it is imported."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlsplit

from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import (
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
    MaaSSplitRequestsOperator,
    MaaSUploadFileOperator,
)
from tests.conftest import ENDPOINT
from tests.helpers import make_context, write_requests


def _require_openlineage() -> None:
    """The provider is in the test extras: a missing one fails the test, it never skips silently."""
    import airflow.providers.openlineage  # noqa: F401


def _names(datasets) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def test_the_chain_reports_its_files_and_the_services(emulator, tmp_path):
    _require_openlineage()
    service = f"maas://{urlsplit(emulator.base_url).netloc}"
    source = write_requests(tmp_path / "requests.jsonl", 4)
    upload = MaaSUploadFileOperator(task_id="upload", source=str(source), file_name="in.jsonl")
    upload.execute(make_context())
    lineage = upload.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [("file", str(source))]
    assert _names(lineage.outputs) == [(service, f"{ENDPOINT}/files/in.jsonl")]

    create = MaaSCreateBatchJobOperator(task_id="create", file_name="in.jsonl")
    job_name = create.execute(make_context())
    lineage = create.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [(service, f"{ENDPOINT}/files/in.jsonl")]
    assert _names(lineage.outputs) == [(service, f"{ENDPOINT}/batchPredictionJobs/{job_name}/results")]

    MaaSHook().wait_for_batch_job(job_name, poll_interval=0.05, timeout=30)
    download = MaaSDownloadResultsOperator(
        task_id="download", job_name=job_name, destination=str(tmp_path / "out" / "results.jsonl"), source=str(source)
    )
    download.execute(make_context())
    lineage = download.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [
        (service, f"{ENDPOINT}/batchPredictionJobs/{job_name}/results"),
        ("file", str(source)),
    ]
    assert _names(lineage.outputs) == [
        ("file", str(tmp_path / "out" / "results.jsonl")),
    ]


def test_split_and_merge_report_their_files(emulator, tmp_path):
    _require_openlineage()
    source = write_requests(tmp_path / "requests.jsonl", 150)
    split = MaaSSplitRequestsOperator(task_id="split", source=str(source), destination_prefix=str(tmp_path / "shards"))
    shards = split.execute(make_context())
    lineage = split.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [("file", str(source))]
    assert _names(lineage.outputs) == [("file", str(tmp_path / "shards"))]

    hook = MaaSHook()
    parts = []
    for i, shard in enumerate(shards):
        job = hook.create_batch_job(hook.upload_file(shard, f"s{i}.jsonl")["name"], f"s{i}")
        hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
        hook.download_results(job["name"], tmp_path / f"part{i}.jsonl")
        parts.append(f"file://{tmp_path}/part{i}.jsonl")
    merge = MaaSMergeResultsOperator(
        task_id="merge", results=parts, source=str(source), destination=str(tmp_path / "merged.jsonl")
    )
    merge.execute(make_context())
    lineage = merge.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [("file", f"{tmp_path}/part{i}.jsonl") for i in range(2)] + [("file", str(source))]
    assert _names(lineage.outputs) == [
        ("file", str(tmp_path / "merged.jsonl")),
    ]


def test_the_batch_operator_reports_its_input_and_outputs(emulator, tmp_path):
    _require_openlineage()
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

    source = write_requests(tmp_path / "requests.jsonl", 150)
    earlier = write_requests(tmp_path / "earlier.jsonl", 0)
    dest = tmp_path / "out" / "results.jsonl"
    batch = MaaSBatchPredictionOperator(
        task_id="predict",
        source=str(source),
        destination=str(dest),
        reuse_results=str(earlier),
        reuse_other_models=True,  # a hand-written file: no record of its ENDPOINT
        poll_interval=0.05,
    )
    batch.execute(make_context())
    lineage = batch.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [("file", str(source)), ("file", str(earlier))]
    assert _names(lineage.outputs) == [("file", str(dest))]  # none failed: no failed file


def test_object_store_names_follow_the_openlineage_spec():
    _require_openlineage()
    from airflow.providers.common.compat.openlineage.facet import Dataset

    from airflow_provider_maas.operators._lineage import lineage_dataset

    dataset = lineage_dataset("s3://my_conn@bucket/out/results.jsonl", Dataset)
    assert (dataset.namespace, dataset.name) == ("s3://bucket", "out/results.jsonl")  # no connection id


def test_without_the_openlineage_provider_it_returns_none(emulator, tmp_path, monkeypatch):
    source = write_requests(tmp_path / "requests.jsonl", 2)
    upload = MaaSUploadFileOperator(task_id="upload", source=str(source))
    assert upload.get_openlineage_facets_on_complete(None) is None  # before execute: nothing recorded
    upload.execute(make_context())
    monkeypatch.setitem(sys.modules, "airflow.providers.openlineage.extractors", None)  # import fails
    assert upload.get_openlineage_facets_on_complete(None) is None


def test_importing_the_operators_imports_no_openlineage():
    code = (
        "import sys; import airflow_provider_maas.operators.maas, airflow_provider_maas.sensors.maas; "
        "print([m for m in sys.modules if m.startswith('openlineage') or 'openlineage.' in m"
        " and not m.endswith('get_provider_info')])"
    )  # Airflow's provider discovery may read the provider's get_provider_info: not ours, and cheap
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
