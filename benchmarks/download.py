"""Figure: download of a 1 GB results file with ``MaaSHook.download_results`` (CRC32C and size checked).

The emulator (own process, no added latency) makes a job whose results are ~1 GB (100 requests,
10 MiB of filler text per response). Each round downloads them with ``curl -o`` (the reference:
its own ``time_total``) and with the hook in a fresh interpreter (timed around the call, which
includes the ``alt=json`` metadata call, the CRC32C check and the fsync + rename of the atomic
write). Peak RSS growth = VmHWM minus the RSS once the hook, its session and the storage layer are
loaded. Rounds alternate, each after ``os.sync()``; the median of each side is compared.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import (
    API_KEY,
    MB,
    Figure,
    child_env,
    median,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    run_worker,
    use_connection,
    worker_result,
)

NAME = "download"
TITLE = "1 GB results file through MaaSHook.download_results (integrity checked)"
REQUESTS = 100


def run(smoke: bool, workdir: Path) -> Figure:
    from benchmarks._common import emulator_process
    from benchmarks._jobs import tiny_requests_file

    padding, rounds = (100 * 1024, 1) if smoke else (10 * MB, 3)
    figure = Figure(NAME, TITLE, "`curl -sS -o FILE -H 'Authorization: Bearer KEY' URL?alt=media`, same URL, same run")
    with emulator_process(workdir, latency=0, job_duration=0.2, result_padding_bytes=padding) as emu:
        use_connection(emu.base_url)
        job, size, url = _results_job(tiny_requests_file(workdir / "requests.jsonl", REQUESTS))
        curl_times, hook_times, growths, fsync_times, hook_fsyncs = [], [], [], [], []
        for i in range(rounds):
            dest = workdir / f"curl-{i}.jsonl"
            os.sync()  # start each transfer without the previous one's dirty pages being written back
            curl_times.append(curl_download(url, dest, size))
            fsync_times.append(_fsync_seconds(dest))
            dest.unlink()
            dest = workdir / f"hook-{i}.jsonl"
            os.sync()
            result = run_worker(
                __name__, ["--job", job, "--dest", str(dest)], env=child_env(emu.base_url), workdir=workdir, timeout=600
            )
            if result["bytes"] != size or dest.stat().st_size != size:
                raise RuntimeError(f"the hook downloaded {result['bytes']} bytes, expected {size}")
            dest.unlink()
            hook_times.append(result["seconds"])
            hook_fsyncs.append(result["fsync_seconds"])
            growths.append(result["rss_growth_mb"])
    curl_s, hook_s = median(curl_times), median(hook_times)
    curl_rate, hook_rate = size / MB / curl_s, size / MB / hook_s
    figure.add(
        "throughput (MiB/s)", hook_rate, curl_rate, hook_rate / curl_rate, "ratio >= 0.8", hook_rate >= 0.8 * curl_rate
    )
    figure.add("peak RSS growth (MiB)", max(growths), None, None, "< 64 MiB", max(growths) < 64)
    with_fsync = curl_s + median(fsync_times)
    figure.add(
        "throughput vs curl + fsync of its file (MiB/s)",
        hook_rate,
        size / MB / with_fsync,
        with_fsync / hook_s,
    )
    streaming = median([t - f for t, f in zip(hook_times, hook_fsyncs, strict=True)])
    figure.add(
        "throughput without the hook's final fsync (MiB/s)",
        size / MB / streaming,
        curl_rate,
        curl_s / streaming,
    )
    figure.notes.append(
        f"{size / MB:,.0f} MiB; {rounds} round(s); hook {', '.join(f'{t:.2f}' for t in hook_times)} s, curl "
        f"{', '.join(f'{t:.2f}' for t in curl_times)} s; fsync of curl's file afterwards "
        f"{', '.join(f'{t:.2f}' for t in fsync_times)} s (the hook fsyncs before its atomic rename; curl does not); the hook's own fsync took "
        f"{', '.join(f'{t:.2f}' for t in hook_fsyncs)} s."
    )
    return figure


def _results_job(requests_file: Path) -> tuple[str, int, str]:
    """Upload, create, wait; return the job name, its results size and the alt=media URL."""
    from benchmarks._jobs import hook

    maas = hook()
    name = maas.upload_file(requests_file, requests_file.name)["name"]
    job = maas.create_batch_job(name, "bench-download")["name"]
    maas.wait_for_batch_job(job, poll_interval=0.2, timeout=120)
    size = int(maas.get_results_metadata(job)["size"])  # waits until the emulator has written them
    return job, size, maas.config.content_url(job) + "?alt=media"


def curl_download(url: str, dest: Path, size: int) -> float:
    """curl's own transfer time (``time_total``) of ``url`` into ``dest``."""
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            str(dest),
            "-H",
            f"Authorization: Bearer {API_KEY}",
            "-w",
            "%{time_total}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    if dest.stat().st_size != size:
        raise RuntimeError(f"curl downloaded {dest.stat().st_size} bytes, expected {size}")
    return float(proc.stdout.strip())


def _fsync_seconds(path: Path) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def time_fsync() -> list[float]:
    """Time every ``os.fsync`` of this process from now on (it still syncs); returns the list filled in."""
    spent: list[float] = []
    real = os.fsync

    def timed(fd: int) -> None:
        began = time.perf_counter()
        try:
            real(fd)
        finally:
            spent.append(time.perf_counter() - began)

    os.fsync = timed
    return spent


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--dest", required=True)
    args = parser.parse_args(argv)
    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.storage import to_path

    maas = MaaSHook()
    _ = maas.config, maas.session
    to_path(args.dest)  # loads the object-storage layer
    fsync_seconds = time_fsync()
    gc.collect()
    baseline = rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    meta = maas.download_results(args.job, args.dest)
    seconds = time.perf_counter() - start
    worker_result(
        {
            "seconds": seconds,
            "fsync_seconds": sum(fsync_seconds),
            "bytes": int(meta["size"]),
            "rss_growth_mb": peak_rss_mb() - baseline,
        }
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks --only download")
