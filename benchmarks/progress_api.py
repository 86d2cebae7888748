"""Figure: what one call of the progress API costs on a 1,000,000-request batch (10,000 shards).

The state is written with the journal itself (manifest, a snapshot, then journal objects, as a
running batch leaves them): 10,000 shards of 100 requests, 6,000 done (their results downloaded,
100 lines each, 1 in 50 failed), 200 failed, 1,000 running, 2,800 pending. Each call is what the
API does after its three single-row database lookups: ``batch.progress.read_progress`` (replay
through ``BatchJournal.load``, one listing of the parts, the answers counted in parts not counted
yet within the 0.5 s budget, the first 200 jobs) and the JSON encoding. Calls run in a fresh
interpreter, as an API server worker that never read this batch; later calls find the parts
counted (the per-process cache) and, while nothing is written, the replayed state (the state cache);
the last call clears the state cache, as a journal write does. Reference: ``BatchJournal.load()`` alone, the floor of any
reader of the state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import Figure, child_env, median

NAME = "progress-api"
TITLE = "progress API on a 1,000,000-request batch's state (10,000 shards)"


def _line(i: int) -> bytes:
    if i % 50 == 0:
        return b'{"request":{"contents":[%d]},"status":"RESOURCE_EXHAUSTED: quota"}\n' % i
    return (
        b'{"request":{"contents":[%d]},"status":"","response":{"candidates":[{"content":{"parts":[{"text":"ok"}]},'
        b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":30,'
        b'"totalTokenCount":42}}}\n' % i
    )


def build(root: Path, shards: int, per_shard: int) -> None:
    from airflow_provider_maas.batch.inputs.shards import ShardPlan
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import (
        BatchState,
        Round,
        ShardKey,
        ShardRecord,
        ShardStatus,
        fingerprint,
    )
    from airflow_provider_maas.storage import to_path

    plans = tuple(
        ShardPlan(i, i * per_shard + 1, (i + 1) * per_shard, 0, 0, per_shard, 0, f"{i:064x}", True)
        for i in range(shards)
    )
    state = BatchState(fingerprint(plans), "bench.task.run.m-1", [Round(0, plans)], deadline=time.time() + 86400)
    journal = BatchJournal(to_path(str(root)))
    journal.create(state)
    done, failed, running = int(shards * 0.6), int(shards * 0.02), int(shards * 0.1)
    records = []
    for i in range(shards):
        key = ShardKey(0, i)
        name = f"batchPredictionJobs/{i:08d}"
        if i < done:
            record = ShardRecord(key, ShardStatus.DONE, 1, f"f{i}.jsonl", f"bench#{i}", name, 1, "JOB_STATE_SUCCEEDED")
        elif i < done + failed:
            record = ShardRecord(key, ShardStatus.FAILED, 3, error="JOB_STATE_FAILED: internal error")
        elif i < done + failed + running:
            record = ShardRecord(key, ShardStatus.RUNNING, 1, f"f{i}.jsonl", f"bench#{i}", name, 1, "JOB_STATE_RUNNING")
        else:
            continue
        records.append(record)
    for start in range(0, len(records), 100):  # one journal object per 100 changes, compacted as it goes
        chunk = records[start : start + 100]
        for record in chunk:
            state.apply(record)
        journal.append(state, chunk)
    lines = [_line(n) for n in range(per_shard)]
    parts = journal.part_dir()
    parts.mkdir(parents=True, exist_ok=True)
    data = b"".join(lines)
    for i in range(done):
        Path(str(journal.part(ShardKey(0, i)).path)).write_bytes(data)


_CHILD = r"""
import json, sys, time
from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.progress import read_progress
from airflow_provider_maas.storage import to_path
root, calls = sys.argv[1], int(sys.argv[2])
journal = BatchJournal(to_path(root))
t = time.perf_counter(); journal.load(); load_s = time.perf_counter() - t
out = []
for _ in range(calls):
    t = time.perf_counter()
    body = json.dumps(read_progress(journal, prices={"prompt": 0.15, "candidates": 0.6}), separators=(",", ":"))
    seconds = time.perf_counter() - t
    p = json.loads(body)
    out.append({"s": seconds, "bytes": len(body), "counted": p["answers"]["counted_parts"], "parts": p["answers"]["parts"]})
    if p["answers"]["counted_parts"] == p["answers"]["parts"] and len(out) > 1 and out[-2]["counted"] == out[-2]["parts"]:
        break
from airflow_provider_maas.batch import progress
progress._states.clear()  # what a journal write does to the cached state: replayed again
t = time.perf_counter()
json.dumps(read_progress(journal, prices={"prompt": 0.15, "candidates": 0.6}), separators=(",", ":"))
print(json.dumps({"load_s": load_s, "calls": out, "changed_s": time.perf_counter() - t}))
"""


def run(smoke: bool, workdir: Path) -> Figure:
    shards, per_shard = (100, 100) if smoke else (10_000, 100)
    figure = Figure(NAME, TITLE, "`BatchJournal.load()` of the same state, same interpreter")
    root = workdir / "progress-state" / ".results.jsonl.maas" / "bench.task.run.m-1"
    started = time.perf_counter()
    build(root, shards, per_shard)
    figure.notes.append(
        f"state of {shards:,} shards x {per_shard} requests written in {time.perf_counter() - started:.1f} s"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), "200"], env=child_env(), capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"the progress reader failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    calls, load_s = result["calls"], result["load_s"]
    first, warm = calls[0], calls[-1]
    counting = sum(c["s"] for c in calls if c["counted"] < c["parts"]) + next(
        (c["s"] for c in calls if c["counted"] == c["parts"]), 0.0
    )
    until = next((n for n, c in enumerate(calls, 1) if c["counted"] == c["parts"]), len(calls))
    figure.add("first call, fresh process (s)", first["s"], load_s, first["s"] / load_s, "< 2 s", first["s"] < 2)
    figure.add(
        "call once every part is counted, state unchanged (s)",
        warm["s"],
        load_s,
        warm["s"] / load_s,
        "< 1 s",
        warm["s"] < 1,
    )
    changed = result["changed_s"]
    figure.add(
        "  the same after a journal write (state replayed, s)", changed, load_s, changed / load_s, "< 1 s", changed < 1
    )
    figure.add("response (bytes)", warm["bytes"], None, None, "< 100 KB", warm["bytes"] < 100_000)
    figure.add("calls until every part's answers are counted", until)
    figure.add("  their wall time, summed (s)", counting)
    figure.notes.append(f"median call over the run: {median([c['s'] for c in calls]):.3f} s, {len(calls)} calls")
    return figure
