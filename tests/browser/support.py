"""Shared by the browser tests and their fixtures: settings, the api-server handle, small helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MAAS_CHROMIUM", "/usr/bin/chromium")
SKIP_ENV = "MAAS_SKIP_BROWSER_TESTS"
#: Where screenshots (and failure screenshots) are written; a temporary directory by default.
ARTIFACTS_ENV = "MAAS_BROWSER_ARTIFACTS"
#: Set to 1 to (re)write ``docs/connection-form.png`` from the test run.
UPDATE_DOCS_ENV = "MAAS_UPDATE_DOCS_SCREENSHOT"
DOCS_SCREENSHOT = ROOT / "docs" / "connection-form.png"

#: Flags that work on a machine without outside network access or a GPU: without the
#: background-networking ones Chromium keeps trying (and failing) to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

UI_API_KEY = "browser-test-key-0123456789"
UI_ENDPOINT = "browser-endpoint"
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started by these fixtures (and its own children: it leads its own group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class AirflowUI:
    """A running ``airflow api-server``: its base URL and log file."""

    def __init__(self, base_url: str, log_path: Path, airflow_version: str) -> None:
        self.base_url = base_url
        self.log_path = log_path
        self.airflow_version = airflow_version

    def url(self, path: str) -> str:
        return self.base_url + path

    def connection(self, conn_id: str) -> dict[str, Any]:
        """The stored connection as the public REST API returns it (password masked)."""
        return get_json(self.url(f"/api/v2/connections/{conn_id}"))

    def test_connection(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v2/connections/test``: what the UI's Test button calls."""
        request = urllib.request.Request(
            self.url("/api/v2/connections/test"),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def hook_meta(self, conn_type: str) -> dict[str, Any]:
        """What the UI's connection form is built from, for one connection type."""
        for item in get_json(self.url("/ui/connections/hook_meta")):
            if item.get("connection_type") == conn_type:
                return item
        raise AssertionError(
            f"connection type {conn_type!r} is not in the api-server's hook_meta: is airflow-provider-maas "
            f"pip-installed in {sys.prefix} (entry point apache_airflow_provider)?"
        )
