"""Figure: the dry run (``dry_run=True``) of 1,000,000 requests: time and peak memory.

Our side runs ``batch.cost.dry_run.dry_run`` (what the operator's dry run calls) in a fresh interpreter:
every line validated, deduplicated (the digest of each normalised request into a temporary SQLite
file, as a real run does), estimated (prompt characters, ``maxOutputTokens``) and the requests to
send planned into 100-request shards. The reference is the existing split/validate figure's pass 1
on the same file: ``batch.inputs.shards.plan_shards`` (validate + plan), the floor of any plan, in the
same kind of fresh interpreter. Peak RSS growth (``VmHWM`` reset once the modules are loaded) at
N and N/2 shows whether memory follows the input.

The input: requests of ~200 bytes (a question and ``generationConfig.maxOutputTokens``), one in 20
a repeat of an earlier one; generating the file is not timed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks._common import Figure, child_env, measured, run_worker

NAME = "dry-run"
TITLE = "dry_run=True over 1,000,000 requests (time, peak memory)"
MODULE = "benchmarks.dry_run"


def _write_requests(path: Path, count: int) -> None:
    with path.open("wb") as out:
        for i in range(count):
            n = i - 7 if i % 20 == 19 else i  # one in 20 repeats an earlier request
            request = {
                "contents": [{"role": "user", "parts": [{"text": f"Question {n}: summarise item {n} in one line."}]}],
                "generationConfig": {"temperature": 0.2, "maxOutputTokens": 256},
            }
            out.write(json.dumps({"request": request}).encode() + b"\n")


def run(smoke: bool, workdir: Path) -> Figure:
    count = 10_000 if smoke else 1_000_000
    figure = Figure(
        NAME, TITLE, "split/validate's pass 1 (`plan_shards`: validate + plan), same file, fresh interpreter"
    )
    source, half = workdir / "dry-run.jsonl", workdir / "dry-run-half.jsonl"
    _write_requests(source, count)
    _write_requests(half, count // 2)
    env = child_env()
    timeout = 60 if smoke else 1800
    ours = run_worker(MODULE, ["dry-run", str(source)], env=env, workdir=workdir, timeout=timeout)
    ours_half = run_worker(MODULE, ["dry-run", str(half)], env=env, workdir=workdir, timeout=timeout)
    reference = run_worker(MODULE, ["plan", str(source)], env=env, workdir=workdir, timeout=timeout)
    figure.add(
        f"wall time, {count:,} requests (s)",
        ours["wall"],
        reference["wall"],
        ours["wall"] / reference["wall"],
        "< 60 s" if not smoke else "",
        ours["wall"] < 60 if not smoke else None,
    )
    figure.add("  CPU time (s)", ours["cpu"], reference["cpu"], ours["cpu"] / reference["cpu"])
    figure.add(
        f"peak RSS growth at {count:,} (MiB)",
        ours["rss_growth"],
        reference["rss_growth"],
        None,
        "flat: within 8 MiB of N/2",
        ours["rss_growth"] - ours_half["rss_growth"] < 8,
    )
    figure.add(f"  at {count // 2:,} (MiB)", ours_half["rss_growth"])
    plan = ours["plan"]
    figure.notes += [
        f"Input {source.stat().st_size / 1e6:,.0f} MB. The plan: {plan['requests']:,} requests, "
        f"{plan['unique_requests']:,} unique, {plan['to_send']:,} to send in {plan['shards']:,} shards, "
        f"estimated ${plan['estimated_cost_usd']:,.2f}, worst case ${plan['worst_case_cost_usd']:,.2f}.",
        "Wall time on this shared 2-core VM moves with the other processes' load; CPU time is the process's own.",
    ]
    return figure


def _worker(argv: list[str]) -> None:
    mode, path = argv
    from airflow_provider_maas.batch.cost.dry_run import dry_run
    from airflow_provider_maas.batch.inputs.shards import plan_shards
    from tests.helpers import batch_settings  # the operator's defaults

    settings = batch_settings(path, prices={"prompt": 0.30, "candidates": 2.50})  # built before the clock starts

    def plan() -> None:
        with open(path, "rb") as handle:
            plan_shards(handle)

    measured(plan if mode == "plan" else lambda: {"plan": dry_run(settings).as_dict()})


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2:])
