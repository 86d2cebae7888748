"""Figure: triggerer fan-in. N ``MaaSBatchJobTrigger``s polling in one event loop, as in the triggerer.

Each scenario runs in a fresh worker process (``python -m benchmarks.triggerer_fanin worker``) so
its CPU time, peak RSS and GC pauses are its own; the emulator (50 ms latency) runs in another
process. The parent creates N jobs with ``MaaSHook`` (they would run for a day), the worker starts
the triggers spread over one poll interval (as tasks defer one after another) and runs their
``run()`` generators as tasks, and the parent ends the jobs at staggered times (admin route
``/_emulator/jobs/{job}/state``, between 2 and 3 poll intervals after the start). The worker stops
when every trigger has fired, or at the deadline (5 intervals).

Reference, same run, same worker code: ``ThreadPoolJobTrigger``, the way other providers poll (a
sync ``requests`` client called through ``asyncio.to_thread``, the loop's default thread pool, one
shared pooled session: the most favourable set-up for it), with the same connection lookup and
the same state handling and logging. Also measured: ``BareAiohttpJobTrigger``, one GET per poll on
a shared ``aiohttp`` session and nothing else (the floor for any aiohttp-based trigger).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Figure,
    WorkerError,
    child_env,
    cpu_seconds,
    emulator_admin,
    emulator_process,
    peak_rss_mb,
    percentile,
    ratio,
    reset_peak_rss,
    rss_mb,
    use_connection,
)

NAME = "triggerer-fanin"
TITLE = "N MaaSBatchJobTrigger in one event loop, polling a 50 ms emulator"
LATENCY = 0.05
MODES = ("provider", "reference", "bare")
TICK = 0.025  # event-loop lag probe period
BUCKETS_PER_INTERVAL = 20
STEADY_TO, FINISH_FROM, FINISH_TO, DEADLINE = 2.0, 2.0, 3.0, 5.0  # in poll intervals after the start


# Parent --------------------------------------------------------------------------------------


def sizes_and_interval(smoke: bool) -> tuple[list[int], float]:
    return ([10], 0.4) if smoke else ([1000, 5000], 10.0)


def fan_in_load(smoke: bool) -> float:
    """Peak GET/s the fan-in figure asks of the emulator."""
    sizes, interval = sizes_and_interval(smoke)
    return max(sizes) / interval


def run(smoke: bool, workdir: Path) -> Figure:
    sizes, interval = sizes_and_interval(smoke)
    figure = Figure(
        NAME,
        TITLE,
        "the same polling through a sync `requests` session in `asyncio.to_thread` (default thread pool)",
    )
    with emulator_process(workdir, latency=LATENCY, job_duration=86400, access_log_limit=1000) as emu:
        use_connection(emu.base_url)
        for n in sizes:
            results = {mode: _scenario(mode, n, interval, emu, workdir) for mode in MODES}
            _rows(figure, n, interval, results["provider"], results["reference"], results["bare"])
    figure.notes += [
        f"Each trigger polls every {interval:g} s; triggers start spread over the first interval; jobs end "
        f"between {FINISH_FROM:g} and {FINISH_TO:g} intervals after the start; deadline {DEADLINE:g} intervals.",
        "CPU per poll, steady = worker-process CPU time (user+sys, all threads) from 1 to "
        f"{STEADY_TO:g} intervals (every trigger started, no job ended) / polls completed then. The "
        "whole-run figure also counts creating the triggers and their one connection lookup each.",
        "Lag = how late a 25 ms `asyncio.sleep` ticker in the same loop wakes up (wall clock: includes "
        "time the machine ran other processes). Own lag = each late wake-up capped at the CPU time this "
        "process used meanwhile (GC pauses, busy loop, threads holding the GIL count; preemption does not).",
        "Full GC passes: CPython generation-2 collections in the worker during the run (each scans every "
        "tracked object: Airflow's ~190k plus the triggers' own); each pause shows up as one late tick.",
        "Peak RSS per trigger = (VmHWM - RSS before the first trigger) / N.",
        "The emulator runs in its own process; its CPU use over the run shows whether it limited the polling.",
    ]
    return figure


def _rows(
    figure: Figure, n: int, interval: float, mine: dict[str, Any], ref: dict[str, Any], bare: dict[str, Any]
) -> None:
    p = f"N={n:,}: "

    def row(metric: str, key: str, target: str = "", met: bool | None = None, with_ratio: bool = True) -> None:
        value, reference = mine[key], ref[key]
        figure.add(p + metric, value, reference, ratio(value, reference) if with_ratio else None, target, met)

    cpu_ratio = ratio(mine["steady_cpu_ms_per_poll"], ref["steady_cpu_ms_per_poll"])
    figure.add(
        p + "events delivered",
        f"{mine['delivered']}/{n}",
        f"{ref['delivered']}/{n}",
        ratio(mine["delivered"], ref["delivered"]),
        "all",
        mine["delivered"] == n,
    )
    row("event-loop lag p99 (ms)", "lag_p99_ms", "< 50 ms", mine["lag_p99_ms"] < 50)
    row("own lag p99 (ms; CPU-bounded, see notes)", "own_lag_p99_ms")
    row("lag p99 in the steady interval (ms)", "steady_lag_p99_ms")
    figure.add(
        p + "full GC passes: count / longest (ms)",
        f"{mine['full_gc_count']} / {mine['full_gc_max_ms']:.0f}",
        f"{ref['full_gc_count']} / {ref['full_gc_max_ms']:.0f}",
    )
    row(
        "CPU per poll, steady (ms)",
        "steady_cpu_ms_per_poll",
        "ratio <= 0.20",
        cpu_ratio is not None and cpu_ratio <= 0.2,
    )
    figure.add(
        p + "CPU per poll, steady, vs bare aiohttp floor (ms)",
        mine["steady_cpu_ms_per_poll"],
        bare["steady_cpu_ms_per_poll"],
        ratio(mine["steady_cpu_ms_per_poll"], bare["steady_cpu_ms_per_poll"]),
    )
    row("CPU per poll, whole run (ms)", "cpu_ms_per_poll")
    row("peak RSS per trigger (KiB)", "rss_kib_per_trigger")
    row(f"steady polls/s (keeping up = {n / interval:g})", "steady_polls_per_s")
    row("polls/s, whole run", "polls_per_s")
    row("event delay after the job ended, p99 (s)", "delay_p99_s", with_ratio=False)
    row(
        "emulator CPU (cores; 1 = saturated)",
        "emulator_cores",
        "< 0.9",
        mine["emulator_cores"] < 0.9 and ref["emulator_cores"] < 0.9,
        with_ratio=False,
    )
    figure.notes.append(
        f"N={n:,}: provider {mine['polls']:,} polls ({mine['errors']} failed) in {mine['wall_s']:.0f} s, "
        f"{mine['cpu_s']:.1f} CPU s; reference {ref['polls']:,} polls ({ref['errors']} failed) in "
        f"{ref['wall_s']:.0f} s, {ref['cpu_s']:.1f} CPU s; bare aiohttp floor: lag p99 {bare['lag_p99_ms']:.1f} ms, "
        f"own lag p99 {bare['own_lag_p99_ms']:.1f} ms, {bare['rss_kib_per_trigger']:.1f} KiB per trigger."
    )


def _scenario(mode: str, n: int, interval: float, emu: Any, workdir: Path) -> dict[str, Any]:
    import requests

    from benchmarks._jobs import create_jobs

    names = create_jobs(workdir, n, threads=32)
    # Job i ends at start + offset; end order unrelated to start order.
    span = FINISH_TO - FINISH_FROM
    offsets = [interval * (FINISH_FROM + span * ((i * 7919) % n) / n) for i in range(n)]
    jobs_file = workdir / f"jobs-{mode}-{n}.json"
    jobs_file.write_text(json.dumps({"names": names}))
    ready, out = workdir / f"ready-{mode}-{n}", workdir / f"result-{mode}-{n}.json"
    for path in (ready, out):
        path.unlink(missing_ok=True)
    log = (workdir / f"worker-{mode}-{n}.log").open("w")
    cmd = [sys.executable, "-m", __name__, "worker", "--mode", mode, "--jobs", str(jobs_file)]
    cmd += ["--interval", str(interval), "--ready", str(ready), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=child_env(emu.base_url), stdout=log, stderr=subprocess.STDOUT)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise WorkerError(f"fan-in worker exited {proc.returncode}; see {log.name}")
            time.sleep(0.02)
        t0 = float(ready.read_text())
        emu_cpu0, emu_t0 = emu.cpu_seconds(), time.monotonic()
        ended = [0.0] * n
        session = requests.Session()
        for i in sorted(range(n), key=offsets.__getitem__):
            wait = t0 + offsets[i] - time.time()
            if wait > 0:
                time.sleep(wait)
            emulator_admin(
                emu.base_url, "POST", f"/_emulator/jobs/{names[i]}/state", {"state": "JOB_STATE_SUCCEEDED"}, session
            )
            ended[i] = time.time()
        proc.wait(timeout=DEADLINE * interval + 120)
        emu_cores = (emu.cpu_seconds() - emu_cpu0) / (time.monotonic() - emu_t0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    if proc.returncode != 0 or not out.exists():
        raise WorkerError(f"fan-in worker exited {proc.returncode}; see {log.name}")
    result = json.loads(out.read_text())
    delays = [t - ended[int(i)] for i, t in result.pop("event_times").items()]
    buckets = result.pop("buckets")
    steady_polls = sum(buckets[BUCKETS_PER_INTERVAL : int(BUCKETS_PER_INTERVAL * STEADY_TO)])
    steady_seconds = interval * (STEADY_TO - 1)
    result.update(
        steady_polls_per_s=steady_polls / steady_seconds,
        steady_cpu_ms_per_poll=1000 * result["steady_cpu_s"] / max(1, steady_polls) if result["steady_cpu_s"] else None,
        delay_p99_s=percentile(delays, 99),
        emulator_cores=emu_cores,
        cpu_ms_per_poll=1000 * result["cpu_s"] / max(1, result["polls"]),
        polls_per_s=result["polls"] / result["wall_s"],
        rss_kib_per_trigger=1024 * result["rss_growth_mb"] / n,
    )
    return result


# Worker --------------------------------------------------------------------------------------


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    # Everything either mode needs is imported before the baseline.
    import aiohttp  # noqa: F401
    import requests  # noqa: F401

    import airflow_provider_maas.client.transport  # noqa: F401
    from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger  # noqa: F401

    result = asyncio.run(_fan_in(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


class _Stats:
    def __init__(self, start: float, bucket: float) -> None:
        self.polls = 0
        self.errors = 0
        self.start = start
        self.bucket = bucket
        self.buckets = [0] * int(BUCKETS_PER_INTERVAL * (DEADLINE + 2))

    def poll_done(self) -> None:
        self.polls += 1
        index = int((time.perf_counter() - self.start) / self.bucket)
        if index < len(self.buckets):
            self.buckets[index] += 1


def _count_provider_polls(stats: _Stats) -> None:
    from airflow_provider_maas.hooks.maas import MaaSHook

    original = MaaSHook.aget_batch_job

    async def counted(self: Any, job_name: str) -> dict[str, Any]:
        try:
            job = await original(self, job_name)
        except Exception:
            stats.errors += 1
            raise
        stats.poll_done()
        return job

    MaaSHook.aget_batch_job = counted  # type: ignore[method-assign]


async def _fan_in(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger

    names = json.loads(Path(args.jobs).read_text())["names"]
    n, interval = len(names), args.interval
    gc.collect()
    baseline = rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    stats = _Stats(start, interval / BUCKETS_PER_INTERVAL)
    if args.mode == "provider":
        _count_provider_polls(stats)

        def make(name: str) -> Any:
            # Polls at once, as the reference triggers do (and as it did before its first-poll delay,
            # which only removes each trigger's first poll): the figures stay comparable.
            return MaaSBatchJobTrigger(job_name=name, poll_interval=interval, first_poll_after=0)
    else:
        from benchmarks._reference import BareAiohttpJobTrigger, ThreadPoolJobTrigger

        reference = ThreadPoolJobTrigger if args.mode == "reference" else BareAiohttpJobTrigger

        def make(name: str) -> Any:
            return reference(job_name=name, poll_interval=interval, stats=stats)

    samples: list[tuple[float, float, float]] = []  # (seconds since start, lag, process CPU seconds)

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            samples.append((now - start, now - before - TICK, cpu_seconds()))

    event_times: dict[int, float] = {}
    statuses: dict[str, int] = {}

    async def run_one(i: int, trigger: Any) -> None:
        events = trigger.run()
        try:
            event = await events.__anext__()
        finally:
            await events.aclose()
        status = event.payload.get("status", "?")
        statuses[status] = statuses.get(status, 0) + 1
        if status == "success":
            event_times[i] = time.time()

    full_gcs: list[float] = []  # seconds each full (generation 2) collection took
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                full_gcs.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)
    cpu0 = cpu_seconds()
    wall0 = time.time()
    tmp = args.ready + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(repr(wall0))
    os.replace(tmp, args.ready)
    probe = asyncio.create_task(ticker())
    tasks: list[asyncio.Task[None]] = []
    for i, name in enumerate(names):
        due = start + i * interval / n
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run_one(i, make(name))))
    remaining = start + DEADLINE * interval - time.perf_counter()
    _done, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining))
    cpu = cpu_seconds() - cpu0
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    gc.callbacks.remove(on_gc)
    probe.cancel()
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, probe, return_exceptions=True)
    if args.mode == "provider":
        from airflow_provider_maas.client.sessions import close_shared_sessions

        await close_shared_sessions()
    else:
        from benchmarks._reference import close_bare_session

        await close_bare_session()
    lags = [lag for _, lag, _ in samples]
    # Lag the process caused itself: a late wake-up counts only as far as this process used CPU
    # meanwhile (a GC pause, a busy loop, threads holding the GIL), not while the machine ran others.
    own_lags = [min(lag, cpu - prev[2]) for prev, (_, lag, cpu) in itertools.pairwise(samples)]
    steady = [(t, c) for t, _, c in samples if interval <= t <= STEADY_TO * interval]
    steady_lags = [lag for t, lag, _ in samples if interval <= t <= STEADY_TO * interval]
    steady_cpu = steady[-1][1] - steady[0][1] if len(steady) > 1 else None
    steady_span = (steady[0][0], steady[-1][0]) if len(steady) > 1 else (0.0, 0.0)
    return {
        "polls": stats.polls,
        "steady_cpu_s": steady_cpu,
        "steady_span": steady_span,
        "own_lag_p99_ms": 1000 * percentile(own_lags, 99),
        "steady_lag_p99_ms": 1000 * percentile(steady_lags, 99),
        "full_gc_count": len(full_gcs),
        "full_gc_max_ms": 1000 * max(full_gcs, default=0.0),
        "full_gc_total_s": sum(full_gcs),
        "errors": stats.errors,
        "delivered": len(event_times),
        "statuses": statuses,
        "cpu_s": cpu,
        "wall_s": wall,
        "lag_p50_ms": 1000 * percentile(lags, 50),
        "lag_p99_ms": 1000 * percentile(lags, 99),
        "lag_max_ms": 1000 * max(lags, default=0.0),
        "rss_growth_mb": peak - baseline,
        "baseline_mb": baseline,
        "event_times": event_times,
        "buckets": stats.buckets,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.triggerer_fanin worker ... (or: python -m benchmarks --only triggerer-fanin)")
