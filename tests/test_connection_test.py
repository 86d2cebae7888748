"""``airflow connections test`` (the CLI a user runs) proves the key AND the endpoint: a wrong
endpoint, a wrong key and an unreachable host each fail with their own message; nothing is created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import API_KEY, connection_env
from tests.test_hook import free_port


def airflow_connections_test(base_url: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    name, value = connection_env(base_url, **overrides)
    env = {**os.environ, name: value, "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}
    return subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "test", "maas_default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    ("overrides", "success", "expected"),
    [
        ({}, True, "Connection success!"),  # the CLI prints no message on success
        ({"endpoint": "wrong-ep"}, False, "Endpoint 'wrong-ep' is unknown"),
        ({"key": "not-the-key"}, False, "refused the API key (HTTP 401)"),
    ],
)
def test_cli_connection_test_tells_the_cases_apart(emulator, overrides, success, expected):
    result = airflow_connections_test(emulator.base_url, **overrides)
    output = result.stdout + result.stderr
    assert expected in output, output[-2000:]
    assert ("Connection success!" in output) is success
    assert API_KEY not in output and "not-the-key" not in output
    assert emulator.emulator.jobs_created == 0
    assert emulator.emulator.uploads_by_name == ({"maas-connection-test.jsonl": 1} if success else {})


def test_cli_connection_test_names_an_unreachable_host():
    port = free_port()
    result = airflow_connections_test(f"http://127.0.0.1:{port}")
    output = result.stdout + result.stderr
    assert f"cannot reach 127.0.0.1:{port}: the connection was refused" in output, output[-2000:]
    assert "Connection success!" not in output


@pytest.mark.parametrize("mode", ["errors", "echo"])
def test_cli_connection_test_shows_no_form_of_the_key(mode):
    """Issue 20: a service echoing the key in every form (error and success bodies)."""
    from tests.hostile_service import KEY, hostile, key_forms

    with hostile(mode) as service:
        result = airflow_connections_test(service.base_url, key=KEY)
    output = result.stdout + result.stderr
    assert ("Connection success!" in output) is (mode == "echo"), output[-2000:]
    found = [name for name, form in key_forms().items() if form in output or form.lower() in output.lower()]
    assert not found, (found, output[-2000:])
