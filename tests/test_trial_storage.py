"""Trial of the storage promises on operators the other storage tests do not drive: the batch
operator and the download's extracted images hand on URIs that keep their connection id, and a
destination that cannot be written fails before anything is uploaded or created."""

from __future__ import annotations

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.operators.maas import MaaSDownloadResultsOperator
from tests.helpers import batch_operator, make_context, write_requests


@pytest.fixture
def conn_only_memfs():
    """``memory://`` usable only WITH connection ``my_conn``: a URI that dropped it fails."""
    from airflow.sdk.io import attach
    from airflow.sdk.io.store import _STORE_CACHE

    fs = MemoryFileSystem()
    for alias in ("memory", "memory-my_conn"):
        _STORE_CACHE.pop(alias, None)
    attach("memory", conn_id="my_conn", fs=fs)
    fs.store.clear()
    yield fs
    fs.store.clear()
    for alias in ("memory", "memory-my_conn"):
        _STORE_CACHE.pop(alias, None)


def test_the_batch_operator_keeps_the_connection_in_its_xcom(conn_only_memfs, emulator, tmp_path):
    conn_only_memfs.pipe("/bucket/in/r.jsonl", write_requests(tmp_path / "r.jsonl", 3).read_bytes())
    context = make_context()
    op = batch_operator("memory://my_conn@bucket/in/r.jsonl", "memory://my_conn@bucket/out/r.jsonl")
    assert op.execute(context) == "memory://my_conn@bucket/out/r.jsonl"
    summary = context["ti"].xcom["summary"]
    assert summary["failed_uri"] is None  # none failed: no failed file
    assert summary["succeeded"] == 3


def test_extracted_image_uris_keep_the_connection(conn_only_memfs, emulator_factory, tmp_path):
    from airflow_provider_maas.hooks.maas import MaaSHook

    emulator_factory(image_output=True)
    hook = MaaSHook()
    job = hook.create_batch_job(hook.upload_file(write_requests(tmp_path / "r.jsonl", 2), "r.jsonl")["name"], "img")
    hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
    context = make_context()
    MaaSDownloadResultsOperator(
        task_id="download", job_name=job["name"], destination="memory://my_conn@bucket/out/r.jsonl", extract_images=True
    ).execute(context)
    images = context["ti"].xcom["images"]
    assert len(images) == 2
    assert all(uri.startswith("memory://my_conn@bucket/out/r_images/") for uri in images), images


@pytest.mark.parametrize("under_a_file", ["out.jsonl", "in.jsonl/dir"])
def test_an_unwritable_batch_destination_fails_before_any_upload(emulator, tmp_path, under_a_file):
    source = write_requests(tmp_path / "in.jsonl", 3)
    (tmp_path / "blocker").write_text("a file, not a folder")
    dest = tmp_path / "blocker" / under_a_file
    with pytest.raises(MaaSInputError, match="is a file, not a folder"):
        batch_operator(source, dest).execute(make_context())
    assert emulator.emulator.request_count == 0, "nothing sent, nothing paid"


def test_a_destination_that_is_a_directory_fails_before_any_upload(emulator, tmp_path):
    source = write_requests(tmp_path / "in.jsonl", 3)
    (tmp_path / "out").mkdir()
    with pytest.raises(MaaSInputError, match="existing directory"):
        batch_operator(source, tmp_path / "out").execute(make_context())
    assert emulator.emulator.request_count == 0


def test_an_upload_over_the_limit_names_the_one_task_operator_too(emulator, tmp_path):
    """A newcomer with 250 requests in one file is told of both ways on: split-map-merge, or one task."""
    from airflow_provider_maas.operators.maas import MaaSUploadFileOperator

    source = write_requests(tmp_path / "big.jsonl", 150)
    with pytest.raises(MaaSInputError) as info:
        MaaSUploadFileOperator(task_id="upload", source=str(source)).execute(make_context())
    assert "MaaSSplitRequestsOperator" in str(info.value) and "MaaSBatchPredictionOperator" in str(info.value)
    assert emulator.emulator.request_count == 0


@pytest.mark.parametrize(
    "bad",
    [
        b'{"request": {"contents": [{"role": "user", "parts": "hello"}]}}\n',
        b'{"request": {"contents": {"role": "user", "parts": [{"text": "a"}]}}}\n',
        b'{"request": {"contents": [{"role": "user", "parts": [null]}]}}\n',
    ],
    ids=["parts-a-string", "contents-an-object", "a-null-part"],
)
def test_a_bad_shape_on_the_last_line_stops_everything_before_any_upload(emulator, tmp_path, bad):
    source = write_requests(tmp_path / "in.jsonl", 250)
    with source.open("ab") as handle:
        handle.write(bad)
    with pytest.raises(MaaSInputError, match="line 251: "):
        batch_operator(source, tmp_path / "out" / "r.jsonl").execute(make_context())
    assert emulator.emulator.request_count == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing written"
