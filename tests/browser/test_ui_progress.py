"""The batch progress tab and the metrics (issue 23) on a real deployment: api-server (UI, REST and execution API),
scheduler, dag-processor and triggerer, the emulator with slow jobs, headless Chromium.

A batch of 6 shards (2 jobs at a time, 10 s each) runs deferred; the "Batch progress" tab of its task
instance shows the finished shards go up while the task is deferred, then the final numbers (the
summary) after it ended. A user the auth manager does not let read the DAG gets 403 from the API
and a page without data. Neither the page nor the API ever holds the API key. The screenshot of
the tab is written to the artifacts (and to docs/batch-progress.png with
MAAS_UPDATE_DOCS_SCREENSHOT=1).

The same run checks the metrics: Airflow's StatsD backend (``[metrics] statsd_on``, InfluxDB-style
tags on) sends to a UDP listener on loopback; the ``maas.batch.*`` counters arrive with the dag and
task tags and the values of the task's summary (one deployment for both: CI time).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import airflow
import pytest

from benchmarks._common import API_KEY, connection_json, emulator_process
from tests.airflow_processes import LINUX_ONLY, AirflowProcesses, wait_for
from tests.browser.support import ROOT, UPDATE_DOCS_ENV
from tests.helpers import write_requests

pytestmark = [pytest.mark.browser, LINUX_ONLY]

AIRFLOW_VERSION = tuple(int(x) for x in airflow.__version__.split(".")[:2])

DAG_ID, TASK_ID = "maas_progress_ui", "predict"
SHARDS, PER_FILE, JOB_SECONDS = 6, 5, 10
PASSWORDS = {"admin": "admin-pw-123", "outsider": "outsider-pw-123"}
DOCS_SHOT = ROOT / "docs" / "batch-progress.png"


def _request(url: str, token: str | None = None, body: Any = None) -> tuple[int, bytes]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class StatsdListener:
    """A StatsD server on 127.0.0.1 (UDP): keeps every line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                data = self.sock.recv(65536)
                self.lines.extend(data.decode(errors="replace").splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def counters(self, prefix: str) -> dict[tuple[str, frozenset[str]], float]:
        """Sum of each counter whose name starts with ``prefix``: ``{(name, tags): total}``."""
        totals: dict[tuple[str, frozenset[str]], float] = {}
        for line in self.lines:
            name_tags, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            if not name_tags.startswith(prefix) or not kind.startswith("c"):
                continue
            name, *tags = name_tags.split(",")
            key = (name, frozenset(tags))
            totals[key] = totals.get(key, 0) + float(value)
        return totals


def _token(base: str, user: str) -> str:
    status, body = _request(f"{base}/auth/token", body={"username": user, "password": PASSWORDS[user]})
    assert status in (200, 201), body
    return json.loads(body)["access_token"]


@dataclass
class Deployment:
    airflow: AirflowProcesses
    base: str
    run_id: str
    admin: str  # tokens
    outsider: str
    statsd: StatsdListener

    @property
    def api(self) -> str:
        query = urlencode({"run_id": self.run_id, "task_id": TASK_ID, "map_index": -1})
        return f"{self.base}/maas-progress/api/dags/{DAG_ID}/progress?{query}"

    @property
    def page(self) -> str:
        return f"{self.base}/maas-progress/?" + urlencode(
            {"dag_id": DAG_ID, "run_id": self.run_id, "task_id": TASK_ID, "map_index": -1}
        )

    def progress(self, token: str | None = None) -> dict[str, Any]:
        status, body = _request(self.api, token or self.admin)
        assert status == 200, body
        assert API_KEY.encode() not in body
        return json.loads(body)

    def diagnose(self) -> str:
        return self.airflow.diagnose([DAG_ID], TASK_ID)

    def links(self) -> dict[str, Any]:
        url = f"{self.base}/api/v2/dags/{DAG_ID}/dagRuns/{self.run_id}/taskInstances/{TASK_ID}/links"
        status, body = _request(url, self.admin)
        assert status == 200, body
        return json.loads(body)


@contextlib.contextmanager
def deployment(tmp_path: Path, job_seconds: float) -> Iterator[Deployment]:
    """api-server (every app), dag-processor, triggerer, scheduler and the emulator; the DAG
    ``maas_progress_ui`` starts its one run as soon as it is parsed."""
    work = tmp_path / "work"
    work.mkdir()
    write_requests(work / "requests.jsonl", SHARDS * PER_FILE)
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "tests" / "dags" / "maas_progress_ui.py", dags)
    home = tmp_path / "airflow"
    home.mkdir()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    statsd = StatsdListener()
    with contextlib.ExitStack() as stack:
        stack.callback(statsd.close)
        emu = stack.enter_context(emulator_process(tmp_path / "emu", job_duration=job_seconds))
        airflow = AirflowProcesses(
            home,
            dags,
            {
                "AIRFLOW_CONN_MAAS_DEFAULT": connection_json(emu.base_url),
                "MAAS_PROGRESS_DIR": str(work),
                "PYTHONPATH": str(ROOT),
                "AIRFLOW__CORE__AUTH_MANAGER": "tests.browser.restricted_auth.RestrictedAuthManager",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,outsider:viewer",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
                "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
            },
        )
        base = f"http://127.0.0.1:{airflow.api_port}"
        with airflow:
            airflow.migrate()
            airflow.start("api-server", "api-server", "-H", "127.0.0.1", "-p", str(airflow.api_port), "-w", "1")
            airflow.start("dag-processor", "dag-processor")
            airflow.start("triggerer", "triggerer")
            wait_for("the API server", airflow.api_ready, 180, diagnose=lambda: airflow.log_tail("api-server"))
            airflow.start("scheduler", "scheduler")
            run_id = wait_for(
                "the DAG run",
                lambda: (airflow.query("SELECT run_id FROM dag_run WHERE dag_id = ?", (DAG_ID,)) or [[None]])[0][0],
                180,
                diagnose=lambda: airflow.diagnose([DAG_ID], TASK_ID),
            )
            yield Deployment(airflow, base, run_id, _token(base, "admin"), _token(base, "outsider"), statsd)


def _check_access(dep: Deployment) -> None:
    """The outsider gets 403 from the API, no login 401; the link leads to the page."""
    status, body = _request(dep.api, dep.outsider)
    assert status == 403, body
    assert _request(dep.api)[0] == 401
    # Another operator's task instance: the API says it is not a MaaS operator.
    other = dep.api.replace(f"task_id={TASK_ID}", "task_id=other")
    status, body = _request(other, dep.admin)
    assert status == 200 and json.loads(body)["kind"] == "other", body
    # The task pushes its links as it ends: they may land just after its state.
    link = wait_for("the Batch progress link", lambda: dep.links()["extra_links"].get("Batch progress"), 30)
    assert link.endswith(dep.page.removeprefix(dep.base)), link


def _check_metrics(dep: Deployment, summary: dict[str, Any]) -> None:
    """The documented names, tagged with the dag and task, with the summary's values."""
    tags = frozenset({f"dag_id={DAG_ID}", f"task_id={TASK_ID}"})
    expected = {
        "requests_answered": summary["succeeded"],
        "prompt_tokens": summary["prompt_tokens"],
        "candidates_tokens": summary["candidates_tokens"],
        "thoughts_tokens": summary["thoughts_tokens"],
        "cost_usd": summary["cost_usd"],
        "jobs_created": summary["jobs"],
    }
    expected = {name: value for name, value in expected.items() if value}  # 0 is not sent
    assert {"requests_answered", "jobs_created", "cost_usd"} <= set(expected), summary

    def arrived() -> dict[str, float] | None:
        got = dep.statsd.counters("airflow.maas.batch.")
        by_name = {name.removeprefix("airflow.maas.batch."): v for (name, t), v in got.items() if t == tags}
        return by_name if all(name in by_name for name in expected) else None

    counters = wait_for("the maas.batch counters", arrived, 30, diagnose=lambda: "\n".join(dep.statsd.lines[-40:]))
    for name, value in expected.items():
        assert counters[name] == pytest.approx(value), (name, counters)
    assert summary["failed"] == 0 and "requests_failed" not in counters
    assert any(line.startswith("airflow.maas.batch.jobs_active,") for line in dep.statsd.lines)


def _outsider_sees_no_data(dep: Deployment, browser_context: Any) -> None:
    browser_context.clear_cookies()
    browser_context.add_cookies([{"name": "_token", "value": dep.outsider, "url": dep.base + "/"}])
    page = browser_context.new_page()
    try:
        page.goto(dep.page)
        page.locator("#denied").wait_for()
        text = page.locator("body").inner_text()
        assert "You do not have access to this DAG." in text and "answered" not in text
    finally:
        page.close()
        browser_context.clear_cookies()


def _wait_end(dep: Deployment) -> dict[str, Any]:
    final = wait_for(
        "the task to end",
        lambda: (p := dep.progress())["ti_state"] in ("success", "failed") and p,
        300,
        interval=1,
        diagnose=dep.diagnose,
    )
    assert final["ti_state"] == "success", dep.diagnose()
    assert final["summary"]["succeeded"] == SHARDS * PER_FILE
    return final


@pytest.mark.skipif(AIRFLOW_VERSION < (3, 1), reason="task instance tabs for plugins: Airflow >= 3.1")
def test_progress_tab_follows_a_deferred_batch(tmp_path: Path, browser_context: Any, artifacts_dir: Path) -> None:
    browser_context.clear_cookies()  # another test's login must not be sent along
    started = time.monotonic()
    with deployment(tmp_path, JOB_SECONDS) as dep:
        # The tab in the UI, logged in as admin, opened while the batch is deferred.
        wait_for(
            "the task to defer",
            lambda: dep.airflow.check_running() or dep.progress()["ti_state"] == "deferred",
            240,
            interval=0.5,
            diagnose=dep.diagnose,
        )
        browser_context.add_cookies([{"name": "_token", "value": dep.admin, "url": dep.base + "/"}])
        page = browser_context.new_page()
        try:
            page.goto(f"{dep.base}/dags/{DAG_ID}/runs/{dep.run_id}/tasks/{TASK_ID}/plugin/maas-batch-progress")
            frame = page.frame_locator("iframe")
            shards = frame.locator('[data-k="shards_finished"]')
            shards.wait_for(timeout=60_000)
            assert API_KEY not in frame.locator("body").inner_html() and API_KEY not in page.content()

            # While the task is deferred, the tab (refreshing itself) shows the finished shards go up.
            seen_deferred: set[int] = set()
            deferred_answers: list[dict[str, Any]] = []

            def tab_moved() -> bool:
                dep.airflow.check_running()
                answer = dep.progress()
                state = answer["ti_state"]
                with contextlib.suppress(Exception):
                    shown = int(shards.inner_text(timeout=2000))
                    if state == "deferred":
                        deferred_answers.append(answer)
                        if shown and not seen_deferred - {0}:  # the first shards finished: the picture
                            page.screenshot(path=str(artifacts_dir / "batch-progress.png"), full_page=True)
                            if os.environ.get(UPDATE_DOCS_ENV) == "1":
                                page.screenshot(path=str(DOCS_SHOT), full_page=True)
                        seen_deferred.add(shown)
                return len(seen_deferred) >= 2 or state in ("success", "failed")

            wait_for("the tab to show shards finishing", tab_moved, 240, interval=1, diagnose=dep.diagnose)
            assert len(seen_deferred) >= 2, f"finished shards shown while deferred: {seen_deferred}\n{dep.diagnose()}"
            # After a resume: the last poll, and each done job's creation, end and result deadline (end + 7 days).
            resumed = [a for a in deferred_answers if a.get("last_poll")]
            assert resumed, deferred_answers[-1:]
            done = [j for j in resumed[-1]["jobs"] if j["status"] == "done"]
            assert done and all(j["created"] and j["ended"] and j["results_until"] for j in done), done
            assert frame.locator('[data-k="last_poll"]').count() == 1

            final = _wait_end(dep)
            # The page stops refreshing once the task ended and shows the summary's numbers.
            page.reload()
            frame = page.frame_locator("iframe")
            answered = frame.locator('[data-k="answered"] b')
            answered.wait_for(timeout=30_000)
            assert answered.inner_text() == f"{SHARDS * PER_FILE}"
            assert "(final)" in frame.locator("body").inner_text()
            assert API_KEY not in frame.locator("body").inner_html()
        except BaseException:
            page.screenshot(path=str(artifacts_dir / "FAILED-batch-progress.png"), full_page=True)
            raise
        finally:
            page.close()
        _check_access(dep)
        _outsider_sees_no_data(dep, browser_context)
        _check_metrics(dep, final["summary"])
    print(f"progress tab test: {time.monotonic() - started:.0f}s")


@pytest.mark.skipif(AIRFLOW_VERSION >= (3, 1), reason="Airflow >= 3.1: the tab test covers the link too")
def test_progress_link_and_page_on_airflow_30(tmp_path: Path, browser_context: Any) -> None:
    """Airflow 3.0 has no plugin tabs: the operator's "Batch progress" link leads to the page."""
    browser_context.clear_cookies()
    started = time.monotonic()
    with deployment(tmp_path, 2) as dep:
        final = _wait_end(dep)
        _check_access(dep)
        status, body = _request(dep.page, dep.admin)
        assert status == 200 and b"Batch progress" in body and API_KEY.encode() not in body
        browser_context.add_cookies([{"name": "_token", "value": dep.admin, "url": dep.base + "/"}])
        page = browser_context.new_page()
        try:
            page.goto(dep.page)
            answered = page.locator('[data-k="answered"] b')
            answered.wait_for()
            assert answered.inner_text() == f"{SHARDS * PER_FILE}" and API_KEY not in page.content()
        finally:
            page.close()
        _outsider_sees_no_data(dep, browser_context)
        _check_metrics(dep, final["summary"])
    print(f"progress link test: {time.monotonic() - started:.0f}s")


def test_progress_page_behind_a_base_url_prefix(tmp_path: Path, browser_context: Any) -> None:
    """``[api] base_url = http://host:port/airflow/``: the page, its API call (relative) and the
    login all live under the prefix. Only the API server runs: an unknown task instance answers 404
    with the API's own message, which the page shows (so its relative call reached the plugin)."""
    home = tmp_path / "airflow"
    home.mkdir()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    dags = tmp_path / "dags"
    dags.mkdir()
    airflow = AirflowProcesses(
        home,
        dags,
        {
            "PYTHONPATH": str(ROOT),
            "AIRFLOW__CORE__AUTH_MANAGER": "tests.browser.restricted_auth.RestrictedAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,outsider:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__WORKERS": "1",
        },
    )
    base = f"http://127.0.0.1:{airflow.api_port}/airflow"
    airflow.env["AIRFLOW__API__BASE_URL"] = base + "/"
    browser_context.clear_cookies()
    with airflow:
        airflow.migrate()
        airflow.start("api-server", "api-server", "-H", "127.0.0.1", "-p", str(airflow.api_port), "-w", "1")

        def healthy() -> bool:
            airflow.check_running("api-server")
            try:
                return _request(f"{base}/api/v2/monitor/health")[0] == 200
            except urllib.error.URLError:
                return False

        wait_for("the API server under /airflow", healthy, 180, diagnose=lambda: airflow.log_tail("api-server"))
        admin = _token(base, "admin")
        status, body = _request(f"{base}/maas-progress/api/dags/maas_none/progress?run_id=r&task_id=t", admin)
        assert status == 404 and b"No task instance maas_none/r/t[-1]" in body, (status, body)
        status, body = _request(f"{base}/maas-progress/?dag_id=maas_none&run_id=r&task_id=t", admin)
        assert status == 200 and b"Batch progress" in body
        browser_context.add_cookies([{"name": "_token", "value": admin, "url": base + "/"}])
        page = browser_context.new_page()
        try:
            page.goto(f"{base}/maas-progress/?dag_id=maas_none&run_id=r&task_id=t&map_index=-1")
            page.get_by_text("No task instance maas_none/r/t[-1]").wait_for(timeout=60_000)
        finally:
            page.close()
            browser_context.clear_cookies()
