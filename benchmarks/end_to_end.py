"""Figure: end-to-end overhead of the mapped example DAG, per shard.

``example_dags/example_maas_batch_mapped.py`` (split >> upload >> create >> wait (deferrable
sensor) >> download >> merge, each mapped over the shards) runs with ``dag.test()`` in a fresh
interpreter, on a throwaway AIRFLOW_HOME (sqlite, migrated once), against the emulator in its own
process with jobs that take 5 s. Value: (wall time of ``dag.test()`` - 5 s) / shards, what the
provider and Airflow add per shard on top of the service's own time.

Reference, same run, same interpreter (all after a one-task warm-up DAG): a DAG of the same shape (one generate and one split task, four
tasks mapped over the same number of shards, one merge) whose tasks do nothing, except that ``wait``
defers once to a trigger that fires at once (as the example's deferrable sensor defers): what
Airflow itself costs per shard in ``dag.test()``: wall time / shards.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, Figure, child_env, emulator_admin, emulator_process, run_worker, worker_result

NAME = "end-to-end"
TITLE = "mapped example DAG (split, upload, create, wait, download, merge) with dag.test(): overhead per shard"
EXAMPLE = ROOT / "example_dags" / "example_maas_batch_mapped.py"
REQUESTS_PER_SHARD = 100

_REFERENCE_DAG = '''"""Same shape as example_maas_batch_mapped, tasks doing nothing (benchmark reference).

``wait`` defers once to a trigger that fires at once, like the example's deferrable sensor.
"""
import datetime
import os

import pendulum
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import DAG, BaseOperator, task

SHARDS = int(os.environ["MAAS_BENCH_SHARDS"])


class DeferOnce(BaseOperator):
    def __init__(self, *, job_name: str, **kwargs):
        super().__init__(**kwargs)
        self.job_name = job_name

    def execute(self, context):
        self.defer(trigger=TimeDeltaTrigger(datetime.timedelta(0)), method_name="resume")

    def resume(self, context, event=None):
        return self.job_name


@task
def generate_requests() -> str:
    return "requests.jsonl"


@task
def split(source: str) -> list[str]:
    return [f"shard-{i}.jsonl" for i in range(SHARDS)]


@task
def upload(source: str) -> str:
    return source


@task
def create(file_name: str) -> str:
    return file_name + "-job"


@task
def download(job_name: str) -> str:
    return job_name + ".results"


@task
def merge(sources: list[str], requests: str) -> str:
    return "results.jsonl"


with DAG(dag_id="bench_noop_mapped", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), schedule=None) as dag:
    requests = generate_requests()
    jobs = create.expand(file_name=upload.expand(source=split(requests)))
    waited = DeferOnce.partial(task_id="wait").expand(job_name=jobs)
    parts = download.expand(job_name=jobs)
    waited >> parts
    merge(parts, requests)
'''


_WARM_UP_DAG = '''"""One no-op task: dag.test() starts its in-process execution API on the first run (benchmark warm-up)."""
import pendulum
from airflow.sdk import DAG, task


@task
def nothing() -> None:
    return None


with DAG(dag_id="bench_warm_up", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), schedule=None) as dag:
    nothing()
'''


def run(smoke: bool, workdir: Path) -> Figure:
    shards, job_seconds = (3, 0.5) if smoke else (50, 5.0)
    figure = Figure(
        NAME, TITLE, "a DAG of the same shape whose tasks do nothing (wait defers once): Airflow's own cost per shard"
    )
    dags = workdir / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, dags / EXAMPLE.name)
    (dags / "bench_noop_mapped.py").write_text(_REFERENCE_DAG)
    (dags / "bench_warm_up.py").write_text(_WARM_UP_DAG)
    env_extra = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "MAAS_EXAMPLE_OUTPUT": str(workdir / "output"),
        "MAAS_POLL_INTERVAL": "1",
        "MAAS_BENCH_SHARDS": str(shards),
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=child_env(**env_extra),
        check=True,
        capture_output=True,
        timeout=600,
    )
    with emulator_process(workdir, latency=0, job_duration=job_seconds, access_log_limit=1000) as emu:
        env = child_env(emu.base_url, **env_extra)
        args = ["--example", str(dags / EXAMPLE.name), "--conf", json.dumps({"requests": shards * REQUESTS_PER_SHARD})]
        args += ["--reference", str(dags / "bench_noop_mapped.py"), "--warm-up", str(dags / "bench_warm_up.py")]
        runs = run_worker(__name__, args, env=env, workdir=workdir, timeout=1800)
        created = emulator_admin(emu.base_url, "GET", "/_emulator/state")["jobs_created"]
    warm_up, mine, ref = runs["warm_up"], runs["example"], runs["reference"]
    for name, result in (("warm-up", warm_up), ("example", mine), ("reference", ref)):
        if result["state"] != "success":
            raise RuntimeError(f"the {name} DAG run ended {result['state']}")
    if created != shards:
        raise RuntimeError(f"the example created {created} jobs, expected {shards}")
    per_shard = (mine["seconds"] - job_seconds) / shards
    ref_per_shard = ref["seconds"] / shards
    figure.add(
        "overhead per shard: (wall - job time) / shards (s)", per_shard, ref_per_shard, per_shard / ref_per_shard
    )
    figure.add("  of which beyond Airflow's own cost (s)", per_shard - ref_per_shard)
    figure.add("wall time of dag.test() (s)", mine["seconds"], ref["seconds"], mine["seconds"] / ref["seconds"])
    figure.notes += [
        f"{shards} shards x {REQUESTS_PER_SHARD} requests, jobs of {job_seconds:g} s, poll interval 1 s; "
        f"{mine['task_instances']} task instances (reference {ref['task_instances']}). All runs in one interpreter, "
        f"after a warm-up run of a one-task DAG ({warm_up['seconds']:.1f} s: dag.test() starts its in-process "
        "execution API once). dag.test() runs task instances one at a time (the deferred sensors' triggers "
        "inline), so per-shard costs add up; a real deployment runs mapped instances in parallel.",
        f"The {job_seconds:g} s subtracted are the jobs' run time; when the create tasks of all shards take longer "
        "than that, the sensors find their jobs already ended, and the subtraction understates the overhead by up "
        f"to {job_seconds / shards:.2g} s per shard (the wall-time row compares without it).",
    ]
    return figure


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--example", required=True)
    parser.add_argument("--conf", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--warm-up", required=True)
    args = parser.parse_args(argv)
    reference = _load_dag(Path(args.reference))
    example = _load_dag(Path(args.example))
    results = {"warm_up": _timed_test(_load_dag(Path(args.warm_up)), None)}
    results["example"] = _timed_test(example, json.loads(args.conf))
    results["reference"] = _timed_test(reference, None)
    worker_result(results)
    return 0


def _load_dag(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"{path.stem}_under_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _timed_test(dag: Any, conf: dict[str, Any] | None) -> dict[str, Any]:
    start = time.perf_counter()
    run = dag.test(run_conf=conf)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "state": str(run.state), "task_instances": len(run.get_task_instances())}


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks --only end-to-end")
