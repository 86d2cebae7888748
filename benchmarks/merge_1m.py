"""Figure: the batch operator's final merge at 1,000,000 requests (10,000 shards of 100).

Input: 1,000,000 short requests; each shard's results file answers its 100 requests in reverse
order, as the service echoes them (``null`` fields added), 1 in 50 failed. Each variant runs in a
fresh interpreter on the same files: ``merge_shard_results`` (what the batch operator does: one
shard's results indexed at a time) against the merge it replaced, the shard results concatenated
into one file and merged with ``merge_results`` (one index of every result line). Measured: wall
time and peak RSS growth of the worker over its start (imports done).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from benchmarks._common import Figure, child_env, peak_rss_mb, reset_peak_rss, rss_mb, run_worker, worker_result

NAME = "merge-1m"
TITLE = "Final merge of 1,000,000 requests in 10,000 shards: streaming per shard vs one index"
PER_SHARD = 100


def write_inputs(workdir: Path, requests: int) -> tuple[Path, Path]:
    """The requests file and one results file per shard (in ``parts/``)."""
    source = workdir / "requests.jsonl"
    parts = workdir / "parts"
    parts.mkdir(exist_ok=True)
    with source.open("w") as fh:
        for first in range(0, requests, PER_SHARD):
            lines = []
            for n in range(first, min(first + PER_SHARD, requests)):
                text = f"Question {n}: what is {n} squared?"
                fh.write(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": text}]}]}}) + "\n")
                echoed = {"contents": [{"parts": [{"text": text, "file_data": None}], "role": "user"}]}
                failed = n % 50 == 0
                result: dict = {"request": echoed, "status": "INTERNAL: boom" if failed else ""}
                if not failed:
                    result["response"] = {
                        "candidates": [{"content": {"parts": [{"text": f"{n * n}"}], "role": "model"}}],
                        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15},
                    }
                lines.append(json.dumps(result) + "\n")
            (parts / f"{first // PER_SHARD:06d}.jsonl").write_text("".join(reversed(lines)))
    return source, parts


def run(smoke: bool, workdir: Path) -> Figure:
    requests = 2_000 if smoke else 1_000_000
    figure = Figure(NAME, TITLE, "the merge it replaced: shard results concatenated, then one `merge_results`")
    started = time.perf_counter()
    source, parts = write_inputs(workdir, requests)
    made = time.perf_counter() - started
    results = {}
    for variant in ("streaming", "one-index"):
        results[variant] = run_worker(
            __name__,
            ["--variant", variant, "--source", str(source), "--parts", str(parts), "--out", str(workdir / variant)],
            env=child_env(),
            workdir=workdir,
            timeout=3600,
        )
    ours, before = results["streaming"], results["one-index"]
    if ours["summary"] != before["summary"]:
        raise RuntimeError(f"the merges differ: {ours['summary']} != {before['summary']}")
    if ours["summary"]["requests"] != requests:
        raise RuntimeError(f"{ours['summary']['requests']} requests merged, {requests} expected")
    growth, growth_before = ours["rss_growth_mb"], before["rss_growth_mb"]
    figure.add("peak RSS growth (MiB)", growth, growth_before, growth / growth_before, "flat: < 64 MiB", growth < 64)
    figure.add("wall time (s)", ours["seconds"], before["seconds"], ours["seconds"] / before["seconds"])
    figure.add("requests merged per second", requests / ours["seconds"], requests / before["seconds"])
    figure.notes.append(
        f"{requests:,} requests in {requests // PER_SHARD:,} shards, {source.stat().st_size / 2**20:,.0f} MiB of "
        f"requests, {sum(p.stat().st_size for p in parts.iterdir()) / 2**20:,.0f} MiB of results (written in "
        f"{made:.0f} s); the one-index time includes its concatenation ({before['concat_seconds']:.1f} s)."
    )
    return figure


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=("streaming", "one-index"), required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--parts", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import logging

    from airflow_provider_maas.batch.answers.merge import merge_results, merge_shard_results
    from airflow_provider_maas.batch.answers.parts import concatenate
    from airflow_provider_maas.storage import to_path

    logging.getLogger("airflow_provider_maas").setLevel(logging.ERROR)
    out = to_path(args.out)  # loads the object-storage layer
    parts = sorted(to_path(args.parts).iterdir())
    gc.collect()
    baseline = rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    concat_seconds = 0.0
    if args.variant == "streaming":
        summary = merge_shard_results(
            ((part, n * PER_SHARD + 1, (n + 1) * PER_SHARD) for n, part in enumerate(parts)),
            args.source,
            out / "out.jsonl",
        )
    else:
        combined = out / "combined.jsonl"
        concatenate(parts, combined)
        concat_seconds = time.perf_counter() - start
        summary = merge_results([combined], args.source, out / "out.jsonl")
    seconds = time.perf_counter() - start
    summary.pop("failed_uri")
    worker_result(
        {
            "seconds": seconds,
            "concat_seconds": concat_seconds,
            "rss_growth_mb": peak_rss_mb() - baseline,
            "summary": summary,
        }
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks --only merge-1m")
