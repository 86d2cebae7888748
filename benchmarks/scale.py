"""Figure: one deferrable ``MaaSBatchPredictionOperator`` task over a big input, in a real deployment.

The benchmark starts ``airflow api-server`` (execution API), ``scheduler`` (LocalExecutor),
``dag-processor`` and ``triggerer`` on a throwaway AIRFLOW_HOME (sqlite), and the emulator in its
own process (``--latency``, ``--job-duration``), then lets ``tests/dags/maas_scale.py`` run one task
over N generated requests (100 per shard). Value: the task's wall time (first to last line of its
logs) against the service-bound ideal, ``ceil(shards / max_active_jobs) x job duration``: what the
service itself imposes, whoever the client is.

Also: resumes (deferrals), what the task keeps in ``task_state_store`` (writes counted in the
execution API's access log, values sampled from the metadata database), trigger rows (the kwargs of
each trigger, the largest event handed back), the task process's peak RSS and the emulator's CPU.

Sizes: 100,000 requests (1,000 shards, ``max_active_jobs=200``, 5 s jobs, 0.1 s API latency);
with ``MAAS_BENCH_SCALE_1M=1`` also (``=only``: only) 1,000,000 requests (10,000 shards, ``max_active_jobs=1000``,
30 s jobs). Each case stops at its deadline, 10 x the ideal + 300 s or ``MAAS_BENCH_SCALE_DEADLINE``
seconds (reported, never waited out).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import ROOT, Figure, connection_json, emulator_admin, emulator_process

NAME = "scale"
TITLE = "one deferrable batch task over 100,000 (and 1,000,000) requests in a real deployment"
DAG_ID, TASK = "maas_scale", "predict"
DAG_FILE = ROOT / "tests" / "dags" / "maas_scale.py"
STATE_LIMIT = 65_535  # [workers] max_value_storage_bytes, Airflow's default


@dataclass(frozen=True)
class Case:
    requests: int
    per_file: int
    max_active_jobs: int
    job_seconds: float
    latency: float
    wall_target: float | None  # wall / ideal at most this
    poll_interval: float
    rss_target_mb: float | None = None

    @property
    def shards(self) -> int:
        return math.ceil(self.requests / self.per_file)

    @property
    def ideal(self) -> float:
        return math.ceil(self.shards / self.max_active_jobs) * self.job_seconds

    @property
    def max_resumes(self) -> int:
        return 2 * self.shards // self.max_active_jobs + 3

    @property
    def label(self) -> str:
        return f"{self.requests:,}"


def _cases(smoke: bool) -> list[Case]:
    if smoke:
        return [Case(300, 10, 10, 1.0, 0.0, None, 1.0)]
    # Polls every 10 s: a trigger firing sooner after its deferral than the scheduler processes the
    # deferring workload's exit fails the try on Airflow 3.3 (see benchmarks/README.md).
    cases = [Case(100_000, 100, 200, 5.0, 0.1, 1.5, 10.0)]
    million = os.environ.get("MAAS_BENCH_SCALE_1M", "")
    if million in {"1", "only"}:
        cases = cases if million == "1" else []
        cases.append(Case(1_000_000, 100, 1000, 30.0, 0.1, 2.0, 10.0, rss_target_mb=500))
    return cases


def run(smoke: bool, workdir: Path) -> Figure:
    figure = Figure(NAME, TITLE, "the service-bound ideal, ceil(shards / max_active_jobs) x job duration")
    for case in _cases(smoke):
        _run_case(case, workdir / f"n{case.requests}", figure)
    figure.notes.append(
        "Wall time: first to last line of the task's logs (all tries). Task state writes: PUTs to the "
        "execution API's store route; value sizes sampled every 0.25 s from the metadata database, as are "
        "trigger kwargs (stored encrypted) and the task process's VmHWM (a peak in its last 0.25 s can be missed)."
    )
    return figure


def _write_requests(path: Path, count: int) -> None:
    with path.open("w") as handle:
        for i in range(count):
            text = f"Request {i}: write one sentence about the number {i}."
            handle.write(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": text}]}]}}) + "\n")


def _log_span(text: str) -> float:
    """Seconds from the first to the last timestamped line of task logs."""
    from datetime import datetime

    stamps = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                stamps.append(datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")))
            except (ValueError, KeyError):
                continue
    return (max(stamps) - min(stamps)).total_seconds() if stamps else math.nan


def _journal_bytes(folder: Path) -> int:
    """Bytes of the batch state objects beside the destination now: manifest, journal, snapshots
    (not the downloaded parts nor the combined results)."""
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "parts"]
        if ".maas" not in root:
            continue
        for name in files:
            if name == "manifest.json" or name.startswith("snapshot-") or os.path.basename(root) == "journal":
                with contextlib.suppress(OSError):  # compaction removes objects as we look
                    total += os.path.getsize(os.path.join(root, name))
    return total


def _run_case(case: Case, workdir: Path, figure: Figure) -> None:
    from tests.airflow_processes import AirflowProcesses, DeferredTaskWatch, wait_for

    work = workdir / "work"
    dags = workdir / "dags"
    for folder in (work, dags):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DAG_FILE, dags)
    _write_requests(work / "requests.jsonl", case.requests)
    deadline = float(os.environ.get("MAAS_BENCH_SCALE_DEADLINE") or 10 * case.ideal + 300)
    settings = {"job_duration": case.job_seconds, "latency": case.latency, "access_log_limit": 1000}
    with emulator_process(workdir / "emulator", **settings) as emu:
        airflow = AirflowProcesses(
            workdir / "airflow",
            dags,
            {
                f"AIRFLOW_CONN_{DAG_ID.upper()}": connection_json(emu.base_url),
                "MAAS_SCALE_DIR": str(work),
                "MAAS_SCALE_DAGS": DAG_ID,
                "MAAS_SCALE_MAX_ACTIVE_JOBS": str(case.max_active_jobs),
                "MAAS_SCALE_REQUESTS_PER_FILE": str(case.per_file),
                "MAAS_SCALE_POLL_INTERVAL": os.environ.get("MAAS_BENCH_SCALE_POLL") or str(case.poll_interval),
                "MAAS_SCALE_PARALLEL_TRANSFERS": os.environ.get("MAAS_BENCH_SCALE_TRANSFERS", ""),
                "MAAS_SCALE_DEFERRABLE": os.environ.get("MAAS_BENCH_SCALE_DEFERRABLE", "1"),
                "PYTHONPATH": str(ROOT),
            },
        )
        airflow.home.mkdir(parents=True, exist_ok=True)
        watch = DeferredTaskWatch(airflow, DAG_ID, TASK)
        with airflow:
            airflow.start_deployment(300)
            cpu_before = emu.cpu_seconds()
            started = time.monotonic()

            journal_peak = 0

            def ended() -> bool:
                nonlocal journal_peak
                airflow.check_running()
                journal_peak = max(journal_peak, _journal_bytes(work / DAG_ID))
                return watch.sample().get("state") in {"success", "failed"}

            try:
                wait_for(f"the {case.label}-request task to end", ended, deadline, interval=0.25)
                finished = True
            except AssertionError:
                finished = False
            emulator_cpu = emu.cpu_seconds() - cpu_before
            elapsed = time.monotonic() - started
            created = emulator_admin(emu.base_url, "GET", "/_emulator/state")["jobs_created"]
            api_log = "\n".join(p.read_text(errors="replace") for p in airflow.home.glob("api-server.*.log"))
            state_writes = api_log.count("method=PUT path=/execution/store/")
            final = watch.ti()
    logs = watch.logs()
    wall = _log_span(logs)
    results = work / DAG_ID / "results.jsonl"
    lines = sum(1 for _ in results.open("rb")) if results.exists() else 0
    ok = finished and final.get("state") == "success" and lines == case.requests
    n = case.label
    figure.add(
        f"{n}: task ended", final.get("state") if finished else f"not within {deadline:.0f} s", target="success", met=ok
    )
    figure.add(f"{n}: results in the output file", lines, case.requests, target="all", met=lines == case.requests)
    figure.add(
        f"{n}: jobs created (one per shard)", created, case.shards, target="= shards", met=created == case.shards
    )
    figure.add(
        f"{n}: wall time vs service-bound ideal (s)",
        wall,
        case.ideal,
        wall / case.ideal,
        target=f"ratio <= {case.wall_target}" if case.wall_target else "",
        met=(ok and wall / case.ideal <= case.wall_target) if case.wall_target else None,
    )
    resumes = watch.deferrals()
    figure.add(f"{n}: resumes (deferrals)", resumes, target=f"<= {case.max_resumes}", met=resumes <= case.max_resumes)
    largest = max(watch.state_value_max.values(), default=0)
    figure.add(f"{n}: task state: largest value (bytes)", largest, target="<= 65,535", met=largest <= STATE_LIMIT)
    figure.add(f"{n}: task state: writes / bytes written (<=)", f"{state_writes:,} / {state_writes * largest:,}")
    figure.add(f"{n}: batch state objects beside the destination, peak (bytes)", journal_peak)
    triggers = watch.trigger_kwargs.values()
    figure.add(
        f"{n}: trigger rows: count / largest kwargs / total (bytes)",
        f"{len(triggers):,} / {max(triggers, default=0):,} / {sum(triggers):,}",
    )
    figure.add(f"{n}: largest event handed back to the task (bytes)", watch.next_kwargs_max)
    rss = watch.peak_rss_kb / 1024
    figure.add(
        f"{n}: task process peak RSS (MB)",
        rss,
        target=f"< {case.rss_target_mb:g} MB" if case.rss_target_mb else "",
        met=rss < case.rss_target_mb if case.rss_target_mb else None,
    )
    figure.add(
        f"{n}: emulator CPU (cores; 1 = saturated)",
        emulator_cpu / elapsed,
        target="< 0.9",
        met=emulator_cpu / elapsed < 0.9,
    )
    transfers = os.environ.get("MAAS_BENCH_SCALE_TRANSFERS") or "default"
    poll = os.environ.get("MAAS_BENCH_SCALE_POLL") or f"{case.poll_interval:g}"
    mode = "deferrable" if os.environ.get("MAAS_BENCH_SCALE_DEFERRABLE", "1") != "0" else "NOT deferrable"
    figure.notes.append(
        f"{n} requests ({mode}): {case.shards:,} shards of {case.per_file}, max_active_jobs={case.max_active_jobs}, jobs of "
        f"{case.job_seconds:g} s, API latency {case.latency:g} s, max_parallel_transfers={transfers}, poll interval {poll} s; ideal {case.ideal:g} s. Task states seen: "
        f"{' > '.join(watch.states)}; try {final.get('try_number')}."
    )
    if not ok:
        figure.notes.append(f"{n}: deployment at the end:\n" + airflow.diagnose([DAG_ID], TASK)[-3000:])
