"""Shared plumbing of the benchmarks: result tables, memory and CPU readings, emulator subprocesses.

Nothing here imports Airflow; figures import what they need themselves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

API_KEY = "bench-key"
ENDPOINT = "bench-endpoint"
MB = 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


# Results ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a figure's table.

    :param metric: What is measured.
    :param value: The provider's figure (a number, or text).
    :param reference: The same quantity for the reference tool, measured in the same run.
    :param ratio: ``value / reference`` (or as the figure defines it); None if not meaningful.
    :param target: The target, in words (``"<= 0.20"``, ``"< 50 ms"``); ``""`` if none.
    :param met: True/False when there is a target, None otherwise.
    """

    metric: str
    value: Any
    reference: Any = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass
class Figure:
    name: str
    title: str
    reference: str  # what the reference is, in words
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.1 or magnitude == 0:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def render(figure: Figure) -> str:
    """A figure as a Markdown table (readable in a terminal, pasteable into the README)."""
    lines = [f"### {figure.name}: {figure.title}", "", f"Reference: {figure.reference}", ""]
    if figure.error:
        lines += [f"**FAILED**: {figure.error}", ""]
    if figure.rows:
        lines.append("| metric | value | reference | ratio | target | met |")
        lines.append("|---|---:|---:|---:|---|---|")
        for row in figure.rows:
            met = "-" if row.met is None else ("met" if row.met else "NOT met")
            lines.append(
                f"| {row.metric} | {fmt(row.value)} | {fmt(row.reference)} | {fmt(row.ratio)} | {row.target or '-'} | {met} |"
            )
        lines.append("")
    lines += [f"- {note}" for note in figure.notes]
    lines.append(f"- ({figure.seconds:.0f} s)")
    return "\n".join(lines) + "\n"


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# Memory and CPU --------------------------------------------------------------------------------


def proc_status_kb(key: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_mb() -> float:
    return proc_status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    return proc_status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs``); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# Subprocesses ----------------------------------------------------------------------------------


def connection_json(base_url: str) -> str:
    return json.dumps(
        {"conn_type": "maas", "host": base_url, "password": API_KEY, "extra": {"endpoint": ENDPOINT}},
        separators=(",", ":"),
    )


def child_env(base_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, the project importable, the connection set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if base_url is not None:
        env["AIRFLOW_CONN_MAAS_DEFAULT"] = connection_json(base_url)
    env.update(extra)
    return env


class WorkerError(RuntimeError):
    pass


def run_worker(module: str, args: list[str], *, env: dict[str, str], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``python -m MODULE worker ARGS`` in a fresh interpreter; return the JSON of its last stdout line."""
    log = workdir / f"{module.rsplit('.', 1)[-1]}-worker.log"
    with log.open("w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", module, "worker", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=timeout,
            cwd=str(ROOT),
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text(errors="replace")[-2000:]
        raise WorkerError(f"{module} worker exited {proc.returncode}; stderr tail:\n{tail}")
    return json.loads(lines[-1])


def worker_result(payload: dict[str, Any]) -> None:
    """What a worker prints last (read by :func:`run_worker`)."""
    print(json.dumps(payload), flush=True)


def measured(work: Callable[[], dict[str, Any] | None]) -> None:
    """Run ``work`` in this worker from a reset peak RSS, then :func:`worker_result` its ``wall`` and
    ``cpu`` time, its ``rss_growth`` (peak over the RSS it started from) and the process's ``peak``,
    with what ``work`` returns. Import what ``work`` needs first: a module loaded inside it counts."""
    reset_peak_rss()
    base = rss_mb()
    start, cpu0 = time.perf_counter(), cpu_seconds()
    payload = work() or {}
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    worker_result({"wall": wall, "cpu": cpu, "rss_growth": peak_rss_mb() - base, "peak": peak_rss_mb(), **payload})


@dataclass
class EmulatorProcess:
    base_url: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)


@contextlib.contextmanager
def emulator_process(workdir: Path, **settings: Any) -> Any:
    """Run ``python -m airflow_provider_maas.emulator`` on 127.0.0.1 in its own process (own CPU).

    ``settings`` are CLI options (``latency=0.05`` -> ``--latency 0.05``; ``True`` -> a bare flag).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"emulator-{time.monotonic_ns()}.url"
    args = [
        sys.executable,
        "-m",
        "airflow_provider_maas.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--api-key",
        API_KEY,
        "--endpoint",
        ENDPOINT,
    ]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    log = (workdir / "emulator.log").open("a")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text().strip()):
            if proc.poll() is not None:
                raise WorkerError(f"the emulator exited early ({proc.returncode}); see {workdir / 'emulator.log'}")
            if time.monotonic() > deadline:
                raise WorkerError("the emulator did not start within 60 s")
            time.sleep(0.05)
        base_url = ready.read_text().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise WorkerError(f"the emulator is not on loopback: {base_url}")
        yield EmulatorProcess(base_url, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def use_connection(base_url: str) -> None:
    """Point ``maas_default`` of THIS process at ``base_url`` (before the hook looks it up)."""
    os.environ["AIRFLOW_CONN_MAAS_DEFAULT"] = connection_json(base_url)


def emulator_admin(base_url: str, method: str, path: str, body: Any = None, session: Any = None) -> Any:
    """Call an admin route (``/_emulator/...``) of an emulator."""
    import requests

    client = session or requests
    response = client.request(
        method, base_url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    response.raise_for_status()
    return response.json()
