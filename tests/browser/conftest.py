"""Fixtures of the browser tests: a real ``airflow api-server`` on loopback, the emulator started
from its CLI, and headless Debian Chromium driven by Playwright.

Chromium and Playwright come from ``make browser-deps`` (Debian's ``chromium`` package and the
``playwright`` pip package; no browser download). When they are missing the tests FAIL, unless
``MAAS_SKIP_BROWSER_TESTS=1`` is set outside CI (``CI`` set to anything but ``0``/``false``/empty
ignores it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import (
    ARTIFACTS_ENV,
    CHROMIUM,
    CHROMIUM_ARGS,
    SERVER_START_TIMEOUT,
    SKIP_ENV,
    UI_API_KEY,
    UI_ENDPOINT,
    AirflowUI,
    free_port,
    get_json,
    stop_process,
    tail,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the Airflow UI in headless Chromium")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing_browser_parts() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the 'playwright' package is not installed in {sys.prefix}"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium executable at {CHROMIUM}"
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Path of Debian's Chromium; fails (never skips silently) when the browser stack is missing."""
    missing = _missing_browser_parts()
    if missing:
        if os.environ.get(SKIP_ENV) == "1" and not _in_ci():
            pytest.skip(f"{missing}; skipped because {SKIP_ENV}=1")
        pytest.fail(
            f"Browser tests cannot run: {missing}. Install Chromium and Playwright with "
            f"`make browser-deps`, or set {SKIP_ENV}=1 to skip them on a developer machine "
            "(ignored when CI is set).",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get(ARTIFACTS_ENV)
    path = Path(configured) if configured else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory, airflow_db: None) -> Any:
    """``airflow api-server`` on loopback: its own throwaway AIRFLOW_HOME, simple auth manager with
    every user an admin (no login page), ``[core] test_connection = Enabled``."""
    import airflow

    home = tmp_path_factory.mktemp("airflow-ui-home")
    # Start from the session's already-migrated database (saves a migration), but a copy of it:
    # the api-server writes connections, and sqlite allows one writer.
    shutil.copyfile(Path(os.environ["MAAS_TEST_AIRFLOW_HOME"]) / "airflow.db", home / "airflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    port = free_port()
    log_path = home / "api-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"airflow api-server exited with {proc.returncode}:\n{tail(log_path)}", pytrace=False)
            try:
                get_json(base_url + "/api/v2/monitor/health", timeout=2)
                break
            except urllib.error.HTTPError as err:  # listening, but broken: no point in waiting
                pytest.fail(
                    f"airflow api-server answered {err.code} to /api/v2/monitor/health:\n{tail(log_path)}",
                    pytrace=False,
                )
            except (urllib.error.URLError, OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"airflow api-server not healthy after {SERVER_START_TIMEOUT:.0f}s:\n{tail(log_path)}",
                        pytrace=False,
                    )
                time.sleep(0.5)
        yield AirflowUI(base_url, log_path, airflow.__version__)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The emulator started the way a user starts it: ``python -m airflow_provider_maas.emulator``."""
    workdir = tmp_path_factory.mktemp("emulator")
    ready = workdir / "ready"
    log_path = workdir / "emulator.log"
    args = [sys.executable, "-m", "airflow_provider_maas.emulator", "--host", "127.0.0.1", "--port", "0"]
    args += ["--ready-file", str(ready), "--api-key", UI_API_KEY, "--endpoint", UI_ENDPOINT]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"emulator did not start:\n{tail(log_path)}", pytrace=False)
            time.sleep(0.1)
        yield ready.read_text().strip()
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def browser_context(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A headless Chromium with a fresh profile (``--user-data-dir``), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium_executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, artifacts_dir: Path, request: pytest.FixtureRequest) -> Any:
    """A new tab; on a failing test its screenshot is kept in the artifacts directory."""
    tab = browser_context.new_page()
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot = artifacts_dir / f"FAILED-{request.node.name}.png"
        with contextlib.suppress(Exception):
            tab.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failing page: {shot}")
    tab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
