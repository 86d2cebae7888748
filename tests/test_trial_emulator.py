"""Trial of the emulator's settings and fault schedule: what cannot be honoured is refused with a
message naming it, at start and over ``POST /_emulator/faults`` (real HTTP), never accepted and
served as a nonsense answer (HTTP 999, a "slow" answer that never comes, a job that never ends)."""

from __future__ import annotations

import math
import re

import pytest
import requests

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator
from airflow_provider_maas.emulator.schedule import ScheduledFault


@pytest.fixture(scope="session", autouse=True)
def airflow_db():
    """These tests never touch Airflow's database."""
    yield


KEY = "trial-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("get:1:slow=inf", "must be seconds (finite"),
        ("get:1:slow=1e999", "must be seconds (finite"),
        ("create:1:lost-timeout=inf", "must be seconds (finite"),
        ("get:1:echo-headers=999", "HTTP status 200-599"),
        ("get:1:echo-headers=100", "HTTP status 200-599"),
    ],
)
def test_a_fault_argument_the_emulator_cannot_serve_is_refused(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ScheduledFault.parse(spec)
    with run_emulator(EmulatorConfig(api_key=KEY)) as emu:
        answer = requests.post(f"{emu.base_url}/_emulator/faults", json={"faults": [spec]}, headers=AUTH, timeout=10)
        assert answer.status_code == 400 and message in answer.json()["error"]["message"]
        assert requests.get(f"{emu.base_url}/_emulator/faults", headers=AUTH, timeout=10).json() == {"faults": []}


def test_echo_headers_still_takes_a_real_status():
    assert ScheduledFault.parse("get:1:echo-headers=524").arg == "524"


@pytest.mark.parametrize("replace", ["yes", 1, None, ["x"]])
def test_replace_must_be_a_boolean(replace):
    with run_emulator(EmulatorConfig(api_key=KEY, faults=["get:1:503"])) as emu:
        url = f"{emu.base_url}/_emulator/faults"
        answer = requests.post(url, json={"faults": ["get:1:429"], "replace": replace}, headers=AUTH, timeout=10)
        assert answer.status_code == 400 and '"replace" must be true or false' in answer.json()["error"]["message"]
        assert requests.get(url, headers=AUTH, timeout=10).json() == {"faults": ["get:1:503"]}, "nothing changed"


@pytest.mark.parametrize("name", ["job_duration", "latency", "retry_after", "slow_seconds", "retention_seconds"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_durations_must_be_finite_seconds(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number of seconds"):
        EmulatorConfig(**{name: value})


def test_durations_are_refused_over_http_too():
    with run_emulator(EmulatorConfig(api_key=KEY)) as emu:
        answer = requests.post(
            f"{emu.base_url}/_emulator/config", data='{"job_duration": NaN}', headers=AUTH, timeout=10
        )
        assert answer.status_code == 400 and "job_duration must be a finite number" in answer.json()["error"]["message"]
