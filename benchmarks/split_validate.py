"""Figure: split + validate a 1 GB JSONL into 100-request shards, as ``MaaSSplitRequestsOperator`` does.

The input: 100,000 requests of 2 to 18 KB each (prompts with context, some escapes), ~1 GB. Our
side runs ``batch.inputs.shards.write_shards`` (what the operator's ``execute`` calls) in a fresh
interpreter: pass 1 parses every line with full JSON validation and plans the shards, pass 2
copies each shard to its own file, written atomically (fsync + rename). The reference is
``split -l 100`` of the same file into the same kind of directory (no validation, no fsync).
Both start after ``os.sync()``; rounds alternate; medians are compared. Also timed alone, in the
same worker: pass 1 (``plan_shards``), and the fsyncs of the atomic writes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import (
    MB,
    Figure,
    child_env,
    median,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    run_worker,
    worker_result,
)

NAME = "split-validate"
TITLE = "1 GB JSONL split into 100-request shards with full validation"


def input_file(path: Path, requests: int) -> Path:
    """``requests`` valid lines of 2-18 KB (deterministic)."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    block = " ".join(words[i % len(words)] for i in range(4000))  # ~25 KB of text
    with path.open("w") as fh:
        for i in range(requests):
            size = 2000 + (i * 7919) % 16000
            text = f'Request {i}: summarise "the document" below.\nDocument:\n' + block[:size]
            line = {
                "request": {
                    "contents": [{"role": "user", "parts": [{"text": text}]}],
                    "generationConfig": {"temperature": 0.2, "maxOutputTokens": 256},
                }
            }
            fh.write(json.dumps(line) + "\n")
    return path


def run(smoke: bool, workdir: Path) -> Figure:
    requests, rounds = (1000, 1) if smoke else (100_000, 3)
    figure = Figure(NAME, TITLE, "`split -l 100` of the same file (no validation, no fsync), same run")
    source = input_file(workdir / "input.jsonl", requests)
    size = source.stat().st_size
    split_times, ours, plans, fsyncs, growths = [], [], [], [], []
    shards = 0
    for i in range(rounds):
        out = workdir / f"split-{i}"
        out.mkdir()
        os.sync()
        start = time.perf_counter()
        subprocess.run(["split", "-l", "100", "-d", "-a", "5", str(source), str(out / "x")], check=True, timeout=900)
        split_times.append(time.perf_counter() - start)
        shutil.rmtree(out)
        out = workdir / f"ours-{i}"
        os.sync()
        result = run_worker(
            __name__, ["--source", str(source), "--prefix", str(out)], env=child_env(), workdir=workdir, timeout=1800
        )
        shards = result["shards"]
        if sum(p.stat().st_size for p in out.iterdir()) != size:
            raise RuntimeError("the shards do not add up to the input")
        shutil.rmtree(out)
        ours.append(result["seconds"])
        plans.append(result["plan_seconds"])
        fsyncs.append(result["fsync_seconds"])
        growths.append(result["rss_growth_mb"])
    split_s, ours_s = median(split_times), median(ours)
    split_rate, ours_rate = size / MB / split_s, size / MB / ours_s
    figure.add(
        "throughput, validate + write shards (MiB/s)",
        ours_rate,
        split_rate,
        ours_rate / split_rate,
        "ratio >= 0.3",
        ours_rate >= 0.3 * split_rate,
    )
    figure.add("peak RSS growth (MiB)", max(growths), None, None, "flat: < 64 MiB", max(growths) < 64)
    plan_s = median(plans)
    figure.add("throughput, pass 1 alone: validate + plan (MiB/s)", size / MB / plan_s, split_rate, split_s / plan_s)
    fsync_s = median(fsyncs)
    figure.add(
        "throughput less the shards' fsyncs (MiB/s)",
        size / MB / (ours_s - fsync_s),
        split_rate,
        split_s / (ours_s - fsync_s),
    )
    figure.notes.append(
        f"{size / MB:,.0f} MiB, {requests:,} requests -> {shards:,} shards; {rounds} round(s): ours "
        f"{', '.join(f'{t:.1f}' for t in ours)} s (pass 1 {', '.join(f'{t:.1f}' for t in plans)} s, fsyncs "
        f"{', '.join(f'{t:.1f}' for t in fsyncs)} s), split {', '.join(f'{t:.1f}' for t in split_times)} s."
    )
    return figure


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args(argv)
    import logging

    from airflow_provider_maas.batch.inputs.shards import plan_shards, write_shards
    from airflow_provider_maas.storage import open_source, to_path
    from benchmarks.download import time_fsync

    to_path(args.prefix)  # loads the object-storage layer
    with open_source(args.source) as fh:  # and what the first open loads (lineage collector, plugins)
        fh.read(1)
    log = logging.getLogger("benchmarks")
    gc.collect()
    baseline = rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    with open(args.source, "rb") as fh:
        plan_shards(fh)
    plan_seconds = time.perf_counter() - start
    fsyncs = time_fsync()
    start = time.perf_counter()
    uris = write_shards(args.source, args.prefix, max_requests=100, max_bytes=50 * MB, log=log)
    seconds = time.perf_counter() - start
    worker_result(
        {
            "seconds": seconds,
            "plan_seconds": plan_seconds,
            "fsync_seconds": sum(fsyncs),
            "shards": len(uris),
            "rss_growth_mb": peak_rss_mb() - baseline,
        }
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks --only split-validate")
