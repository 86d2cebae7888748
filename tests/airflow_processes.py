"""Real Airflow processes on a throwaway AIRFLOW_HOME, for tests that kill and restart them.

``AirflowProcesses`` runs ``airflow api-server`` (execution API only), ``scheduler`` (LocalExecutor:
Airflow 3 allows it on sqlite, there is no SequentialExecutor any more), ``dag-processor`` and
``triggerer`` as subprocesses, each in its own process group, with free ports and a shared JWT
secret. It reads task instances straight from the sqlite file (read-only), finds a task's own
process under the scheduler in ``/proc`` (Linux), and always kills every process it started.

``DeferredTaskWatch`` follows one (deferrable) task instance from outside while it runs: its
states, the bytes it keeps in ``task_state_store`` and in trigger rows, and its task process's peak
RSS, for the tests and the ``scale`` benchmark that run big batches through a real deployment.

``emulator_jobs``, ``emulator_polls`` and ``end_emulator_jobs`` read and steer an in-thread emulator
(``run_emulator``) from a deployment test: its jobs per DAG, the polls they got, ending them at will.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: Mark for tests that find and kill Airflow's processes through ``/proc``.
LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds and kills Airflow's task processes through /proc (Linux only)"
)

# Runs ``python -m airflow ARGS`` in the same process (exec) after asking Linux to SIGTERM it when the
# test process dies: even a SIGKILLed pytest leaves no Airflow component running.
_EXEC_AIRFLOW = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1 = PR_SET_PDEATHSIG
    "os.execv(sys.executable, [sys.executable, '-m', 'airflow', *sys.argv[1:]])"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    parents = {pid: _parent_pid(pid) for pid in _all_pids()}
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], T], timeout: float, *, interval: float = 0.25, diagnose=None) -> T:
    """Call ``check`` until it returns a truthy value or ``timeout`` seconds pass (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = diagnose() if diagnose else ""
            raise AssertionError(f"Timed out after {timeout:.0f}s waiting for {what}.\n{detail}")
        time.sleep(interval)


class Phases:
    """Seconds since the start of a deployment test at each named phase, for its summary line."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: list[str] = []

    def __call__(self, name: str) -> None:
        self.marks.append(f"{name} {time.monotonic() - self.started:.0f}s")

    def __str__(self) -> str:
        return ", ".join(self.marks)


def deployment_dirs(tmp_path: Path, dag_file: str) -> tuple[Path, Path]:
    """``(work, dags)`` under ``tmp_path``: an empty work folder, and a dags folder holding only
    ``tests/dags/<dag_file>`` (tests/dags/ holds other tests' DAGs too)."""
    work = tmp_path / "work"
    work.mkdir()
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(Path(__file__).resolve().parent / "dags" / dag_file, dags)
    return work, dags


class AirflowProcesses:
    """The Airflow components of one throwaway deployment; use as a context manager."""

    def __init__(self, home: Path, dags_folder: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.db = home / "airflow.db"
        self.api_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MAAS_TEST_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                # The supervisor notices a worker's end within this; the batch trigger's first poll
                # waits twice as long (batch.polling.min_first_poll_after): 2 s here, 10 s by default.
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
                # A SIGKILLed triggerer leaves its job row "running": its triggers go to another
                # triggerer once its heartbeat is this old (default 30 s).
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
                **(extra_env or {}),
            }
        )
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.all_procs: list[subprocess.Popen[bytes]] = []
        self._known_pids: dict[int, str] = {}

    # Lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> AirflowProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def migrate(self, timeout: float = 180) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=self.env,
            capture_output=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"airflow db migrate failed:\n{result.stderr.decode()[-3000:]}"

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` as component ``name`` (a restart gets a new log file)."""
        count = sum(1 for p in self.all_procs if getattr(p, "component", None) == name)
        log = (self.home / f"{name}.{count}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", _EXEC_AIRFLOW, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill it with everything it started
        )
        log.close()
        proc.component = name  # type: ignore[attr-defined]
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        self.procs[name] = proc
        self.all_procs.append(proc)
        return proc

    def start_deployment(self, timeout: float, diagnose: Callable[[], str] | None = None) -> None:
        """Migrate, then start every component: the scheduler last, once the execution API answers
        (its workers need it from their first call)."""
        self.migrate()
        self.start_api_server()
        self.start("dag-processor", "dag-processor")
        self.start("triggerer", "triggerer")
        wait_for("the execution API server", self.api_ready, timeout, diagnose=diagnose)
        self.start("scheduler", "scheduler")

    def start_api_server(self) -> None:
        self.start("api-server", "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(self.api_port))

    def api_ready(self) -> bool:
        self.check_running("api-server")
        url = f"http://127.0.0.1:{self.api_port}/execution/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
        return False

    def check_running(self, *names: str) -> None:
        for name in names or tuple(self.procs):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"airflow {name} exited with code {proc.returncode}:\n{self.log_tail(name)}")

    def remember_tree(self) -> None:
        """Note every process below our components, to kill them even once orphaned."""
        for proc in self.all_procs:
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    self._known_pids.setdefault(pid, cmdline(pid))

    def kill_group(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30) -> int | None:
        """Send ``sig`` to component ``name``'s whole process group; wait for the leader to exit."""
        proc = self.procs[name]
        self.remember_tree()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self) -> None:
        self.remember_tree()
        for proc in self.all_procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.all_procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.all_procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for pid, title in self._known_pids.items():
            if alive(pid) and title and cmdline(pid) == title:  # orphans only, never a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    # Looking inside -------------------------------------------------------------------------
    def log_tail(self, name: str, lines: int = 30) -> str:
        proc = self.procs.get(name)
        if proc is None:
            return ""
        text = proc.log_path.read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
        return "\n".join(text[-lines:])

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the metadata database (read-only; retried while a writer holds the lock)."""
        if not self.db.exists():
            return []
        for attempt in range(20):
            try:
                conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
                try:
                    return conn.execute(sql, tuple(params)).fetchall()
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                if attempt == 19:
                    raise
                time.sleep(0.2)
        return []

    def task_instance(self, dag_id: str, task_id: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT id, state, try_number, trigger_id FROM task_instance WHERE dag_id = ? AND task_id = ?",
            (dag_id, task_id),
        )
        if not rows:
            return None
        ti_id, state, try_number, trigger_id = rows[0]
        return {"id": ti_id, "state": state, "try_number": try_number, "trigger_id": trigger_id}

    def trigger_owner(self, trigger_id: int) -> int | None:
        rows = self.query("SELECT triggerer_id FROM trigger WHERE id = ?", (trigger_id,))
        return rows[0][0] if rows else None

    def task_process(self, ti_id: str) -> tuple[int, int] | None:
        """``(task pid, supervisor pid)`` of the running task instance ``ti_id``, found under the scheduler.

        The task process is titled exactly ``airflow worker -- <ti id>``; its parent, the supervisor (a
        LocalExecutor worker), ``airflow worker -- LocalExecutor: <ti id>``.
        """
        wanted = str(ti_id).replace("-", "")
        for pid in descendants(self.procs["scheduler"].pid):
            words = cmdline(pid).split()
            if words[:3] == ["airflow", "worker", "--"] and len(words) == 4 and words[3].replace("-", "") == wanted:
                parent = _parent_pid(pid)
                if parent and cmdline(parent).startswith("airflow worker -- LocalExecutor"):
                    return pid, parent
        return None

    def task_log(self, dag_id: str, task_id: str, attempt: int) -> str:
        logs = sorted(
            (self.home / "logs" / f"dag_id={dag_id}").glob(f"run_id=*/task_id={task_id}/attempt={attempt}.log")
        )
        return "".join(p.read_text(errors="replace") for p in logs)

    def diagnose(self, dag_ids: Iterable[str], task_id: str) -> str:
        parts = []
        for dag_id in dag_ids:
            parts.append(f"{dag_id}: {self.task_instance(dag_id, task_id)}")
            for attempt in (1, 2, 3):
                text = self.task_log(dag_id, task_id, attempt)
                if text:
                    parts.append(f"--- {dag_id} attempt {attempt} log (tail):\n" + "\n".join(text.splitlines()[-15:]))
        for name in self.procs:
            parts.append(f"--- airflow {name} (tail):\n{self.log_tail(name, 12)}")
        return "\n".join(parts)


#: What Airflow logs in the task log each time a task defers (task-sdk ``task_runner``).
DEFERRED_LINE = "Pausing task as DEFERRED."
#: What Airflow logs on every ``task_state_store`` write over ``[workers] max_value_storage_bytes``.
OVERSIZED_STATE_LINE = "exceeds configured max_value_storage_bytes"


def peak_rss_kb(pid: int) -> int:
    """``VmHWM`` of a live process in kB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class DeferredTaskWatch:
    """Samples one task instance of a real deployment from outside (call :meth:`sample` often).

    Everything is read, never written: the metadata database read-only, ``/proc`` for the task
    process. Sampling can miss a state that lasts less than one interval; the counts that must be
    exact (deferrals) come from the task log instead (:meth:`deferrals`).
    """

    airflow: AirflowProcesses
    dag_id: str
    task_id: str
    states: list[str] = field(default_factory=list)  # every state seen, consecutive repeats folded
    #: ``(trigger id, created date)`` -> bytes of its stored (encrypted) kwargs.
    trigger_kwargs: dict[tuple[int, str], int] = field(default_factory=dict)
    #: Largest ``task_state_store`` value seen per key, in bytes.
    state_value_max: dict[str, int] = field(default_factory=dict)
    next_kwargs_max: int = 0  # the largest event handed back to the resumed task (``next_kwargs``)
    task_pids: set[int] = field(default_factory=set)
    peak_rss_kb: int = 0  # the largest VmHWM seen of the task processes

    def ti(self) -> dict[str, Any]:
        return self.airflow.task_instance(self.dag_id, self.task_id) or {}

    def sample(self) -> dict[str, Any]:
        ti = self.ti()
        state = ti.get("state")
        if state and (not self.states or self.states[-1] != state):
            self.states.append(state)
        if ti.get("trigger_id") is not None:
            for trigger_id, created, size in self.airflow.query(
                "SELECT id, created_date, length(kwargs) FROM trigger WHERE id = ?", (ti["trigger_id"],)
            ):
                self.trigger_kwargs[(trigger_id, str(created))] = size
        for key, size in self.airflow.query(
            "SELECT key, length(value) FROM task_state_store WHERE dag_id = ? AND task_id = ?",
            (self.dag_id, self.task_id),
        ):
            self.state_value_max[key] = max(size, self.state_value_max.get(key, 0))
        for (size,) in self.airflow.query(
            "SELECT length(next_kwargs) FROM task_instance WHERE dag_id = ? AND task_id = ?",
            (self.dag_id, self.task_id),
        ):
            self.next_kwargs_max = max(self.next_kwargs_max, size or 0)
        if state == "running" and ti.get("id"):
            found = self.airflow.task_process(ti["id"])
            if found:
                self.task_pids.add(found[0])
        for pid in self.task_pids:
            self.peak_rss_kb = max(self.peak_rss_kb, peak_rss_kb(pid))
        self.task_pids = {pid for pid in self.task_pids if alive(pid)}
        return ti

    def logs(self) -> str:
        return "".join(self.airflow.task_log(self.dag_id, self.task_id, attempt) for attempt in range(1, 6))

    def deferrals(self) -> int:
        """How many times the task deferred (so resumed, or will), over all its tries."""
        return self.logs().count(DEFERRED_LINE)


# The emulator's side of a deployment test --------------------------------------------------------
def emulator_jobs(emu: Any, dag_id: str) -> list[str]:
    """Names of the jobs an in-thread emulator created for ``dag_id`` (display names start ``<dag_id>/``)."""
    return sorted(name for name, job in list(emu.emulator.jobs.items()) if job.display_name.startswith(f"{dag_id}/"))


def emulator_polls(emu: Any, job_names: Iterable[str], since: float) -> int:
    """Status GETs of these jobs the emulator answered after ``since`` (epoch seconds)."""
    wanted = tuple(f"/batchPredictionJobs/{name}" for name in job_names)
    return sum(
        1
        for entry in list(emu.emulator.access_log)
        if entry["time"] > since and entry["method"] == "GET" and entry["path_qs"].endswith(wanted)
    )


def end_emulator_jobs(emu: Any, job_names: Iterable[str], state: str = "JOB_STATE_SUCCEEDED") -> None:
    """Let the jobs end now in ``state`` (emulator admin route)."""
    for name in job_names:
        request = urllib.request.Request(
            f"{emu.base_url}/_emulator/jobs/{name}/state",
            data=json.dumps({"state": state}).encode(),
            headers={"Authorization": f"Bearer {emu.emulator.config.api_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
