"""Figure: upload of a 50 MB shard (100 requests) with ``MaaSHook.upload_file`` (MD5 and size checked).

Each round uploads the same file with ``curl --data-binary @FILE`` (the reference: its own
``time_total``) and with the hook in a fresh interpreter (timed around the call, which streams the
file in 1 MiB blocks while hashing it and checks the answer's size and md5Hash). Both include the
emulator (own process, no added latency) receiving, hashing and validating the 100 lines. Peak
RSS growth = VmHWM minus the RSS once the hook and its session are loaded. Rounds alternate;
medians are compared.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import (
    API_KEY,
    MB,
    Figure,
    child_env,
    emulator_process,
    median,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    run_worker,
    use_connection,
    worker_result,
)

NAME = "upload"
TITLE = "50 MB shard through MaaSHook.upload_file (integrity checked)"
REQUESTS = 100


def shard_file(path: Path, total_bytes: int, requests: int = REQUESTS) -> Path:
    """A valid input file of ``requests`` lines and exactly ``total_bytes`` bytes."""
    empty = json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": ""}]}]}})
    per_line = total_bytes // requests
    with path.open("w") as fh:
        for i in range(requests):
            size = per_line + (total_bytes - per_line * requests if i == requests - 1 else 0)
            text = (f"Request {i}. " + "lorem ipsum " * (size // 12 + 1))[: size - len(empty) - 1]
            fh.write(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": text}]}]}}) + "\n")
    if path.stat().st_size != total_bytes:
        raise AssertionError(f"built {path.stat().st_size} bytes, wanted {total_bytes}")
    return path


def run(smoke: bool, workdir: Path) -> Figure:
    size, rounds = (1_000_000, 1) if smoke else (50_000_000, 5)
    figure = Figure(
        NAME,
        TITLE,
        "`curl -sS --data-binary @FILE -H 'Content-Type: application/octet-stream' URL/files?uploadType=media&name=...`",
    )
    source = shard_file(workdir / "shard.jsonl", size)
    with emulator_process(workdir, latency=0, job_duration=1) as emu:
        use_connection(emu.base_url)
        url = f"{emu.base_url}/v1/ai/batch/gemini/bench-endpoint/files?uploadType=media&name=bench-shard.jsonl"
        curl_times, hook_times, growths, md5_times = [], [], [], []
        for _ in range(rounds):
            curl_times.append(curl_upload(url, source, size))
            result = run_worker(
                __name__, ["--source", str(source)], env=child_env(emu.base_url), workdir=workdir, timeout=600
            )
            if result["size"] != size:
                raise RuntimeError(f"the service stored {result['size']} bytes, expected {size}")
            hook_times.append(result["seconds"])
            growths.append(result["rss_growth_mb"])
            md5_times.append(result["md5_seconds"])
    curl_s, hook_s = median(curl_times), median(hook_times)
    curl_rate, hook_rate = size / MB / curl_s, size / MB / hook_s
    figure.add(
        "throughput (MiB/s)", hook_rate, curl_rate, hook_rate / curl_rate, "ratio >= 0.8", hook_rate >= 0.8 * curl_rate
    )
    figure.add("peak RSS growth (MiB)", max(growths), None, None, "< 64 MiB", max(growths) < 64)
    md5_s = median(md5_times)
    figure.add(
        "throughput less the MD5 time (MiB/s; estimate)",
        size / MB / (hook_s - md5_s),
        curl_rate,
        curl_s / (hook_s - md5_s),
    )
    figure.notes.append(
        f"MD5 of the file alone takes {md5_s:.3f} s here (median); the hook computes it in line with sending "
        "(verifying the answer's md5Hash), so it adds to the transfer time."
    )
    figure.notes.append(
        f"{size / MB:.1f} MiB, {REQUESTS} lines; {rounds} round(s); hook {', '.join(f'{t:.3f}' for t in hook_times)} s, "
        f"curl {', '.join(f'{t:.3f}' for t in curl_times)} s (curl reads the whole file into memory before it "
        "starts the clock; the hook streams it)."
    )
    return figure


def curl_upload(url: str, source: Path, size: int) -> float:
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{size_upload}",
            "-H",
            f"Authorization: Bearer {API_KEY}",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            f"@{source}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    seconds, sent = proc.stdout.split()
    if int(float(sent)) != size:
        raise RuntimeError(f"curl sent {sent} bytes, expected {size}")
    return float(seconds)


def _md5_seconds(path: str) -> float:
    """What MD5 alone costs over the file (1 MiB blocks, as the hook hashes while it sends)."""
    import hashlib

    digest = hashlib.md5(usedforsecurity=False)
    start = time.perf_counter()
    with open(path, "rb") as fh:
        while block := fh.read(MB):
            digest.update(block)
    return time.perf_counter() - start


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    args = parser.parse_args(argv)
    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.storage import to_path

    maas = MaaSHook()
    _ = maas.config, maas.session
    to_path(args.source)  # loads the object-storage layer
    gc.collect()
    baseline = rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    result = maas.upload_file(args.source, "bench-shard.jsonl")
    seconds = time.perf_counter() - start
    growth = peak_rss_mb() - baseline
    worker_result(
        {
            "seconds": seconds,
            "size": int(result["size"]),
            "rss_growth_mb": growth,
            "md5_seconds": _md5_seconds(args.source),
        }
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks --only upload")
