"""Every bad input gets its own clear error, and no request is sent that should not be.

docs/reliability.md ("Bad input: what you see") publishes this table (``test_readme_publishes_the_table``
keeps them in step); run ``pytest tests/test_bad_input.py -s`` to print it.
"""

from __future__ import annotations

import json
import time

import pytest

from airflow_provider_maas.exceptions import (
    MaaSAuthError,
    MaaSConfigError,
    MaaSInputError,
    MaaSJobFailedError,
    MaaSNotFoundError,
    MaaSTimeoutError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSDownloadResultsOperator, MaaSUploadFileOperator
from tests.conftest import API_KEY, ENDPOINT, ROOT
from tests.helpers import make_context, write_requests

LINE = b'{"request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}\n'
ROWS: list[tuple[str, str]] = []


def _upload(tmp_path, content: bytes) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(content)
    MaaSUploadFileOperator(task_id="upload", source=str(source)).execute(make_context())


def _conn(monkeypatch, base_url: str, **fields) -> MaaSHook:
    conn = {"conn_type": "maas", "host": base_url, "password": API_KEY, "extra": {"endpoint": ENDPOINT}}
    conn.update(fields)
    monkeypatch.setenv("AIRFLOW_CONN_MAAS_CASE", json.dumps(conn))
    return MaaSHook("maas_case", max_attempts=1)


def _job(hook: MaaSHook, tmp_path) -> str:
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", 4), "case.jsonl")["name"]
    return hook.create_batch_job(name, "case")["name"]


CASES = {
    "empty file": (MaaSInputError, "contains no requests", False, lambda t, e, m: _upload(t, b"")),
    "malformed JSON line": (
        MaaSInputError,
        "line 2: not valid JSON",
        False,
        lambda t, e, m: _upload(t, LINE + b"{oops\n"),
    ),
    "line without request": (
        MaaSInputError,
        'line 1: missing "request"',
        False,
        lambda t, e, m: _upload(t, b'{"contents": []}\n'),
    ),
    "line without contents": (
        MaaSInputError,
        "request.contents",
        False,
        lambda t, e, m: _upload(t, b'{"request": {}}\n'),
    ),
    "non-UTF-8 bytes": (
        MaaSInputError,
        "not valid UTF-8",
        False,
        lambda t, e, m: _upload(t, LINE + b'{"request": "\xff"}\n'),
    ),
    "101 requests in one upload": (
        MaaSInputError,
        "more than 100 requests",
        False,
        lambda t, e, m: _upload(t, LINE * 101),
    ),
    "50 MB + 1 byte in one upload": (
        MaaSInputError,
        "52428801 bytes",
        False,
        lambda t, e, m: _upload(t, LINE[:-3] + b" " * (50 * 1024 * 1024 - len(LINE) + 1) + b"}}\n"),
    ),
    "missing endpoint": (
        MaaSConfigError,
        "No ENDPOINT",
        False,
        lambda t, e, m: _conn(m, e.base_url, extra={}).get_batch_job("1"),
    ),
    "missing key": (
        MaaSConfigError,
        "No API key",
        False,
        lambda t, e, m: _conn(m, e.base_url, password=None).get_batch_job("1"),
    ),
    "wrong key (401)": (
        MaaSAuthError,
        "HTTP 401",
        True,
        lambda t, e, m: _conn(m, e.base_url, password="not-the-key-42").get_batch_job("1"),
    ),
    "forbidden endpoint (403)": (
        MaaSAuthError,
        "HTTP 403",
        True,
        lambda t, e, m: _conn(m, e.base_url, extra={"endpoint": "forbidden-ep"}).get_batch_job("1"),
    ),
    "unknown job (404)": (
        MaaSNotFoundError,
        "HTTP 404",
        True,
        lambda t, e, m: MaaSHook(max_attempts=1).get_batch_job("424242"),
    ),
    "results expired (410 after 7 days)": (MaaSNotFoundError, "HTTP 410", True, "expired"),
    "job FAILED with an error object": (MaaSJobFailedError, "quota exhausted (code 8)", True, "failed"),
    "unknown job state": (MaaSTimeoutError, "still JOB_STATE_NEW_THING", True, "unknown"),
    "job or file name with '/', '..' or a control character": (
        MaaSInputError,
        "contains '/', '\\', '..' or a control character",
        False,
        lambda t, e, m: MaaSHook().get_batch_job("../../files"),
    ),
    "destination outside the allowed prefix": (
        MaaSInputError,
        "outside the allowed prefix",
        False,
        lambda t, e, m: MaaSDownloadResultsOperator(
            task_id="d", job_name="1", destination=str(t / "elsewhere.jsonl"), allowed_prefix=str(t / "results")
        ).execute(make_context()),
    ),
    "`http://` base URL to a non-loopback host": (
        MaaSConfigError,
        "Refusing to send the API key over plain http",
        False,
        lambda t, e, m: _conn(m, "http://maas.example.com").get_batch_job("1"),
    ),
}


def _special(kind: str, tmp_path, emulator) -> None:
    hook = MaaSHook(max_attempts=1)
    job_name = _job(hook, tmp_path)
    if kind == "expired":
        emulator.emulator.set_job_state(job_name, "JOB_STATE_SUCCEEDED")
        emulator.emulator.expire_results(job_name)
        hook.download_results(job_name, tmp_path / "out.jsonl")
    elif kind == "failed":
        emulator.emulator.set_job_state(job_name, "JOB_STATE_FAILED", error={"code": 8, "message": "quota exhausted"})
        hook.wait_for_batch_job(job_name, poll_interval=0.05, timeout=5)
    elif kind == "unknown":
        emulator.emulator.set_job_state(job_name, "JOB_STATE_NEW_THING")
        hook.wait_for_batch_job(job_name, poll_interval=0.05, timeout=0.3)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error(case, emulator_factory, tmp_path, monkeypatch):
    emulator = emulator_factory(
        job_duration=60, forbidden_endpoints=("forbidden-ep",), extra_endpoints=("forbidden-ep",)
    )
    error, fragment, may_send, action = CASES[case]
    before = len(emulator.emulator.access_log)
    with pytest.raises(error) as info:
        if isinstance(action, str):
            _special(action, tmp_path, emulator)
        else:
            action(tmp_path, emulator, monkeypatch)
    message = str(info.value)
    assert fragment in message
    assert API_KEY not in message and API_KEY not in repr(info.value)
    if not may_send:
        assert len(emulator.emulator.access_log) == before, "no request may be sent for this input"
    assert not (tmp_path / "out.jsonl").exists()
    ROWS.append((case, f"`{type(info.value).__name__}`: {message}"))
    print(f"\n| {case} | `{type(info.value).__name__}`: {message} |")


def test_partial_success_is_a_warning_with_counts(emulator_factory, tmp_path, caplog):
    from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

    emulator_factory(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=2, job_duration=0.1)
    job_name = _job(MaaSHook(), tmp_path)
    time.sleep(0.2)
    job = MaaSBatchJobSensor(task_id="w", job_name=job_name, poll_interval=0.05).execute(make_context())
    assert job["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert "2 requests succeeded, 2 failed" in caplog.text


def test_readme_publishes_the_table():
    readme = (ROOT / "docs" / "reliability.md").read_text()
    for case, (error, fragment, _, _) in CASES.items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| {case} |")), None)
        assert row is not None, f"docs/reliability.md's bad-input table lacks a row for {case!r}"
        assert error.__name__ in row and fragment.replace("|", "\\|") in row, row
