"""Figure: building the reuse index of ``reuse_results`` over 1,000,000 earlier results.

The provider's ``AnswerStore.add`` (``airflow_provider_maas.batch.answers.matching``) streams a results file
and indexes each successful answer by the digest of its normalised request (the merge's own
``results.request_digest``), in a temporary SQLite file; then builds the lookup index. Measured in
a fresh interpreter: wall time, CPU time, and peak RSS growth (``VmHWM`` reset once the module is
loaded), at N/2 and N results to show memory does not grow with N (it is bounded by SQLite's page
cache, 16 MiB, plus one 8 MiB read chunk and a batch of rows; the cache fills up on the way to N/2). The reference is the floor of
any Python reader of the same file: ``json.loads`` of every line, nothing kept, in the same kind
of fresh interpreter.

Results lines are written like the service's (request echoed with ``null`` fields, a text answer,
``usageMetadata``), ~680 bytes each; generating the file is not timed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks._common import (
    Figure,
    child_env,
    cpu_seconds,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    run_worker,
    worker_result,
)

NAME = "reuse-index"
TITLE = "reuse_results: index 1,000,000 earlier results (build time, memory)"
MODULE = "benchmarks.reuse_index"


def _write_results(path: Path, count: int) -> None:
    with path.open("wb") as out:
        for i in range(count):
            request = {
                "contents": [
                    {
                        "role": "user",
                        "parts": [{"text": f"question number {i}: summarise item {i} in one line", "file_data": None}],
                    }
                ],
                "generationConfig": {"temperature": 0.2, "maxOutputTokens": 256},
            }
            response = {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": f"answer {i} " * 8}]},
                        "finishReason": "STOP",
                        "avgLogprobs": -0.1,
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 12,
                    "candidatesTokenCount": 20,
                    "thoughtsTokenCount": 5,
                    "totalTokenCount": 37,
                },
                "modelVersion": "gemini-2.5-flash",
            }
            line = {
                "request": request,
                "response": response,
                "processed_time": "2026-01-29T02:15:47.048543+00:00",
                "status": "",
            }
            out.write(json.dumps(line).encode() + b"\n")


def run(smoke: bool, workdir: Path) -> Figure:
    count = 10_000 if smoke else 1_000_000
    figure = Figure(NAME, TITLE, "`json.loads` of every line (nothing kept), same file, fresh interpreter")
    results = workdir / "reuse-results.jsonl"
    small = workdir / "reuse-results-half.jsonl"
    _write_results(results, count)
    _write_results(small, count // 2)
    env = child_env()
    timeout = 60 if smoke else 900
    provider = run_worker(MODULE, ["index", str(results)], env=env, workdir=workdir, timeout=timeout)
    half = run_worker(MODULE, ["index", str(small)], env=env, workdir=workdir, timeout=timeout)
    reference = run_worker(MODULE, ["loads", str(results)], env=env, workdir=workdir, timeout=timeout)
    figure.add(
        f"build time, {count:,} results (s)",
        provider["wall"],
        reference["wall"],
        provider["wall"] / reference["wall"],
        "< 10 s" if not smoke else "",
        provider["wall"] < 10 if not smoke else None,
    )
    figure.add("  CPU time (s)", provider["cpu"], reference["cpu"], provider["cpu"] / reference["cpu"])
    figure.add(
        f"peak RSS growth at {count:,} (MB)",
        provider["rss_growth"],
        half["rss_growth"],
        None,
        "flat: within 8 MB of N/2",
        provider["rss_growth"] - half["rss_growth"] < 8,
    )
    figure.add("temporary index file (MB)", provider["index_mb"])
    figure.notes += [
        f"Results file {results.stat().st_size / 1e6:,.0f} MB. Reference column of the RSS row: the same build over {count // 2:,} results. A dict of the same digests would hold ~150 bytes per result (~150 MB at 1,000,000).",
        f"Of the build: indexing lines {provider['add']:.1f} s, lookup B-tree {provider['btree']:.1f} s.",
        "Wall time on this shared 2-core VM moves with the other processes' load; CPU time is the process's own.",
    ]
    return figure


def _worker(argv: list[str]) -> None:
    mode, path = argv
    if mode == "loads":
        loads = json.loads
        reset_peak_rss()
        start, cpu0 = time.perf_counter(), cpu_seconds()
        with open(path, "rb") as handle:
            for line in handle:
                loads(line)
        worker_result({"wall": time.perf_counter() - start, "cpu": cpu_seconds() - cpu0})
        return
    import os

    from airflow_provider_maas.batch.answers.matching import AnswerStore

    with AnswerStore() as store, open(path, "rb") as handle:
        reset_peak_rss()
        base = rss_mb()
        start, cpu0 = time.perf_counter(), cpu_seconds()
        store.add("earlier", handle, successes_only=True)
        added = time.perf_counter()
        store.build_index()  # as the first match does
        end = time.perf_counter()
        worker_result(
            {
                "wall": end - start,
                "cpu": cpu_seconds() - cpu0,
                "add": added - start,
                "btree": end - added,
                "rss_growth": peak_rss_mb() - base,
                "index_mb": os.path.getsize(store.path) / 1e6,
            }
        )


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2:])
