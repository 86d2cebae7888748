"""TLS against a real https emulator with a self-signed certificate made at test time (openssl CLI):
a failed verification is reported at once (never retried) naming the host and what to set, and
``verify`` (true / false / a CA bundle path) means the same on the sync and async paths."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator
from airflow_provider_maas.exceptions import MaaSConfigError
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.conftest import API_KEY, ENDPOINT, connection_env
from tests.test_hook import REQUESTS_FILE, retry_delays

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def https_emulator(certificate, monkeypatch):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    config = EmulatorConfig(api_key=API_KEY, endpoint=ENDPOINT, job_duration=0.2)
    with run_emulator(config, ssl_context=context) as handle:
        assert handle.base_url.startswith("https://127.0.0.1:")

        def use(**extra):
            monkeypatch.setenv(*connection_env(handle.base_url, **extra))
            return MaaSHook(max_attempts=3, retry_base_delay=0.0)

        yield handle, use


def test_untrusted_certificate_fails_at_once_sync(https_emulator, caplog):
    handle, use = https_emulator
    port = handle.base_url.rsplit(":", 1)[1]
    with pytest.raises(MaaSConfigError) as info:
        use().get_batch_job("42")
    message = str(info.value)
    assert f"TLS certificate verification failed for 127.0.0.1:{port}" in message
    assert '"verify"' in message and "CA bundle" in message
    assert retry_delays(caplog) == []
    with pytest.raises(MaaSConfigError, match="TLS certificate verification failed"):
        use().create_batch_job("f.jsonl", "d")
    assert handle.emulator.request_count == 0


async def test_untrusted_certificate_fails_at_once_async(https_emulator):
    handle, use = https_emulator
    hook = use()
    async with hook.async_session_scope():
        with pytest.raises(MaaSConfigError, match=r"TLS certificate verification failed for 127\.0\.0\.1:"):
            await hook.aget_batch_job("42")
    assert handle.emulator.request_count == 0


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("verify", ["bundle", False, "false"])
async def test_verify_means_the_same_on_both_paths(https_emulator, certificate, verify):
    _handle, use = https_emulator
    hook = use(verify=str(certificate[0]) if verify == "bundle" else verify)
    hook.upload_file(REQUESTS_FILE, "tls.jsonl")
    name = hook.create_batch_job("tls.jsonl", "tls")["name"]
    assert hook.get_batch_job(name)["name"] == name
    async with hook.async_session_scope():
        assert (await hook.aget_batch_job(name))["name"] == name


def test_connection_test_reports_bad_tls(https_emulator):
    _handle, use = https_emulator
    ok, message = use().test_connection()
    assert ok is False
    assert "TLS certificate verification failed" in message


def test_https_to_a_plain_http_server_is_a_clear_tls_error(emulator, monkeypatch, caplog):
    port = emulator.base_url.rsplit(":", 1)[1]
    monkeypatch.setenv(*connection_env(f"https://127.0.0.1:{port}"))
    with pytest.raises(MaaSConfigError, match=rf"TLS handshake with 127\.0\.0\.1:{port} failed.*scheme"):
        MaaSHook(max_attempts=3).get_batch_job("42")
    assert retry_delays(caplog) == []
