"""Test setup: a throwaway AIRFLOW_HOME (sqlite, absolute path) set before Airflow is imported,
migrated once per session, and the local emulator over real HTTP on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Set once per process: importing this module again (``from tests.conftest import ...``) must not
# point Airflow at a second, unmigrated home.
_HOME = Path(os.environ.get("MAAS_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="maas-airflow-test-"))
os.environ["MAAS_TEST_AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT)  # example_dags/ and tests/dags/ both under it
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# The batch trigger's first poll waits twice this (batch.polling.min_first_poll_after): 2 s in tests.
os.environ["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] = "1"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

import pytest  # noqa: E402

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator  # noqa: E402
from airflow_provider_maas.storage import INSTALL_HINTS  # noqa: E402

API_KEY = "test-secret-key-0123456789"

#: Test tiers (markers registered in pyproject.toml), by file. Files named nowhere are integration.
UNIT_FILES = frozenset(
    {
        "test_api.py",
        "test_batch_state.py",
        "test_cost_units.py",
        "test_int_settings.py",
        "test_cost_unknown.py",
        "test_integrity.py",
        "test_jsonl.py",
        "test_key_redaction.py",
        "test_merge.py",
        "test_parse_cost.py",
        "test_progress.py",
        "test_provider_info.py",
        "test_public_surface.py",
        "test_results.py",
        "test_storage.py",
        "test_summary_types.py",
        "test_transient.py",
    }
)
SYSTEM_FILES = frozenset(
    {
        "test_benchmarks_smoke.py",
        "test_connection_test.py",
        "test_crash_restart.py",
        "test_create_killed.py",
        "test_demo.py",
        "test_deployment_smoke.py",
        "test_quickstart.py",
        "test_leak_sweep_dag.py",
    }
)
SYSTEM_DIRS = frozenset({"browser", "distributed"})
#: A test of a unit file that starts an emulator is an integration test.
_EMULATOR_FIXTURES = frozenset({"emulator", "emulator_factory"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test ``unit``, ``integration`` or ``system`` (``make test-unit`` runs ``-m unit``)."""
    for item in items:
        path = item.path
        if path.name in SYSTEM_FILES or SYSTEM_DIRS.intersection(path.relative_to(ROOT).parts):
            tier = "system"
        elif path.name in UNIT_FILES and not _EMULATOR_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            tier = "unit"
        else:
            tier = "integration"
        item.add_marker(tier)


ENDPOINT = "test-endpoint"


@pytest.fixture(scope="session", autouse=True)
def airflow_db(request):
    """Migrate the throwaway metadata database once for the whole session, unless every selected
    test is a unit test (``make test-unit``: no unit test touches the database; ~3 s saved)."""
    if all(item.get_closest_marker("unit") for item in request.session.items):
        yield
        shutil.rmtree(_HOME, ignore_errors=True)
        return
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        capture_output=True,
    )
    yield
    shutil.rmtree(_HOME, ignore_errors=True)


def connection_env(
    base_url: str, *, key: str = API_KEY, endpoint: str = ENDPOINT, conn_id: str = "maas_default", **extra
) -> tuple[str, str]:
    import json

    value = json.dumps(
        {"conn_type": "maas", "host": base_url, "password": key, "extra": {"endpoint": endpoint, **extra}}
    )
    return f"AIRFLOW_CONN_{conn_id.upper()}", value


@pytest.fixture
def emulator_factory(monkeypatch):
    """Start emulators with a given config; each gets ``maas_default`` pointing at it."""
    import contextlib

    stack = contextlib.ExitStack()

    def start(conn_id: str = "maas_default", **overrides):
        config = EmulatorConfig(api_key=API_KEY, endpoint=ENDPOINT, **{"job_duration": 0.3, **overrides})
        handle = stack.enter_context(run_emulator(config))
        name, value = connection_env(handle.base_url, conn_id=conn_id)
        monkeypatch.setenv(name, value)
        return handle

    with stack:
        yield start


@pytest.fixture
def emulator(emulator_factory):
    """A default emulator (fast jobs) with ``maas_default`` pointing at it."""
    return emulator_factory()


@pytest.fixture
def without_store_providers(monkeypatch: pytest.MonkeyPatch):
    """The object stores of ``storage.INSTALL_HINTS`` (and ``az``) unregistered, whatever is installed.

    With the amazon provider installed, ``s3://`` resolves (and reaches AWS): these tests are about
    what a user WITHOUT the provider sees.
    """
    try:
        from airflow.sdk.io import fs as registry
        from airflow.sdk.io.store import _STORE_CACHE
    except ImportError:  # Airflow 3.0
        from airflow.io import fs as registry  # type: ignore[no-redef,attr-defined,unused-ignore]
        from airflow.io.store import _STORE_CACHE  # type: ignore[no-redef,import-not-found,unused-ignore]

    hidden = {*INSTALL_HINTS, "az"}
    registered = registry._register_filesystems()
    monkeypatch.setattr(
        registry, "_register_filesystems", lambda: {k: v for k, v in registered.items() if k not in hidden}
    )
    for alias in [a for a in _STORE_CACHE if a.split("-", 1)[0] in hidden]:
        monkeypatch.delitem(_STORE_CACHE, alias)
