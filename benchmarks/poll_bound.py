"""Figure: bounded polling. One round of polls of ``MaaSBatchJobsTrigger`` over the running jobs of
the 20,000-request case (200 shards of 100, ``max_active_jobs=100``: 100 jobs running at once),
with ``max_parallel_polls=16`` (the default) against all 100 polls at once (before issue 21).

Two servers: the emulator (0.1 s latency, keep-alive, a 4096-connection backlog: what a local test
sees) and a model of a gateway with a small accept backlog (8 connections served at once, a listen
backlog of 8, one request per connection, 0.1 s per answer): the set-up that, with 100 GETs sent at
the same moment, made a new user's polls time out. Rounds alternate between the two modes; medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

from benchmarks._common import Figure, emulator_process, median, ratio, use_connection

NAME = "poll-bound"
TITLE = "one round of polls over the 100 running jobs of a 20,000-request batch, bounded vs all at once"
LATENCY = 0.1
GATEWAY_WORKERS = 8
GATEWAY_BACKLOG = 8


class SmallBacklogGateway:
    """A server answering ``GET .../batchPredictionJobs/<name>`` with a RUNNING job after ``latency``
    seconds, ``workers`` connections at a time, ``Connection: close``, over a listen backlog of
    ``backlog``: connections beyond it wait for the kernel to retransmit their SYN (1 s, 3 s...)."""

    def __init__(self, *, workers: int, backlog: int, latency: float) -> None:
        self.latency = latency
        self.slots = threading.Semaphore(workers)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped:
            self.slots.acquire()  # accept only with a free worker: the rest stays in the backlog
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            match = re.search(rb"batchPredictionJobs/([^ ?/]+)", data)
            name = match.group(1).decode() if match else "unknown"
            time.sleep(self.latency)
            body = json.dumps({"name": name, "state": "JOB_STATE_RUNNING"}).encode()
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            conn.sendall(head + body)
        except OSError:
            pass
        finally:
            conn.close()
            self.slots.release()

    def close(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


async def _round(names: list[str], limit: int | None) -> dict[str, float]:
    """One round of polls through the trigger's own code; wall seconds and polls that failed."""
    from airflow_provider_maas.batch.polling import OneJobWait
    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger, _JobPoller

    trigger = MaaSBatchJobsTrigger(names, max_parallel_polls=limit or 1)
    trigger.max_parallel_polls = limit  # None: every job at once, as before issue 21
    hook = MaaSHook()
    log = logging.getLogger("benchmarks.poll_bound")
    async with hook.async_session_scope():
        rule = OneJobWait(1)  # one failed poll is one failure (as before issue 21's wait policy)
        pollers = [_JobPoller(hook, name, rule, log) for name in names]
        started = time.monotonic()
        results = await trigger._poll_all(pollers)
        wall = time.monotonic() - started
    failed = sum(1 for r in results if r is not None and r.error)
    return {"wall": wall, "failed": failed}


def _measure(base_url: str, names: list[str], rounds: int) -> dict[str, dict[str, float]]:
    use_connection(base_url)
    out: dict[str, list[dict[str, float]]] = {"bounded": [], "all": []}
    asyncio.run(_round(names[:1], None))  # warm-up: connection lookup, imports
    modes: tuple[tuple[str, int | None], ...] = (("bounded", 16), ("all", None))
    for number in range(rounds):
        for mode, limit in modes if number % 2 == 0 else modes[::-1]:
            out[mode].append(asyncio.run(_round(names, limit)))
            time.sleep(1.0)  # let the server's queues drain between rounds
    return {
        mode: {"wall": median([r["wall"] for r in runs]), "failed": max(r["failed"] for r in runs)}
        for mode, runs in out.items()
    }


def _jobs(count: int) -> list[str]:
    from airflow_provider_maas.hooks.maas import MaaSHook

    hook = MaaSHook()
    file_name = hook.upload_file(_one_request(), "poll-bound.jsonl")["name"]
    return [hook.create_batch_job(file_name, f"poll-bound-{i}")["name"] for i in range(count)]


def _one_request() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="maas-poll-bound-")) / "r.jsonl"
    path.write_text(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}) + "\n")
    return path


def run(smoke: bool, workdir: Path) -> Figure:
    jobs, rounds = (10, 1) if smoke else (100, 5)
    figure = Figure(NAME, TITLE, "the same round with every poll at once (the trigger before issue 21)")
    logging.getLogger("airflow_provider_maas").setLevel(logging.ERROR)
    with emulator_process(workdir, latency=LATENCY, job_duration=86400) as emu:
        use_connection(emu.base_url)
        names = _jobs(jobs)
        local = _measure(emu.base_url, names, rounds)
    gateway = SmallBacklogGateway(workers=GATEWAY_WORKERS, backlog=GATEWAY_BACKLOG, latency=LATENCY)
    try:
        small = _measure(gateway.base_url, names, rounds)
    finally:
        gateway.close()
    for label, result in (("emulator", local), ("small-backlog gateway", small)):
        bounded, every = result["bounded"], result["all"]
        figure.add(
            f"{label}: round of {jobs} polls, median (s)",
            bounded["wall"],
            every["wall"],
            ratio(bounded["wall"], every["wall"]),
            "<= 60 s poll interval" if label == "emulator" else "ratio <= 1",
            bounded["wall"] <= 60 if label == "emulator" else bounded["wall"] <= every["wall"],
        )
        figure.add(f"{label}: polls failed in a round (most)", int(bounded["failed"]), int(every["failed"]))
    figure.notes += [
        f"{jobs} jobs (the running jobs of 20,000 requests at max_active_jobs=100); {rounds} rounds per mode, "
        f"alternating (which goes first too); {LATENCY:g} s per answer; value = max_parallel_polls=16, reference = all at once.",
        f"Gateway model: {GATEWAY_WORKERS} connections served at once, listen backlog {GATEWAY_BACKLOG}, "
        "Connection: close; a SYN beyond the backlog is dropped and retransmitted by the kernel (1 s, 3 s...).",
        "A failed poll is one that still failed after the hook's retries (5 attempts); the trigger tolerates "
        "max_consecutive_poll_errors of them in a row.",
    ]
    return figure
