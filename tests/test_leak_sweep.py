"""Leak nothing, forge nothing (issue 20): every hook call and every operator that calls the service,
against a service whose error AND success bodies echo the API key in every form
(:func:`tests.hostile_service.key_forms`), or whose job texts forge log lines. No exception text,
log record, returned value, XCom or trigger event may hold any form of the key, nor a raw control
character. The real ``airflow dags test`` runs are in ``test_leak_sweep_dag.py``.
"""

from __future__ import annotations

import json
import logging

import pytest

from airflow_provider_maas.exceptions import MaaSError, MaaSJobFailedError, MaaSUnknownEndpointError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import (
    MaaSCreateBatchJobOperator,
    MaaSDownloadResultsOperator,
    MaaSUploadFileOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor
from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger
from tests.conftest import connection_env
from tests.helpers import batch_operator, make_context, write_requests
from tests.hostile_service import FORGED, KEY, RAW_CONTROLS, hostile, key_forms

FORMS = key_forms()


def leaks(text: str) -> list[str]:
    """The names of the key forms found in ``text`` (compared without case where a form has letters)."""
    lowered = text.lower()
    return [name for name, form in FORMS.items() if form in text or form.lower() in lowered]


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert not leaks(text), (leaks(text), text[:2000])
        assert not [c for c in RAW_CONTROLS if c in text], text[:2000]


def error_texts(err: BaseException) -> list[str]:
    texts = []
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        texts += [str(err), repr(err), repr(err.args), repr(vars(err))]
        err = err.__cause__ or err.__context__
    return texts


def log_texts(caplog) -> list[str]:
    return [caplog.text, *(f"{r.getMessage()} {r.args!r}" for r in caplog.records)]


@pytest.fixture
def service(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with hostile() as svc:
        monkeypatch.setenv(*connection_env(svc.base_url, key=KEY))
        yield svc


def test_the_forms_differ_from_each_other_and_from_the_key():
    assert len(set(FORMS.values())) == len(FORMS)
    assert all(form != KEY for name, form in FORMS.items() if name != "exact")


def _job(service) -> str:
    hook = MaaSHook(max_attempts=1)
    hook.upload_file(write_requests_path(), "in.jsonl")
    return str(hook.create_batch_job("in.jsonl", "sweep")["name"])


def write_requests_path():
    import tempfile
    from pathlib import Path

    return write_requests(Path(tempfile.mkdtemp()) / "r.jsonl", 2)


HOOK_CALLS = {
    "upload": lambda hook, job, tmp: hook.upload_file(write_requests_path(), "x.jsonl"),
    "create": lambda hook, job, tmp: hook.create_batch_job("in.jsonl", "sweep"),
    "get": lambda hook, job, tmp: hook.get_batch_job(job),
    "metadata": lambda hook, job, tmp: hook.get_results_metadata(job),
    "download": lambda hook, job, tmp: hook.download_results(job, tmp / "r.jsonl"),
    "wait": lambda hook, job, tmp: hook.wait_for_batch_job(job, poll_interval=0.01, timeout=5),
}


@pytest.mark.parametrize("mode", ["errors", "echo", "forged"])
@pytest.mark.parametrize("call", sorted(HOOK_CALLS))
def test_every_hook_call(service, caplog, tmp_path, mode, call):
    job = _job(service)
    service.mode = mode
    hook = MaaSHook(max_attempts=1)
    texts, raised = [], None
    try:
        value = HOOK_CALLS[call](hook, job, tmp_path)
    except MaaSError as err:
        texts, raised = error_texts(err), err
    else:
        texts.append(json.dumps(value))
    assert_clean(*texts, *log_texts(caplog))
    if mode == "errors":
        assert raised is not None
    if mode == "errors" and call == "upload":
        assert isinstance(raised, MaaSUnknownEndpointError)


@pytest.mark.parametrize("mode", ["errors", "echo", "forged"])
async def test_the_async_call_and_the_trigger_event(service, caplog, mode):
    job = _job(service)
    service.mode = mode
    hook = MaaSHook(max_attempts=1)
    texts = []
    try:
        async with hook.async_session_scope():
            texts.append(json.dumps(await hook.aget_batch_job(job)))
    except MaaSError as err:
        texts += error_texts(err)
    event = (
        await MaaSBatchJobTrigger(job_name=job, first_poll_after=0, poll_interval=0.01, max_consecutive_poll_errors=1)
        .run()
        .__anext__()
    )
    assert event.payload["status"] in ("error", "failed") or "FAILED" in json.dumps(event.payload)
    assert_clean(*texts, json.dumps(event.payload), *log_texts(caplog))


@pytest.mark.parametrize("mode", ["errors", "echo"])
def test_the_connection_test(service, mode):
    service.mode = mode
    ok, message = MaaSHook().test_connection()
    assert ok is (mode == "echo"), message
    assert_clean(message)
    if mode == "errors":
        assert "HTTP 404 on upload" in message


OPERATORS = {
    "upload": lambda job, tmp: MaaSUploadFileOperator(task_id="u", source=str(write_requests_path())),
    "create": lambda job, tmp: MaaSCreateBatchJobOperator(task_id="c", file_name="in.jsonl"),
    "sensor": lambda job, tmp: MaaSBatchJobSensor(task_id="s", job_name=job, poll_interval=0.01, timeout=5),
    "download": lambda job, tmp: MaaSDownloadResultsOperator(
        task_id="d", job_name=job, destination=str(tmp / "d.jsonl")
    ),
    "batch": lambda job, tmp: batch_operator(write_requests_path(), tmp / "b.jsonl", shard_retries=0),
}


@pytest.mark.parametrize("mode", ["errors", "echo", "forged"])
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator(service, caplog, tmp_path, mode, name):
    job = _job(service)
    service.mode = mode
    context = make_context()
    texts = []
    try:
        texts.append(json.dumps(OPERATORS[name](job, tmp_path).execute(context)))
    except (MaaSError, Exception) as err:
        texts += error_texts(err)
    texts.append(json.dumps(context["ti"].xcom))
    assert_clean(*texts, *log_texts(caplog))
    if mode == "forged" and name in ("sensor", "batch"):
        assert any("quota exhausted\\x0a2026" in text for text in texts), texts[:3]


def test_a_forged_job_message_is_escaped_visibly(service):
    job = _job(service)
    service.mode = "forged"
    with pytest.raises(MaaSJobFailedError) as info:
        MaaSHook(max_attempts=1).wait_for_batch_job(job, poll_interval=0.01, timeout=5)
    message = str(info.value)
    assert "\\x1b[2J" in message and "\\u202e" in message and "\\u2028" in message and "\\x0d" in message
    assert "\n" not in message
    assert FORGED not in message
