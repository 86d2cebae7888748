"""Every error an operator raises is a ``MaaSError``: bad settings and inputs a ``MaaSInputError``
(also a ``ValueError``), results the service wrote damaged a ``MaaSIntegrityError`` naming the file
and the line. Runs each operator's error path over real HTTP: the emulator, or
:mod:`tests.service_stub` where the results must be damaged with a valid CRC32C (the emulator's
``corrupt`` fault breaks the checksum, which the download catches first).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from airflow_provider_maas.batch.answers.pay_once import retry_predicate
from airflow_provider_maas.batch.answers.results import ResultsFormatError
from airflow_provider_maas.batch.cost.prices import check_prices
from airflow_provider_maas.batch.inputs.shards import plan_shards, shard_name
from airflow_provider_maas.exceptions import MaaSError, MaaSInputError, MaaSIntegrityError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import (
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.results import extract_images, iter_results
from tests.conftest import connection_env
from tests.helpers import batch_operator, make_context, write_requests
from tests.service_stub import stub_service


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    assert isinstance(info.value, MaaSError), f"{type(info.value).__name__}: {info.value}"
    return info.value


def _second_line(text: bytes):
    """A ``damage`` for the stub: its results file with line 2 replaced by ``text``."""

    def damage(results: bytes) -> bytes:
        lines = results.splitlines(keepends=True)
        return b"".join([lines[0], text + b"\n", *lines[2:]])

    return damage


# Settings and inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_failures": "UNAVAILABLE"}, "a single pattern goes in a list"),
        ({"retry_failures": [1]}, "not a regular expression string; give strings"),
        ({"retry_failures": ["("]}, "not a valid regular expression"),
        ({"prices": 0.1}, "prices must be a dict like"),
        ({"prices": {"prompt": 1}}, "prices needs candidates"),
        ({"prices": {"prompt": 1, "candidates": -1}}, "must be a number from 0 to 10000"),
        ({"prices": {"prompt": 1, "candidates": 1, "output": 1}}, "unknown keys ['output']"),
    ],
)
def test_batch_operator_settings(tmp_path, kwargs, message):
    err = _raised(lambda: batch_operator(tmp_path / "in.jsonl", tmp_path / "out.jsonl", **kwargs))
    assert isinstance(err, MaaSInputError) and message in str(err)


@pytest.mark.parametrize(
    "call",
    [
        lambda: retry_predicate("UNAVAILABLE"),
        lambda: retry_predicate(["[unclosed"]),
        lambda: check_prices({"prompt": "free", "candidates": 1}),
        lambda: plan_shards(io.BytesIO(b""), max_requests=0),
        lambda: plan_shards(io.BytesIO(b""), max_bytes=1),
        lambda: shard_name("", 0, 1),
        lambda: shard_name("folder/", 0, 1),
        lambda: list(iter_results(io.StringIO("{}\n"))),  # type: ignore[arg-type]
        lambda: extract_images(io.BytesIO(b""), lambda name, data: None, prefix="a/b"),
    ],
)
def test_helpers_the_operators_share_raise_input_errors_that_are_still_value_errors(call):
    err = _raised(call)
    assert isinstance(err, MaaSInputError) and isinstance(err, ValueError)


def test_upload_refuses_contents_the_service_rejects_before_sending(emulator, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"request": {"contents": [{"role": "user", "parts": [{"text": "ok"}]}]}}\n')
    source.write_bytes(source.read_bytes() + b'{"request": {"contents": ["hi"]}}\n')
    before = len(emulator.emulator.access_log)
    op = MaaSUploadFileOperator(task_id="upload", source=str(source))
    err = _raised(lambda: op.execute(make_context()))
    assert isinstance(err, MaaSInputError) and str(err).startswith('line 2: "request.contents[0]" is a JSON string')
    assert len(emulator.emulator.access_log) == before, "nothing was uploaded"


def test_batch_operator_reuse_results_that_are_not_results_are_bad_input(emulator, tmp_path):
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("{}\nnot json\n")
    op = batch_operator(
        write_requests(tmp_path / "in.jsonl", 2),
        tmp_path / "out.jsonl",
        reuse_results=str(earlier),
        reuse_other_models=True,
    )
    err = _raised(lambda: op.execute(make_context()))
    assert isinstance(err, MaaSInputError) and "line 2" in str(err) and str(earlier) in str(err)
    assert emulator.emulator.jobs_created == 0


# Results the service wrote damaged ---------------------------------------------------------------


def _finished_job(service, tmp_path: Path, monkeypatch, count: int = 3) -> tuple[str, Path]:
    monkeypatch.setenv(*connection_env(service.base_url))
    requests = write_requests(tmp_path / "requests.jsonl", count)
    hook = MaaSHook(max_attempts=1)
    hook.upload_file(requests, "requests.jsonl")
    return hook.create_batch_job("requests.jsonl", "damaged")["name"], requests


def _assert_names_file_and_line(err: BaseException, path: Path, line: int) -> None:
    assert isinstance(err, MaaSIntegrityError), f"{type(err).__name__}: {err}"
    assert isinstance(err.__cause__, ResultsFormatError) and err.__cause__.line_number == line
    assert f"{path} line {line}:" in str(err), str(err)


@pytest.mark.parametrize("ordered", [False, True], ids=["as-written", "source="])
def test_download_of_damaged_results(monkeypatch, tmp_path, ordered):
    with stub_service(damage=_second_line(b'{"request": {"contents": [')) as service:
        job_name, requests = _finished_job(service, tmp_path, monkeypatch)
        dest = tmp_path / "out.jsonl"
        op = MaaSDownloadResultsOperator(
            task_id="download", job_name=job_name, destination=str(dest), source=str(requests) if ordered else None
        )
        err = _raised(lambda: op.execute(make_context()))
    _assert_names_file_and_line(err, dest, 2)


def test_download_of_images_that_are_not_base64(monkeypatch, tmp_path):
    image = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(b"png").decode() + "!"}}
    line = {"request": {}, "response": {"candidates": [{"content": {"parts": [image]}}]}, "status": ""}
    with stub_service(damage=lambda results: results + json.dumps(line).encode() + b"\n") as service:
        job_name, _ = _finished_job(service, tmp_path, monkeypatch, count=1)
        dest = tmp_path / "out.jsonl"
        op = MaaSDownloadResultsOperator(task_id="d", job_name=job_name, destination=str(dest), extract_images=True)
        err = _raised(lambda: op.execute(make_context()))
    _assert_names_file_and_line(err, dest, 2)
    assert "image data is not valid base64" in str(err)


def test_merge_of_a_file_that_is_not_results(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request": {}}\n[1, 2]\n')
    requests = write_requests(tmp_path / "requests.jsonl", 2)
    op = MaaSMergeResultsOperator(
        task_id="merge", results=[str(good), str(bad)], source=str(requests), destination=str(tmp_path / "m.jsonl")
    )
    err = _raised(lambda: op.execute(make_context()))
    _assert_names_file_and_line(err, bad, 2)
    assert "results file #1" in str(err)


@pytest.mark.parametrize("request_retries", [0, 1], ids=["shard-merge", "retry-round"])
def test_batch_operator_with_damaged_results(monkeypatch, tmp_path, request_retries):
    with stub_service(damage=_second_line(b"<html>502 Bad Gateway</html>")) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        source = write_requests(tmp_path / "in.jsonl", 3)
        op = batch_operator(source, tmp_path / "out.jsonl", request_retries=request_retries)
        err = _raised(lambda: op.execute(make_context()))
    assert isinstance(err, MaaSIntegrityError), f"{type(err).__name__}: {err}"
    assert isinstance(err.__cause__, ResultsFormatError) and err.__cause__.line_number == 2
    assert " line 2: " in str(err) and "file:///" in str(err) and ".maas/" in str(err), str(err)
    assert len(service.jobs) == 1, "one job: a damaged results file is not a reason to pay again"
