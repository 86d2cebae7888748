"""Figure: the emulator's own ceiling, so the other figures are known not to measure it instead.

The emulator (its own process, 50 ms latency as in the fan-in figure) is hammered with GET-job
requests from this process through one ``aiohttp`` session with many requests in flight. The
ceiling is requests served per second of the EMULATOR's CPU time, i.e. what it serves on one
core, whatever the client could send. Reference: the peak load of the fan-in figure
(N triggers / poll interval).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from benchmarks._common import API_KEY, Figure, emulator_process, use_connection

NAME = "emulator-ceiling"
TITLE = "GET-job requests the emulator serves per second on one core"
LATENCY = 0.05


def run(smoke: bool, workdir: Path) -> Figure:
    from benchmarks._jobs import create_jobs
    from benchmarks.triggerer_fanin import fan_in_load

    duration, in_flight = (1.0, 64) if smoke else (6.0, 400)
    needed = fan_in_load(smoke)
    figure = Figure(NAME, TITLE, f"the fan-in figure's peak load ({needed:g} GET/s: N triggers / poll interval)")
    with emulator_process(workdir, latency=LATENCY, job_duration=86400, access_log_limit=1000) as emu:
        use_connection(emu.base_url)
        (job,) = create_jobs(workdir, 1)
        url = f"{emu.base_url}/v1/ai/batch/gemini/bench-endpoint/batchPredictionJobs/{job}"
        cpu0 = emu.cpu_seconds()
        served, errors, wall = asyncio.run(_hammer(url, duration, in_flight))
        emu_cpu = emu.cpu_seconds() - cpu0
    ceiling = served / emu_cpu if emu_cpu else float("inf")
    figure.add(
        "ceiling: GET/s per emulator core",
        ceiling,
        needed,
        ceiling / needed,
        "ratio >= 2 (headroom)",
        ceiling >= 2 * needed,
    )
    figure.add("achieved GET/s (client in this process)", served / wall, needed, served / wall / needed)
    figure.add("emulator CPU per GET (ms)", 1000 * emu_cpu / max(1, served))
    figure.add("emulator CPU use during the test (cores)", emu_cpu / wall)
    figure.notes.append(
        f"{served:,} answers ({errors} errors) in {wall:.1f} s with {in_flight} requests in flight, "
        f"{LATENCY * 1000:g} ms emulator latency."
    )
    return figure


async def _hammer(url: str, duration: float, in_flight: int) -> tuple[int, int, float]:
    import aiohttp

    headers = {"Authorization": f"Bearer {API_KEY}"}
    served = errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def loop() -> None:
            nonlocal served, errors
            while time.perf_counter() < deadline:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        served += 1
                    else:
                        errors += 1

        await asyncio.gather(*(loop() for _ in range(in_flight)))
        return served, errors, time.perf_counter() - start
