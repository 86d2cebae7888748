"""MaaSHook against the local emulator: real HTTP on loopback, faults injected by the emulator.

Faults come from the emulator's fault schedule ("the next N calls of kind K answer F"), so each
test says which call fails and how. Retries really wait, briefly (``retry_base_delay=0.01``,
``Retry-After: 0``); the waits are read from the hook's retry log lines (``retry_delays``), so no
assertion depends on the speed of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_maas.client.integrity import b64_crc32c, b64_md5
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSAuthError,
    MaaSConfigError,
    MaaSInputError,
    MaaSIntegrityError,
    MaaSJobCreationUncertainError,
    MaaSJobFailedError,
    MaaSNotFoundError,
    MaaSRateLimitError,
    MaaSRetryableError,
    MaaSTimeoutError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.conftest import API_KEY, ENDPOINT, connection_env

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
REQUESTS_FILE = os.path.join(FIXTURES, "requests_example.jsonl")
API_PATH = f"/v1/ai/batch/gemini/{ENDPOINT}"
WRONG_KEY = "wrong-key-do-not-log-987654"


# Fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def key_never_logged(caplog):
    """Every test: capture everything down to DEBUG; at teardown no record mentions a key."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            text = formatter.format(record)
            assert API_KEY not in text
            assert WRONG_KEY not in text


@pytest.fixture
def start(emulator_factory):
    """Start an emulator (fast jobs, ``Retry-After: 0``) with ``maas_default`` pointing at it.

    At teardown: the key never reached the emulator's access log (not even redacted to ``***``).
    """
    handles = []

    def _start(**overrides):
        handle = emulator_factory(**{"retry_after": 0.0, **overrides})
        handles.append(handle)
        return handle

    yield _start
    for handle in handles:
        logged = repr(handle.emulator.access_log)
        assert API_KEY not in logged
        assert "***" not in logged


RETRY_LINE = re.compile(r": attempt \d+ failed .*; retrying in (\d+\.\d)s$")


def retry_delays(caplog) -> list[float]:
    """The waits between attempts, as the hook's retry warnings announce them ("retrying in 1.0s")."""
    return [float(m.group(1)) for r in caplog.records if (m := RETRY_LINE.search(r.getMessage()))]


def make_hook(**kwargs) -> MaaSHook:
    return MaaSHook(**{"max_attempts": 3, "retry_base_delay": 0.01, **kwargs})


def assert_no_key(err: BaseException) -> None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for text in (str(err), repr(err), repr(err.args)):
            assert API_KEY not in text
            assert WRONG_KEY not in text
        err = err.__cause__ or err.__context__
    assert err is None


def api_requests(handle) -> int:
    """API requests the emulator received so far (counted when they arrive)."""
    return handle.emulator.request_count


def faults_on(handle, path_qs: str) -> list[str | None]:
    return [entry["fault"] for entry in handle.emulator.access_log if entry["path_qs"] == path_qs]


def job_path(name: str) -> str:
    return f"{API_PATH}/batchPredictionJobs/{name}"


def media_path(name: str) -> str:
    return f"{job_path(name)}/content?alt=media"


def new_job(hook: MaaSHook, file_name: str = "requests.jsonl") -> str:
    hook.upload_file(REQUESTS_FILE, file_name)
    return hook.create_batch_job(file_name, "hook-test")["name"]


def finished_job(hook: MaaSHook) -> str:
    name = new_job(hook)
    hook.wait_for_batch_job(name, poll_interval=0.05, timeout=20)
    return name


def served_results(handle, job_name: str) -> bytes:
    with open(handle.emulator.jobs[job_name].results_path, "rb") as fh:
        return fh.read()


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# 1. Every method end to end ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "object_storage_path", "file_uri", "binary_file", "non_seekable_stream"])
def test_upload_file_from_every_kind_of_source(start, kind):
    handle = start()
    data = read(REQUESTS_FILE)
    opened = None
    if kind == "path":
        source = REQUESTS_FILE
    elif kind == "object_storage_path":
        source = ObjectStoragePath(f"file://{REQUESTS_FILE}")
    elif kind == "file_uri":
        source = f"file://{REQUESTS_FILE}"
    elif kind == "binary_file":
        source = opened = open(REQUESTS_FILE, "rb")  # noqa: SIM115 - the hook must not close it
    else:  # a pipe-like stream: no seek, no size (sent chunked)
        source = io.BufferedReader(_Unseekable(data))

    result = make_hook().upload_file(source, f"{kind}.jsonl")

    assert result["name"] == f"{kind}.jsonl"
    assert result["size"] == str(len(data))
    assert result["md5Hash"] == b64_md5(data)
    stored = handle.emulator.files[f"{kind}.jsonl"]
    assert read(stored["path"]) == data
    if opened is not None:
        assert not opened.closed
        opened.close()


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        chunk = self._buffer.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_upload_same_name_replaces_the_object(start):
    handle = start()
    hook = make_hook()
    first = hook.upload_file(REQUESTS_FILE, "same.jsonl")
    second = hook.upload_file(REQUESTS_FILE, "same.jsonl")
    assert int(second["generation"]) > int(first["generation"])
    assert handle.emulator.uploads_by_name["same.jsonl"] == 2


def test_full_cycle_create_get_wait_metadata_download(start, tmp_path, monkeypatch, caplog):
    handle = start()
    hook = make_hook()
    calls = []
    send = hook.session.request

    def spy(method, url, **kwargs):
        calls.append((method, url, kwargs))
        return send(method, url, **kwargs)

    monkeypatch.setattr(hook.session, "request", spy)

    hook.upload_file(REQUESTS_FILE, "cycle.jsonl")
    created = hook.create_batch_job("cycle.jsonl", "my-cloud-storage-batch-inference-job")
    name = created["name"]
    assert name.isdigit()
    assert created["state"] == "JOB_STATE_PENDING"
    assert created["displayName"] == "my-cloud-storage-batch-inference-job"
    assert created["inputConfig"]["gcsSource"]["uris"] == ["cycle.jsonl"]
    assert handle.emulator.jobs_created == 1

    assert hook.get_batch_job(name)["name"] == name

    final = hook.wait_for_batch_job(name, poll_interval=0.05, timeout=20)
    assert final["state"] == "JOB_STATE_SUCCEEDED"
    assert final["completionStats"]["successfulCount"] == "2"
    assert "is JOB_STATE_SUCCEEDED" in caplog.text

    metadata = hook.get_results_metadata(name)
    served = served_results(handle, name)
    assert metadata["size"] == str(len(served))
    assert metadata["crc32c"] == b64_crc32c(served)

    local = tmp_path / "local" / "results.jsonl"
    assert hook.download_results(name, local) == metadata
    assert read(local) == served
    uri = f"file://{tmp_path}/uri/results.jsonl"
    assert hook.download_results(name, uri)["size"] == metadata["size"]
    assert read(tmp_path / "uri" / "results.jsonl") == served
    assert sorted(os.listdir(tmp_path / "local")) == ["results.jsonl"]  # no temporary left behind

    # every request had a finite (connect, read) timeout, TLS settings and the key only in the header
    assert len(calls) >= 7
    for _method, url, kwargs in calls:
        connect, read_timeout = kwargs["timeout"]
        assert 0 < connect <= read_timeout < float("inf")
        assert kwargs["headers"]["Authorization"] == f"Bearer {API_KEY}"
        assert API_KEY not in url
        assert API_KEY not in repr(kwargs.get("params"))


def test_wait_returns_partially_succeeded_jobs(start):
    start(final_state="JOB_STATE_PARTIALLY_SUCCEEDED")
    hook = make_hook()
    job = hook.wait_for_batch_job(new_job(hook), poll_interval=0.05, timeout=20)
    assert job["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert job["completionStats"]["failedCount"] == "1"


async def test_aget_batch_job_in_an_event_loop(start):
    start()
    hook = make_hook()
    name = new_job(hook)
    async with hook.async_session_scope():
        job = await hook.aget_batch_job(name)
        assert job["name"] == name
        assert job["state"] in {"JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"}
        with pytest.raises(MaaSNotFoundError) as info:
            await hook.aget_batch_job("123456789")
    assert info.value.status_code == 404
    assert_no_key(info.value)


# 2. Errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"endpoint": ""}, "No ENDPOINT for connection 'maas_default'"),
        ({"key": ""}, "No API key in connection 'maas_default'"),
        ({"base_url": "genaiapi.cloudsway.net"}, "is not a URL"),
        ({"base_url": "ftp://127.0.0.1/"}, "is not a URL"),
        ({"base_url": "http://maas.example.com"}, "allow_insecure_http"),
    ],
)
def test_bad_connection_is_refused_before_any_request(start, monkeypatch, settings, message):
    handle = start()
    settings = {"base_url": handle.base_url, **settings}
    monkeypatch.setenv(*connection_env(settings.pop("base_url"), **settings))
    hook = make_hook()
    with pytest.raises(MaaSConfigError) as info:
        hook.get_batch_job("1")
    assert message in str(info.value)
    assert_no_key(info.value)
    assert api_requests(handle) == 0


def test_plain_http_off_loopback_allowed_with_extra(monkeypatch):
    monkeypatch.setenv(*connection_env("http://maas.example.com:8089", allow_insecure_http=True))
    hook = make_hook()
    assert hook.config.base_url == "http://maas.example.com:8089"
    assert API_KEY not in repr(hook.config)
    assert API_KEY not in str(hook.config)


def test_endpoint_argument_overrides_the_connection(start):
    start(extra_endpoints=("other-endpoint",))
    hook = make_hook(endpoint="other-endpoint")
    hook.upload_file(REQUESTS_FILE, "other.jsonl")
    name = hook.create_batch_job("other.jsonl", "other")["name"]
    assert hook.get_batch_job(name)["name"] == name
    with pytest.raises(MaaSNotFoundError):  # jobs are only visible under their endpoint
        make_hook().get_batch_job(name)


def test_wrong_key_is_an_auth_error_not_retried(start, monkeypatch):
    handle = start()
    monkeypatch.setenv(*connection_env(handle.base_url, key=WRONG_KEY))
    with pytest.raises(MaaSAuthError) as info:
        make_hook().get_batch_job("1")
    assert info.value.status_code == 401
    assert "API Key" in str(info.value)
    assert_no_key(info.value)
    assert api_requests(handle) == 1


def test_forbidden_endpoint_is_an_auth_error(start):
    handle = start(forbidden_endpoints=("forbidden-endpoint",))
    with pytest.raises(MaaSAuthError) as info:
        make_hook(endpoint="forbidden-endpoint").get_batch_job("1")
    assert info.value.status_code == 403
    assert info.value.error_status == "PERMISSION_DENIED"
    assert "ENDPOINT" in str(info.value)
    assert_no_key(info.value)
    assert api_requests(handle) == 1


def test_unknown_job_is_not_found(start):
    handle = start()
    with pytest.raises(MaaSNotFoundError) as info:
        make_hook().get_batch_job("123456789")
    assert info.value.status_code == 404
    assert "Getting job 123456789 failed: HTTP 404 NOT_FOUND" in str(info.value)
    assert api_requests(handle) == 1


def test_expired_results_are_not_found(start, tmp_path):
    handle = start()
    hook = make_hook()
    name = finished_job(hook)
    handle.emulator.expire_results(name)
    destination = tmp_path / "results.jsonl"
    with pytest.raises(MaaSNotFoundError) as info:
        hook.download_results(name, destination)
    assert info.value.status_code == 410
    assert not destination.exists()
    assert_no_key(info.value)


def test_failed_job_raises_with_the_service_message(start):
    handle = start(job_duration=30)
    hook = make_hook()
    name = new_job(hook)
    handle.emulator.set_job_state(name, "JOB_STATE_FAILED", {"code": 8, "message": "Quota exceeded for model X."})
    with pytest.raises(MaaSJobFailedError) as info:
        hook.wait_for_batch_job(name, poll_interval=0.05, timeout=20)
    assert "Quota exceeded for model X." in str(info.value)
    assert info.value.state == "JOB_STATE_FAILED"
    assert info.value.job_name == name
    assert info.value.job["error"]["code"] == 8


@pytest.mark.parametrize("state", ["JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"])
def test_other_failed_end_states_raise(start, state):
    start(final_state=state)
    hook = make_hook()
    with pytest.raises(MaaSJobFailedError) as info:
        hook.wait_for_batch_job(new_job(hook), poll_interval=0.05, timeout=20)
    assert info.value.state == state
    assert "(emulated)" in str(info.value)


def test_wait_timeout(start):
    start(job_duration=60)
    hook = make_hook()
    name = new_job(hook)
    with pytest.raises(MaaSTimeoutError) as info:
        hook.wait_for_batch_job(name, poll_interval=0.05, timeout=0.3)
    assert name in str(info.value)
    assert "0.3s" in str(info.value)


@pytest.mark.parametrize(("body", "expected"), [("html", "That's an error."), ("text", "upstream connect error")])
def test_non_json_error_body_gives_a_readable_message(start, caplog, body, expected):
    handle = start()
    handle.schedule(f"get:2:503={body}")
    with pytest.raises(MaaSRetryableError) as info:
        make_hook(max_attempts=2).get_batch_job("42")
    message = str(info.value)
    assert message.startswith(f"Getting job 42 failed: HTTP {info.value.status_code}: ")
    assert expected in message
    assert "<" not in message
    assert api_requests(handle) == 2


# 3. Retries ------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(start, caplog):
    handle = start(retry_after=1)
    hook = make_hook()
    name = new_job(hook)
    handle.schedule("get:1:429")
    assert hook.get_batch_job(name)["name"] == name
    assert retry_delays(caplog) == [1.0]  # base delay 0.01: only Retry-After can ask for 1 s
    assert faults_on(handle, job_path(name)) == ["429", None]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "attempt 1 failed" in warnings[0].getMessage()
    assert "429" in warnings[0].getMessage()


def test_backoff_without_retry_after_uses_the_base_delay(start, caplog):
    handle = start()
    hook = make_hook()
    name = new_job(hook)
    handle.schedule("get:1:500", "get:1:reset")
    assert hook.get_batch_job(name)["name"] == name
    assert retry_delays(caplog) == [0.0, 0.0]  # 0.01 then at most 0.02 s, logged to 0.1 s


@pytest.mark.parametrize("logged", ["503", "reset"])
def test_transient_get_failures_are_retried(start, caplog, logged):
    handle = start()
    hook = make_hook()
    name = new_job(hook)
    handle.schedule(f"get:1:{logged}")
    assert hook.get_batch_job(name)["name"] == name
    assert faults_on(handle, job_path(name)) == [logged, None]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"Getting job {name}: attempt 1 failed")


def test_retries_are_bounded_and_each_is_logged(start, caplog):
    handle = start()
    handle.schedule("get:*:500")
    with pytest.raises(MaaSRetryableError) as info:
        make_hook(max_attempts=4).get_batch_job("42")
    assert info.value.status_code == 500
    assert api_requests(handle) == 4
    assert len(retry_delays(caplog)) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" failed")[0] for w in warnings] == [f"Getting job 42: attempt {n}" for n in (1, 2, 3)]


async def test_async_get_retries_transient_failures(start, caplog):
    handle = start()
    hook = make_hook()
    name = new_job(hook)
    # aiohttp itself re-sends a GET once, silently, when the server drops the connection: the
    # first reset never reaches the hook; the second is the hook's attempt 1, the 503 its attempt 2
    handle.schedule("get:2:reset", "get:1:503")
    async with hook.async_session_scope():
        assert (await hook.aget_batch_job(name))["name"] == name
    assert faults_on(handle, job_path(name)) == ["reset", "reset", "503", None]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" failed")[0] for w in warnings] == [f"Getting job {name}: attempt {n}" for n in (1, 2)]


# 4. Job creation: never a second job ----------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "jobs_created"),
    [
        ("lost-500", 1),
        ("lost-503", 1),
        ("lost-reset", 1),
        ("lost-nonjson", 1),
        ("500", 0),
        ("503", 0),
        ("reset", 0),
        ("nonjson-200", 0),
        ("deep-json", 0),
    ],
)
def test_create_is_not_retried_when_it_may_have_reached_the_service(start, caplog, fault, jobs_created):
    handle = start()
    hook = make_hook()
    hook.upload_file(REQUESTS_FILE, "once.jsonl")
    before = api_requests(handle)
    handle.schedule(f"create:1:{fault}")
    with pytest.raises(MaaSJobCreationUncertainError) as info:
        hook.create_batch_job("once.jsonl", "once")
    message = str(info.value)
    assert "not retried" in message and "'once.jsonl'" in message and "'once'" in message
    assert_no_key(info.value)
    assert api_requests(handle) - before == 1
    assert handle.emulator.jobs_created == jobs_created
    assert retry_delays(caplog) == []


def test_create_is_retried_on_429_the_service_did_not_act(start, caplog):
    handle = start()
    hook = make_hook()
    hook.upload_file(REQUESTS_FILE, "retry.jsonl")
    before = api_requests(handle)
    handle.schedule("create:1:429")
    job = hook.create_batch_job("retry.jsonl", "retried")
    assert job["state"] == "JOB_STATE_PENDING"
    assert api_requests(handle) - before == 2
    assert handle.emulator.jobs_created == 1
    assert list(handle.emulator.jobs) == [job["name"]]


def test_create_is_retried_when_the_connection_is_refused(monkeypatch, caplog):
    monkeypatch.setenv(*connection_env(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(MaaSRetryableError) as info:
        make_hook(max_attempts=3).create_batch_job("f.jsonl", "d")
    assert "cannot reach 127.0.0.1:" in str(info.value)
    assert "connection was refused" in str(info.value)
    assert len(retry_delays(caplog)) == 2


def test_failed_dns_lookup_on_create_is_retried_and_named(monkeypatch, caplog):
    monkeypatch.setenv(*connection_env("https://maas-host.invalid:8443"))
    with pytest.raises(MaaSRetryableError) as info:
        make_hook(max_attempts=2).create_batch_job("f.jsonl", "d")
    assert "cannot reach maas-host.invalid:8443" in str(info.value)
    assert "DNS" in str(info.value)
    assert len(retry_delays(caplog)) == 1


async def test_async_transport_errors_name_host_port_and_cause(monkeypatch):
    port = free_port()
    monkeypatch.setenv(*connection_env(f"http://127.0.0.1:{port}"))
    hook = make_hook(max_attempts=1)
    async with hook.async_session_scope():
        with pytest.raises(MaaSRetryableError, match=f"cannot reach 127.0.0.1:{port}: the connection was refused"):
            await hook.aget_batch_job("42")
    monkeypatch.setenv(*connection_env("https://maas-host.invalid:8443"))
    hook = make_hook(max_attempts=1)
    async with hook.async_session_scope():
        with pytest.raises(MaaSRetryableError, match=r"cannot reach maas-host\.invalid:8443: .*DNS"):
            await hook.aget_batch_job("42")


# 5. Timeouts -----------------------------------------------------------------------------


def test_slow_answers_time_out_are_retried_then_fail_clearly(start, monkeypatch, caplog):
    handle = start()
    handle.schedule("get:2:slow=1.5")
    monkeypatch.setenv(*connection_env(handle.base_url, timeout=0.2))
    hook = make_hook(max_attempts=2)
    with pytest.raises(MaaSRetryableError) as info:
        hook.get_batch_job("42")
    assert (
        str(info.value)
        == f"Getting job 42: no answer from 127.0.0.1:{handle.base_url.rsplit(':', 1)[1]} within 0.2s (timed out)"
    )
    assert api_requests(handle) == 2
    assert "attempt 1 failed" in caplog.text


def test_slow_create_is_uncertain_not_retried(start, monkeypatch, caplog):
    handle = start()
    make_hook().upload_file(REQUESTS_FILE, "slow.jsonl")
    monkeypatch.setenv(*connection_env(handle.base_url, timeout=0.2))
    hook = make_hook()
    before = api_requests(handle)
    handle.schedule("create:1:slow=1.5")
    with pytest.raises(MaaSJobCreationUncertainError) as info:
        hook.create_batch_job("slow.jsonl", "slow")
    assert "within 0.2s (timed out)" in str(info.value)
    assert "'slow.jsonl'" in str(info.value) and "display name 'slow'" in str(info.value)
    assert api_requests(handle) - before == 1


async def test_async_slow_answers_time_out(start, monkeypatch):
    handle = start()
    handle.schedule("get:2:slow=1.5")
    monkeypatch.setenv(*connection_env(handle.base_url, timeout=0.2))
    hook = make_hook(max_attempts=2)
    async with hook.async_session_scope():
        with pytest.raises(MaaSRetryableError, match=r"Getting job 42: no answer from 127.0.0.1:\d+ within 0.2s"):
            await hook.aget_batch_job("42")
    assert api_requests(handle) == 2


# 6. Integrity ----------------------------------------------------------------------------


def test_upload_with_wrong_md5_is_resent_then_refused(start, caplog):
    handle = start()
    handle.schedule("upload:3:wrong-md5")
    with pytest.raises(MaaSIntegrityError) as info:
        make_hook().upload_file(REQUESTS_FILE, "bad.jsonl")
    assert "md5" in str(info.value)
    assert handle.emulator.uploads_by_name["bad.jsonl"] == 3
    # every re-send carried the whole file again
    assert read(handle.emulator.files["bad.jsonl"]["path"]) == read(REQUESTS_FILE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "(transfer 1 of 3)" in warnings[0]


def test_upload_with_wrong_md5_once_succeeds_on_resend(start):
    handle = start()
    handle.schedule("upload:1:wrong-md5")
    result = make_hook().upload_file(REQUESTS_FILE, "flaky.jsonl")
    assert result["md5Hash"] == b64_md5(read(REQUESTS_FILE))
    assert handle.emulator.uploads_by_name["flaky.jsonl"] == 2
    assert read(handle.emulator.files["flaky.jsonl"]["path"]) == read(REQUESTS_FILE)


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_download_leaves_no_file(start, tmp_path, caplog, fault):
    handle = start()
    hook = make_hook()
    name = finished_job(hook)
    handle.schedule(f"content:3:{fault}")  # every transfer the hook makes
    out_dir = tmp_path / "out"
    destination = out_dir / "results.jsonl"
    with pytest.raises((MaaSIntegrityError, MaaSRetryableError)) as info:
        hook.download_results(name, destination)
    assert name in str(info.value)
    assert not destination.exists()
    assert os.listdir(out_dir) == []
    # The emulator logs a streamed download once its handler returns, which may be after the client
    # gave up on the last bytes: wait for the server's entry (not a timing assertion).
    deadline = time.monotonic() + 30
    while len(faults_on(handle, media_path(name))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    media = faults_on(handle, media_path(name))
    assert media == [f"{fault}_download"] * 3  # max_transfers, each one spoilt
    assert handle.emulator.fault_schedule.pending() == []


def test_failed_download_keeps_the_previous_file(start, tmp_path):
    handle = start()
    hook = make_hook()
    name = finished_job(hook)
    destination = tmp_path / "results.jsonl"
    destination.write_bytes(b"previous complete file\n")
    handle.schedule("content:3:corrupt")
    with pytest.raises(MaaSIntegrityError):
        hook.download_results(name, destination)
    assert destination.read_bytes() == b"previous complete file\n"
    assert os.listdir(tmp_path) == ["results.jsonl"]


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_flaky_download_eventually_matches(start, tmp_path, caplog, fault):
    handle = start()
    hook = make_hook()
    name = finished_job(hook)
    handle.schedule(f"content:1:{fault}")
    destination = tmp_path / "results.jsonl"
    metadata = hook.download_results(name, destination)
    assert read(destination) == served_results(handle, name)
    assert metadata["crc32c"] == b64_crc32c(read(destination))
    assert len(faults_on(handle, media_path(name))) == 2
    assert os.listdir(tmp_path) == ["results.jsonl"]
    assert "transfer 1 of 3" in caplog.text


# 7. Bad names ----------------------------------------------------------------------------

BAD_NAMES = ["", "a/b", "..", "../1", "1/../2", "a\x00b", "a\nb", "a\rb", "a\x7f", "\t"]


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize(
    "call",
    [
        "get_batch_job",
        "get_results_metadata",
        "download_results",
        "wait_for_batch_job",
        "upload_file",
        "create_batch_job",
        "aget_batch_job",
    ],
)
def test_bad_names_are_refused_before_any_request(start, tmp_path, call, bad):
    handle = start()
    hook = make_hook()
    with pytest.raises(MaaSInputError) as info:
        if call == "download_results":
            hook.download_results(bad, tmp_path / "r.jsonl")
        elif call == "wait_for_batch_job":
            hook.wait_for_batch_job(bad, poll_interval=0.01, timeout=1)
        elif call == "upload_file":
            hook.upload_file(REQUESTS_FILE, bad)
        elif call == "create_batch_job":
            hook.create_batch_job(bad, "display")
        elif call == "aget_batch_job":
            asyncio.run(hook.aget_batch_job(bad))
        else:
            getattr(hook, call)(bad)
    assert "name" in str(info.value)
    assert api_requests(handle) == 0
    assert handle.emulator.access_log == []
    assert not (tmp_path / "r.jsonl").exists()


# 9. Load ---------------------------------------------------------------------------------


def settle(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_one_hook_shared_by_50_threads(start):
    handle = start()
    before = open_sockets()  # the emulator's listening socket and its loop's self-pipe
    setup = make_hook()
    setup.upload_file(REQUESTS_FILE, "load.jsonl")
    names = [setup.create_batch_job("load.jsonl", f"load-{i}")["name"] for i in range(50)]
    setup.session.close()

    hook = make_hook()  # fresh: its config and session are created by the racing threads
    barrier = threading.Barrier(50)

    def get(name):
        barrier.wait()
        return hook.get_batch_job(name)["name"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        assert list(pool.map(get, names)) == names
    assert hook.session is hook.session
    hook.session.close()
    assert settle(lambda: open_sockets() <= before + 2), (before, open_sockets())
    assert api_requests(handle) == 1 + 50 + 50  # upload, creates, gets: nothing retried


async def test_1000_concurrent_aget_batch_job_in_one_loop(start):
    handle = start()
    before = open_sockets()  # the emulator's and this loop's own sockets
    setup = make_hook()
    setup.upload_file(REQUESTS_FILE, "load.jsonl")
    names = [setup.create_batch_job("load.jsonl", f"load-{i}")["name"] for i in range(20)]
    setup.session.close()

    async def sockets_settle(limit: int) -> bool:
        for _ in range(100):
            if open_sockets() <= limit:
                return True
            await asyncio.sleep(0.05)
        return False

    hook = make_hook()
    async with hook.async_session_scope():
        jobs = await asyncio.gather(*(hook.aget_batch_job(names[i % 20]) for i in range(1000)))
    assert [job["name"] for job in jobs] == [names[i % 20] for i in range(1000)]
    assert await sockets_settle(before + 2), (before, open_sockets())
    assert sum(1 for entry in handle.emulator.access_log if entry["method"] == "GET") == 1000


# 10. test_connection ---------------------------------------------------------------------


def test_test_connection_with_a_good_key(start):
    handle = start()
    ok, message = make_hook().test_connection()
    assert ok is True
    assert ENDPOINT in message
    assert handle.emulator.jobs_created == 0


def test_test_connection_with_a_wrong_key(start, monkeypatch):
    handle = start()
    monkeypatch.setenv(*connection_env(handle.base_url, key=WRONG_KEY))
    ok, message = make_hook().test_connection()
    assert ok is False
    assert "HTTP 401" in message
    assert "API Key" in message
    assert WRONG_KEY not in message


def test_test_connection_with_a_forbidden_endpoint(start):
    start(forbidden_endpoints=("forbidden-endpoint",))
    ok, message = make_hook(endpoint="forbidden-endpoint").test_connection()
    assert ok is False
    assert "HTTP 403" in message
    assert API_KEY not in message


def test_test_connection_with_an_incomplete_connection(start, monkeypatch):
    handle = start()
    monkeypatch.setenv(*connection_env(handle.base_url, endpoint=""))
    ok, message = make_hook().test_connection()
    assert ok is False
    assert "No ENDPOINT" in message


def test_test_connection_when_nothing_listens(monkeypatch, caplog):
    monkeypatch.setenv(*connection_env(f"http://127.0.0.1:{free_port()}"))
    ok, message = make_hook(max_attempts=2).test_connection()
    assert ok is False
    assert "cannot reach 127.0.0.1:" in message and "refused" in message
    assert retry_delays(caplog) == []  # one attempt: the button answers at once


def test_test_connection_with_a_wrong_endpoint(start):
    handle = start()
    ok, message = make_hook(endpoint="wrong-ep").test_connection()
    assert ok is False
    assert "Endpoint 'wrong-ep' is unknown" in message and "Endpoint field" in message
    assert handle.emulator.jobs_created == 0


def test_test_connection_uploads_the_probe_file_and_creates_no_job(start):
    handle = start()
    for _ in range(2):
        ok, message = make_hook().test_connection()
        assert ok is True, message
    assert "maas-connection-test.jsonl" in message
    assert handle.emulator.uploads_by_name == {"maas-connection-test.jsonl": 2}
    assert handle.emulator.files["maas-connection-test.jsonl"]["request_count"] == 1
    assert handle.emulator.jobs_created == 0


def test_test_connection_when_the_host_does_not_resolve(monkeypatch):
    monkeypatch.setenv(*connection_env("https://maas-host.invalid"))
    ok, message = make_hook().test_connection()
    assert ok is False
    assert "cannot reach maas-host.invalid:443" in message and "DNS" in message


# 8. The key never shows (besides the autouse checks) -----------------------------------


def test_key_absent_from_config_repr_and_hook_errors(start):
    start()
    hook = make_hook()
    assert API_KEY not in repr(hook.config)
    assert API_KEY not in str(hook.config)
    assert hook.config.api_key == API_KEY  # held, just never shown
    errors: list[BaseException] = []
    for call in (lambda: hook.get_batch_job("1"), lambda: hook.get_results_metadata("1")):
        with pytest.raises(MaaSApiError) as info:
            call()
        errors.append(info.value)
    for err in errors:
        assert_no_key(err)


def test_large_transfers_log_progress_about_every_ten_percent(emulator_factory, tmp_path, caplog):
    import logging

    emulator_factory(result_padding_bytes=200_000, job_duration=0.1)
    hook = MaaSHook()
    source = tmp_path / "big.jsonl"
    line = b'{"request": {"contents": [{"role": "user", "parts": [{"text": "%s"}]}]}}\n'
    source.write_bytes(b"".join(line % (b"x" * 200_000 + str(i).encode()) for i in range(60)))
    caplog.set_level(logging.INFO, logger="airflow_provider_maas")
    name = hook.upload_file(source, "big.jsonl")["name"]
    uploads = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Uploaded ") and "%" in r.getMessage()
    ]
    assert 8 <= len(uploads) <= 11, uploads
    assert uploads[-1].endswith("(100%)")
    job = hook.create_batch_job(name, "progress")
    hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
    hook.download_results(job["name"], tmp_path / "out.jsonl")
    downloads = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Downloaded ") and "%" in r.getMessage()
    ]
    assert 8 <= len(downloads) <= 11, downloads


def test_non_json_success_body_is_a_clear_error():
    from airflow_provider_maas.client.errors import parse_json
    from airflow_provider_maas.exceptions import MaaSApiError

    with pytest.raises(MaaSApiError, match=r"not a usable JSON object.*Base URL"):
        parse_json(b"<html>welcome to nginx</html>", what="Getting job 1")
    assert parse_json(b'{"name": "1"}', what="x") == {"name": "1"}


# 10. Answers that must fail fast -----------------------------------------------------------


def test_create_refused_for_quota_is_retried_then_raises_rate_limit(start, caplog):
    handle = start()
    hook = make_hook()
    hook.upload_file(REQUESTS_FILE, "busy.jsonl")
    handle.schedule("create:*:429")
    with pytest.raises(MaaSRateLimitError) as info:
        hook.create_batch_job("busy.jsonl", "busy")
    assert not isinstance(info.value, MaaSJobCreationUncertainError)
    assert len(retry_delays(caplog)) == 2
    assert handle.emulator.jobs_created == 0


def test_lost_create_timeout_is_uncertain_and_makes_exactly_one_job(start, monkeypatch, caplog):
    handle = start()
    make_hook().upload_file(REQUESTS_FILE, "late.jsonl")
    monkeypatch.setenv(*connection_env(handle.base_url, timeout=0.3))
    handle.schedule("create:1:lost-timeout=2")
    with pytest.raises(MaaSJobCreationUncertainError, match="display name 'late'"):
        make_hook().create_batch_job("late.jsonl", "late")
    assert handle.emulator.jobs_by_file == {"late.jsonl": 1}
    assert retry_delays(caplog) == []


@pytest.mark.parametrize("call", ["upload", "get", "metadata", "aget"])  # create: tests/test_create_answers.py
async def test_redirects_are_never_followed(start, caplog, call):
    handle = start()
    hook = make_hook()
    name = finished_job(hook) if call in ("get", "metadata", "aget") else None
    handle.schedule(f"{'get' if call == 'aget' else call}:1:redirect-307")
    before = api_requests(handle)
    with pytest.raises(MaaSConfigError) as info:
        if call == "upload":
            hook.upload_file(REQUESTS_FILE, "r.jsonl")
        elif call == "get":
            hook.get_batch_job(name)
        elif call == "metadata":
            hook.get_results_metadata(name)
        else:
            async with hook.async_session_scope():
                await hook.aget_batch_job(name)
    assert "HTTP 307, a redirect to http://127.0.0.1:" in str(info.value) and "Base URL" in str(info.value)
    assert api_requests(handle) - before == 1
    assert handle.emulator.redirect_hits == 0
    assert retry_delays(caplog) == []


async def test_deeply_nested_success_body_is_an_api_error(start, caplog):
    handle = start()
    hook = make_hook()
    name = finished_job(hook)
    handle.schedule("get:2:deep-json")
    with pytest.raises(MaaSApiError, match="not a usable JSON object") as info:
        hook.get_batch_job(name)
    assert not isinstance(info.value.__context__, RecursionError)
    async with hook.async_session_scope():
        with pytest.raises(MaaSApiError, match="not a usable JSON object"):
            await hook.aget_batch_job(name)


def test_404_on_upload_and_create_points_at_the_endpoint_field(start):
    start(extra_endpoints=("other-endpoint",))
    with pytest.raises(MaaSNotFoundError, match="check the connection's Endpoint field"):
        make_hook(endpoint="no-such-endpoint").upload_file(REQUESTS_FILE, "r.jsonl")
    with pytest.raises(MaaSNotFoundError, match="check the connection's Endpoint field"):
        make_hook(endpoint="other-endpoint").create_batch_job("never-uploaded.jsonl", "r")
