"""The provider on a distributed Airflow (issue 12): CeleryExecutor with two workers that share nothing
but the object store (moto's S3 server) and the metadata database (PostgreSQL).

1. The four-step chain, the mapped example and ``MaaSBatchPredictionOperator`` run at once, every path
   on ``s3://s3_test@maas-dist/...``, the emulator shuffling results: results come back in input
   order (read from the object store with boto3), one job per shard, XComs hold only names and URIs
   that keep the ``s3_test@`` connection id, no temporary object is left behind.
2. A Celery worker gets SIGKILL while a ``MaaSBatchPredictionOperator`` polls its running jobs: the
   scheduler notices the lost heartbeat, the retry runs on the other worker and reattaches to the
   same jobs: no job is created again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from typing import Any, NamedTuple

import pytest

from tests.airflow_processes import wait_for
from tests.distributed.deployment import API_KEY, BUCKET, REPORT, S3_CONN_ID, WORKERS
from tests.helpers import assert_in_input_order

CHAIN, MAPPED, SINGLE, WORKER_LOST = "maas_dist_chain", "maas_dist_mapped", "maas_dist_single", "maas_dist_worker_lost"


class Case(NamedTuple):
    input_key: str
    shards: int  # = jobs


DAGS = {
    CHAIN: Case("input/requests-100.jsonl", 1),
    MAPPED: Case("input/requests-300.jsonl", 3),
    SINGLE: Case("input/requests-300.jsonl", 3),
    WORKER_LOST: Case("input/requests-300.jsonl", 3),
}
URI_PREFIX = f"s3://{S3_CONN_ID}@{BUCKET}/"
RUN_TIMEOUT = 300
STEP = 120


# Reading the deployment ---------------------------------------------------------------------------
def run_state(dep, dag_id: str) -> str | None:
    rows = dep.query("SELECT state FROM dag_run WHERE dag_id = %s", (dag_id,))
    return rows[0][0] if rows else None


def task_tries(dep, dag_ids: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Every try of every task: (dag, task, map index, try, hostname, state), finished tries included."""
    sql = """
        SELECT dag_id, task_id, map_index, try_number, hostname, state FROM task_instance_history
        WHERE dag_id = ANY(%s)
        UNION
        SELECT dag_id, task_id, map_index, try_number, hostname, state FROM task_instance WHERE dag_id = ANY(%s)
        ORDER BY 1, 2, 3, 4
    """
    return dep.query(sql, (list(dag_ids), list(dag_ids)))


def report_where(dep, dag_ids: tuple[str, ...]) -> None:
    for dag_id, task_id, map_index, try_number, hostname, state in task_tries(dep, dag_ids):
        mapped = f"[{map_index}]" if map_index >= 0 else ""
        REPORT.append(f"{dag_id}.{task_id}{mapped} try {try_number}: {state} on {hostname or '-'}")


def xcoms(dep, dag_id: str) -> list[tuple[str, int, str, Any]]:
    return dep.query("SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = %s ORDER BY 1, 2, 3", (dag_id,))


def log_errors(log: str) -> list[str]:
    """The error events of a task log (JSON lines), one short line each."""
    found = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") in {"error", "critical"}:
            detail = (event.get("error_detail") or [{}])[-1]
            exc = f": {detail.get('exc_type')}: {detail.get('exc_value')}" if detail else ""
            found.append(f"{event.get('event')}{exc}")
    return found


def failures(dep, dag_id: str) -> str:
    """The errors of every failed try, read from the disk of the worker that ran it."""
    parts = []
    for _, task_id, map_index, try_number, hostname, state in task_tries(dep, (dag_id,)):
        if hostname in WORKERS and state not in {"success", "deferred", "running"}:
            log = dep.worker_log(hostname, dag_id, task_id, try_number, map_index)
            errors = log_errors(log) or log.splitlines()[-5:]
            parts.append(
                f"{dag_id}.{task_id}[{map_index}] try {try_number} {state} on {hostname}: " + " | ".join(errors)
            )
    return "\n".join(parts)


def read_object(dep, key: str, local) -> Any:
    local.write_bytes(dep.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return local


def assert_results(dep, dag_id: str, requests, tmp_path) -> None:
    """The DAG's results, read back from the object store, answer every request in input order (the
    emulator shuffles them) and none failed (no failed file)."""
    out = f"output/{dag_id}/"
    assert_in_input_order(requests, read_object(dep, out + "results.jsonl", tmp_path / "results.jsonl"))
    # Nothing failed, so there is no failed file (it is written only on a first failed request).
    assert out + "results.failed.jsonl" not in keys_under(dep, out)


def keys_under(dep, prefix: str) -> list[str]:
    pages = dep.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def check_xcom_value(value: Any, where: str, service_url: str) -> None:
    """Only names, URIs (with the connection id) and small summaries or job resources: no local paths,
    no request or result content, no key. ``service_url``: the API's own URLs in a job resource."""
    text = json.dumps(value)
    assert API_KEY not in text, f"{where}: the API key is in XCom"
    assert len(text) < 16_384, f"{where}: {len(text)} bytes of XCom; only names and URIs belong there"
    if isinstance(value, str):
        if "://" in value and not value.startswith(service_url):
            assert value.startswith(URI_PREFIX), f"{where}: {value!r} lost the connection id ({URI_PREFIX}...)"
        elif not value.startswith("/maas-progress/"):  # the progress extra link: a page of the api-server
            assert not value.startswith("/"), f"{where}: {value!r} is a local path: other workers cannot read it"
    elif isinstance(value, list):
        for item in value:
            check_xcom_value(item, where, service_url)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_xcom_value(item, f"{where}[{key}]", service_url)


def created_jobs(dep, dag_id: str) -> list[str]:
    """The jobs of a DAG run named in XCom: the return values of its create tasks."""
    return sorted(v for task_id, _, key, v in xcoms(dep, dag_id) if task_id == "create" and key == "return_value")


def summary(dep, dag_id: str, task_id: str) -> dict[str, Any]:
    found = [v for t, _, key, v in xcoms(dep, dag_id) if t == task_id and key == "summary"]
    assert len(found) == 1, f"{dag_id}.{task_id}: no summary in XCom"
    return found[0]


# Phase 1: three DAGs at once ----------------------------------------------------------------------
PHASE1 = (CHAIN, MAPPED, SINGLE)


@pytest.fixture(scope="module")
def phase1(deployment):
    """Wait for the three @once runs to end; note where each task ran."""

    def ended() -> bool:
        deployment.check_running()
        return all(run_state(deployment, d) in {"success", "failed"} for d in PHASE1)

    try:
        wait_for("the chain, mapped and one-task DAG runs to end", ended, RUN_TIMEOUT, interval=1)
    finally:
        deployment.phase("phase 1 ended")
        report_where(deployment, PHASE1)
    return deployment


@pytest.mark.parametrize("dag_id", PHASE1)
def test_dag_runs_on_object_storage(phase1, dag_id, inputs, tmp_path):
    dep = phase1
    state = run_state(dep, dag_id)
    assert state == "success", f"{dag_id} ended {state}:\n{failures(dep, dag_id)}"
    case = DAGS[dag_id]
    assert_results(dep, dag_id, inputs[case.input_key], tmp_path)
    # No temporary object (atomic writes) and no parts directory is left behind.
    # The origin record beside each results file (`.<name>.origin.json`, batch/record/origin.py) is kept.
    leftovers = [k for k in keys_under(dep, f"output/{dag_id}/") if "/." in k and not k.endswith(".origin.json")]
    assert not leftovers, f"temporary objects left behind: {leftovers}"

    # One job per shard, each one the emulator knows (the one-task operator counts its own).
    if dag_id == SINGLE:
        result = summary(dep, dag_id, "predict")
        assert (result["shards"], result["jobs"]) == (case.shards, case.shards), result
    else:
        names = created_jobs(dep, dag_id)
        assert len(names) == case.shards == len(set(names)), names
        known = dep.emulator("GET", "/_emulator/state")["jobs"]
        assert all(known.get(n) == "JOB_STATE_SUCCEEDED" for n in names), {n: known.get(n) for n in names}

    # XComs: names and URIs that keep the connection id, nothing else.
    values = xcoms(dep, dag_id)
    assert values
    for task_id, map_index, key, value in values:
        check_xcom_value(value, f"{dag_id}.{task_id}[{map_index}] XCom {key!r}", dep.emulator_url)


def test_one_job_per_shard_in_all(phase1):
    created = phase1.emulator("GET", "/_emulator/state")["jobs_created"]
    assert created == sum(DAGS[d].shards for d in PHASE1), f"{created} jobs created"


def test_steps_ran_on_the_machine_of_their_queue(phase1):
    """Files passed from one worker to the other: the DAGs alternate steps between the two queues."""
    rows = phase1.query(
        "SELECT dag_id, task_id, map_index, queue, hostname FROM task_instance WHERE dag_id = ANY(%s)", (list(PHASE1),)
    )
    pinned = [row for row in rows if row[3] in WORKERS]
    assert {row[3] for row in pinned} == set(WORKERS), rows
    assert all(row[4] == row[3] for row in pinned), [row for row in pinned if row[4] != row[3]]


# Phase 2: a worker dies while a one-task operator has jobs running ------------------------------
def test_killed_worker_retry_reattaches_to_the_same_jobs(phase1, inputs, tmp_path):
    dep = phase1
    # Jobs created from now on run until the test ends them.
    dep.emulator("POST", "/_emulator/config", {"job_duration": 3600})
    before = dep.emulator("GET", "/_emulator/state")
    dep.airflow_cli("dags", "unpause", WORKER_LOST)
    shards = DAGS[WORKER_LOST].shards

    def diagnose() -> str:
        return failures(dep, WORKER_LOST) + "\n" + dep.diagnose(("scheduler", *WORKERS))

    def try_row() -> tuple[Any, ...] | None:
        rows = dep.query(
            "SELECT try_number, hostname, state FROM task_instance WHERE dag_id = %s AND task_id = 'predict'",
            (WORKER_LOST,),
        )
        return rows[0] if rows else None

    def new_jobs() -> list[str]:
        return sorted(set(dep.emulator("GET", "/_emulator/state")["jobs"]) - set(before["jobs"]))

    def saved_state() -> str:
        """Everything the task saved so far: beside its destination and in the task state store."""
        s3 = dep.s3()
        texts = []
        for key in keys_under(dep, f"output/{WORKER_LOST}/"):
            with contextlib.suppress(s3.exceptions.NoSuchKey):  # replaced or compacted since the listing
                texts.append(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode(errors="replace"))
        rows = dep.query("SELECT value FROM task_state_store WHERE dag_id = %s", (WORKER_LOST,))
        return "".join(texts) + "".join(str(r[0]) for r in rows)

    def polling() -> tuple[Any, ...] | None:
        dep.check_running()
        row = try_row()
        if not row or row[2] != "running" or len(new_jobs()) < shards:
            return None
        # Kill only once every job is recorded: a create whose answer was not yet saved is, by design,
        # not retried automatically (nobody can tell whether it created a job).
        state = saved_state()
        return row if all(name in state for name in new_jobs()) else None

    try_number, first_host, _ = wait_for("the task to run and poll its jobs", polling, STEP, diagnose=diagnose)
    jobs = new_jobs()
    assert len(jobs) == shards, jobs
    assert first_host in WORKERS, first_host
    other = next(w for w in WORKERS if w != first_host)
    dep.phase(f"jobs running on {first_host}")

    dep.kill(first_host, signal.SIGKILL)  # the whole worker: Celery, its pool, the task: as a lost machine
    killed = time.monotonic()

    def retried() -> tuple[Any, ...] | None:
        dep.check_running(*(n for n in dep.procs if n != first_host))
        row = try_row()
        return row if row and row[0] > try_number and row[2] == "running" else None

    _, second_host, _ = wait_for("the retry to run", retried, STEP, diagnose=diagnose)
    dep.phase(f"retry running on {second_host} ({time.monotonic() - killed:.0f}s after the kill)")
    assert second_host == other, f"the retry ran on {second_host}, not on the surviving {other}"

    # The retry finds the jobs in its task state and polls them; end them now. A retry that created
    # jobs again would wait for jobs that run an hour: that fails at once, below.
    for name in jobs:
        dep.emulator("POST", f"/_emulator/jobs/{name}/state", {"state": "JOB_STATE_SUCCEEDED"})

    def finished() -> bool:
        assert new_jobs() == jobs, f"the retry created jobs again instead of reattaching: {new_jobs()}"
        return run_state(dep, WORKER_LOST) in {"success", "failed"}

    wait_for("the retry to finish", finished, STEP, diagnose=diagnose)
    report_where(dep, (WORKER_LOST,))
    dep.phase("phase 2 ended")
    assert run_state(dep, WORKER_LOST) == "success", diagnose()
    assert dep.emulator("GET", "/_emulator/state")["jobs_created"] == before["jobs_created"] + shards
    assert_results(dep, WORKER_LOST, inputs[DAGS[WORKER_LOST].input_key], tmp_path)
    for task_id, map_index, key, value in xcoms(dep, WORKER_LOST):
        check_xcom_value(value, f"{WORKER_LOST}.{task_id}[{map_index}] XCom {key!r}", dep.emulator_url)


def test_api_key_in_no_log(phase1):
    """No Airflow component and no task log (on any machine) holds the API key. (The emulator, the
    service's side, prints a ready-to-use connection with its key when it starts.)"""
    logs = [p for p in phase1.root.rglob("*.log") if p.is_file() and p.name != "emulator.log"]
    assert any("task_id=" in str(p) for p in logs), "no task log found"
    leaked = [str(p) for p in logs if API_KEY in p.read_text(errors="replace")]
    assert not leaked, leaked
