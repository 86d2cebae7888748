"""The emulator's deterministic fault schedule: "the next N calls of kind K answer with fault F"."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator
from airflow_provider_maas.emulator.schedule import ScheduledFault
from tests.test_emulator import (
    AUTH,
    KEY,
    T,
    cfg,
    content,
    create,
    get_job,
    lines_of,
    make_jsonl,
    prefix,
    start_cli,
    submit,
    upload,
    wait_terminal,
)


@pytest.fixture(scope="session", autouse=True)
def airflow_db():
    """These tests never touch Airflow's database."""
    yield


def state(emu: Any) -> dict[str, Any]:
    r = requests.get(f"{emu.base_url}/_emulator/state", headers=AUTH, timeout=T)
    assert r.status_code == 200
    return r.json()


@pytest.mark.parametrize(
    ("spec", "entry"),
    [
        ("create:2:lost-500", ScheduledFault("create", 2, "lost-500")),
        ("get:*:503", ScheduledFault("get", -1, "503")),
        ("create:1:fail-requests=text:q number 3", ScheduledFault("create", 1, "fail-requests", "text:q number 3")),
        ("content:1:echo-headers=502", ScheduledFault("content", 1, "echo-headers", "502")),
    ],
)
def test_fault_specs_parse_and_print_back(spec, entry):
    assert ScheduledFault.parse(spec) == entry
    assert str(entry) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("create:lost-500", "KIND:N:FAULT"),
        ("jobs:1:500", "unknown call kind"),
        ("get:1:lost-500", "does not apply to 'get'"),
        ("create:0:500", "positive integer"),
        ("create:1:fail-requests", "needs an argument"),
        ("create:1:fail-requests=line:3", "text:SUBSTRING or index"),
        ("get:1:500=3", "one of json, html, text"),
        ("get:1:429=3", "takes no argument"),
    ],
)
def test_bad_fault_specs_are_refused_with_the_syntax(spec, message):
    with pytest.raises(ValueError, match=message):
        EmulatorConfig(faults=[spec])


def test_next_n_calls_of_a_kind_then_normal_again():
    with run_emulator(cfg(faults=["get:2:503", "get:1:429"])) as emu:
        job = submit(emu, make_jsonl(2))
        codes = [get_job(emu, job).status_code for _ in range(4)]
        assert codes == [503, 503, 429, 200]
        assert get_job(emu, job).status_code == 200
        assert state(emu)["faults"] == []
        faults = [e["fault"] for e in emu.emulator.access_log if e["path_qs"].endswith(job)]
        assert faults[:3] == ["503", "503", "429"]


def test_plain_faults_do_not_act():
    with run_emulator(cfg(faults=["create:1:500", "create:1:503", "create:1:reset", "create:1:429"])) as emu:
        assert upload(emu, "in.jsonl", make_jsonl(2)).status_code == 200
        assert create(emu, "in.jsonl").status_code == 500
        assert create(emu, "in.jsonl").status_code == 503
        with pytest.raises(requests.ConnectionError):
            create(emu, "in.jsonl")
        r = create(emu, "in.jsonl")
        assert r.status_code == 429 and r.headers["Retry-After"]
        assert emu.emulator.jobs_created == 0
        assert create(emu, "in.jsonl").status_code == 200
        assert state(emu)["jobs_by_file"] == {"in.jsonl": 1}


@pytest.mark.parametrize("fault", ["lost-500", "lost-503", "lost-reset", "lost-nonjson", "lost-timeout=1"])
def test_lost_create_faults_create_the_job(fault):
    with run_emulator(cfg(faults=[f"create:1:{fault}"])) as emu:
        assert upload(emu, "in.jsonl", make_jsonl(2)).status_code == 200
        try:
            r = create(emu, "in.jsonl", timeout=0.3)
        except requests.RequestException:
            r = None
        if fault in ("lost-500", "lost-503"):
            assert r is not None and r.status_code == int(fault[-3:])
        elif fault == "lost-nonjson":
            assert r is not None and r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        else:
            assert r is None
        assert state(emu)["jobs_by_file"] == {"in.jsonl": 1}
        assert state(emu)["jobs_created"] == 1


def test_echo_headers_redirect_deep_json_and_nonjson_bodies():
    faults = ["get:1:echo-headers", "get:1:echo-headers=502", "get:1:redirect-307", "get:1:deep-json"]
    with run_emulator(cfg(faults=[*faults, "get:1:nonjson-200"])) as emu:
        job = submit(emu, make_jsonl(1))
        r = get_job(emu, job)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html") and KEY in r.text
        r = get_job(emu, job)
        assert r.status_code == 502 and KEY in r.text
        r = requests.get(f"{prefix(emu)}/batchPredictionJobs/{job}", headers=AUTH, timeout=T, allow_redirects=False)
        assert r.status_code == 307 and r.headers["Location"].endswith("/_emulator/redirect-target")
        r = get_job(emu, job)
        assert r.status_code == 200 and r.text.startswith('{"a":{"a":')
        with pytest.raises(RecursionError):
            json.loads(r.text)
        r = get_job(emu, job)
        assert r.status_code == 200 and r.text.startswith("<!DOCTYPE html>")
        assert state(emu)["redirect_hits"] == 0


def test_partial_missing_results_hold_only_the_successes():
    with run_emulator(cfg(faults=["create:1:partial-missing"])) as emu:
        job = submit(emu, make_jsonl(7))
        res = wait_terminal(emu, job)
        assert res["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
        assert res["completionStats"] == {"successfulCount": "5", "failedCount": "2"}
        lines = lines_of(content(emu, job, "media").content)
        assert len(lines) == 5 and all(line["status"] == "" for line in lines)


def test_duplicate_lines_repeat_some_results():
    with run_emulator(cfg(faults=["create:1:duplicate-lines=2"])) as emu:
        job = submit(emu, make_jsonl(4))
        assert wait_terminal(emu, job)["completionStats"] == {"successfulCount": "4", "failedCount": None}
        lines = lines_of(content(emu, job, "media").content)
        assert len(lines) == 6 and lines[-2:] == lines[:2]


def test_fail_requests_fail_on_their_first_attempt_only():
    with run_emulator(cfg(faults=["create:*:fail-requests=text:q number 1:", "create:*:fail-requests=index:3"])) as emu:
        data = make_jsonl(4)
        job = submit(emu, data)
        res = wait_terminal(emu, job)
        assert res["completionStats"]["failedCount"] == "1"  # only the first entry applies to one call
        failed = [line for line in lines_of(content(emu, job, "media").content) if line["status"]]
        assert [f["request"]["contents"][0]["parts"][0]["text"] for f in failed] == ["q number 1: what is 1 + 1?"]
        again = submit(emu, data, "again.jsonl")  # the same request: it succeeds this time
        assert wait_terminal(emu, again)["completionStats"] == {"successfulCount": "4", "failedCount": None}


def test_fail_requests_by_index():
    with run_emulator(cfg(faults=["create:1:fail-requests=index:1,3"])) as emu:
        job = submit(emu, make_jsonl(4))
        assert wait_terminal(emu, job)["completionStats"] == {"successfulCount": "2", "failedCount": "2"}


def test_results_gone_on_content_and_metadata_kinds_apart():
    with run_emulator(cfg(faults=["content:1:results-gone", "metadata:1:503"])) as emu:
        job = submit(emu, make_jsonl(2))
        wait_terminal(emu, job)
        assert content(emu, job, "json").status_code == 503
        assert content(emu, job).status_code == 200  # alt defaults to json
        assert content(emu, job, "media").status_code == 410
        assert content(emu, job, "media").status_code == 200


def test_wrong_key_takes_no_scheduled_fault():
    with run_emulator(cfg(faults=["upload:1:500"])) as emu:
        r = requests.post(
            f"{prefix(emu)}/files",
            params={"uploadType": "media", "name": "x.jsonl"},
            data=make_jsonl(1),
            headers={"Authorization": "Bearer nope"},
            timeout=T,
        )
        assert r.status_code == 401
        assert upload(emu, "x.jsonl", make_jsonl(1)).status_code == 500


def test_admin_route_sets_lists_and_clears_the_schedule():
    with run_emulator(cfg()) as emu:
        url = f"{emu.base_url}/_emulator/faults"
        assert requests.post(url, json={"faults": ["get:1:500"]}, timeout=T).status_code == 401
        r = requests.post(
            url,
            json={"faults": ["get:1:500", {"kind": "create", "count": "*", "fault": "429"}]},
            headers=AUTH,
            timeout=T,
        )
        assert r.status_code == 200 and r.json()["faults"] == ["get:1:500", "create:*:429"]
        bad = requests.post(url, json={"faults": ["get:1:lost-500"]}, headers=AUTH, timeout=T)
        assert bad.status_code == 400 and "does not apply" in bad.text
        r = requests.post(url, json={"faults": ["upload:3:503"], "replace": True}, headers=AUTH, timeout=T)
        assert r.json()["faults"] == ["upload:3:503"]
        assert requests.get(url, headers=AUTH, timeout=T).json() == {"faults": ["upload:3:503"]}
        assert requests.delete(url, headers=AUTH, timeout=T).json() == {"faults": []}
        emu.schedule("upload:1:404")
        assert upload(emu, "x.jsonl", make_jsonl(1)).status_code == 404


def test_cli_fault_flag(tmp_path):
    proc, base = start_cli(tmp_path, "--fault", "create:1:lost-500", "--fault", "get:1:503")
    try:
        r = requests.get(f"{base}/_emulator/faults", headers=AUTH, timeout=T)
        assert r.json() == {"faults": ["create:1:lost-500", "get:1:503"]}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_cli_refuses_a_bad_fault():
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_maas.emulator", "--fault", "create:1:nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "fault 'nope' does not apply" in out.stderr


def _settled(emu: Any, predicate: Any) -> None:
    """Wait (at most 10 s) for the emulator to have handled what ``predicate`` looks for."""
    deadline = time.monotonic() + 10
    while not predicate(emu.emulator):
        assert time.monotonic() < deadline, "the emulator never handled the call"
        time.sleep(0.02)


def test_slow_answers_late_and_drops_the_call_when_the_client_gave_up():
    with run_emulator(cfg(faults=["create:1:slow=1", "create:1:slow=0.1", "get:1:slow"])) as emu:
        emu.emulator.config.slow_seconds = 0.1
        assert upload(emu, "in.jsonl", make_jsonl(2)).status_code == 200
        with pytest.raises(requests.Timeout):
            create(emu, "in.jsonl", timeout=0.3)  # the answer would come after 1 s: the client gives up
        _settled(emu, lambda e: [x["fault"] for x in e.access_log][-1:] == ["slow"])
        assert emu.emulator.jobs_created == 0  # nobody waited for it: not created
        r = create(emu, "in.jsonl")  # late (0.1 s) but waited for: carried out
        assert r.status_code == 200 and emu.emulator.jobs_created == 1
        assert get_job(emu, r.json()["name"]).status_code == 200  # slow_seconds when no SECONDS given
        assert [x["fault"] for x in emu.emulator.access_log[-3:]] == ["slow", "slow", "slow"]
        assert state(emu)["faults"] == []


def test_slow_takes_seconds_only():
    with pytest.raises(ValueError, match="must be seconds"):
        EmulatorConfig(faults=["get:1:slow=soon"])
