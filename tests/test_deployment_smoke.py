"""The deferrable paths in a real deployment, on whichever Airflow runs the tests (issue 24).

``make test`` runs it on Airflow 3.3, ``make test-compat`` / ``test-compat-3.1`` / ``test-compat-3.2``
on 3.0, 3.1 and 3.2: one throwaway deployment (own AIRFLOW_HOME, sqlite) of ``airflow api-server``
(execution API), ``scheduler`` (LocalExecutor: its workers run the tasks), ``dag-processor`` and
``triggerer`` as real processes, and the emulator in a thread of this test. Two DAGs from
``tests/dags/maas_deployment_smoke.py`` run at once, no retries:

* ``maas_smoke_chain``: upload >> create >> wait (deferrable ``MaaSBatchJobSensor``) >> download;
* ``maas_smoke_batch``: one deferrable ``MaaSBatchPredictionOperator`` over 3 shards.

The jobs stay RUNNING until both tasks are deferred and their triggers poll every job; then the
triggerer is stopped (SIGTERM, as a deployment does) and a new one must poll the same jobs; then the
test ends the jobs. Every task must succeed in its first try, every answer must be in place in input
order, no job may be created twice, and the API key must be in no log. On Airflow 3.0 before the
hook read its connection off the event loop, both triggers died here with ``RuntimeError: You cannot
use AsyncToSync in the same thread as an async event loop`` (tests/test_trigger_comms.py shows the
same in-process).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from airflow import __version__ as airflow_version

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator
from tests.airflow_processes import (
    LINUX_ONLY,
    AirflowProcesses,
    Phases,
    deployment_dirs,
    emulator_jobs,
    emulator_polls,
    end_emulator_jobs,
    wait_for,
)
from tests.conftest import API_KEY, ENDPOINT, ROOT, connection_env
from tests.helpers import assert_in_input_order, write_requests

CHAIN, BATCH = "maas_smoke_chain", "maas_smoke_batch"
DEFERRED = {CHAIN: "wait", BATCH: "predict"}  # the deferrable task of each DAG
TASKS = {CHAIN: ("upload", "create", "wait", "download"), BATCH: ("predict",)}
CHAIN_REQUESTS = 12
SHARDS = 3
BATCH_REQUESTS = 25  # 10 + 10 + 5 (tests/dags/maas_deployment_smoke.py: SHARD_SIZE = 10)

# Deadlines against hangs only (a loaded 2-core machine); every wait ends as soon as its condition holds.
STARTUP = 180
STEP = 120

pytestmark = LINUX_ONLY


def test_deferrable_sensor_and_batch_operator_survive_a_triggerer_restart(tmp_path: Path) -> None:
    phase = Phases()
    work, dags = deployment_dirs(tmp_path, "maas_deployment_smoke.py")
    requests = {
        CHAIN: write_requests(work / "chain.jsonl", CHAIN_REQUESTS, prefix="Chain"),
        BATCH: write_requests(work / "batch.jsonl", BATCH_REQUESTS, prefix="Batch"),
    }
    expected_jobs = {CHAIN: 1, BATCH: SHARDS}
    config = EmulatorConfig(api_key=API_KEY, endpoint=ENDPOINT, job_duration=3600)  # held until the test ends them

    with run_emulator(config) as emu:
        conn_name, conn_value = connection_env(emu.base_url)
        airflow = AirflowProcesses(
            tmp_path / "airflow", dags, {conn_name: conn_value, "MAAS_SMOKE_DIR": str(work), "PYTHONPATH": str(ROOT)}
        )
        airflow.home.mkdir()
        with airflow:

            def states() -> dict[str, str | None]:
                return {
                    f"{dag_id}.{task}": (airflow.task_instance(dag_id, task) or {}).get("state")
                    for dag_id, tasks in TASKS.items()
                    for task in tasks
                }

            def diagnose() -> str:
                jobs = {name: (job.display_name, job.state) for name, job in list(emu.emulator.jobs.items())}
                text = [f"Airflow {airflow_version}; emulator jobs: {jobs}; states: {states()}"]
                text += [airflow.diagnose([dag_id], task) for dag_id, task in DEFERRED.items()]
                return "\n".join(text)

            def step(what: str, check, timeout: float = STEP):
                def checked():
                    airflow.check_running()
                    failed = {name: state for name, state in states().items() if state in {"failed", "upstream_failed"}}
                    assert not failed, f"tasks failed while waiting for {what}: {failed}\n{diagnose()}"
                    return check()

                return wait_for(what, checked, timeout, interval=0.5, diagnose=diagnose)

            airflow.start_deployment(STARTUP, diagnose)
            phase("started")

            # --- Both tasks deferred, their triggers polling every job ---------------------------
            def polled_in_triggerer(dag_id: str, since: float) -> list[str] | None:
                ti = airflow.task_instance(dag_id, DEFERRED[dag_id]) or {}
                if ti.get("state") != "deferred" or not airflow.trigger_owner(ti.get("trigger_id") or -1):
                    return None
                jobs = emulator_jobs(emu, dag_id)
                if len(jobs) != expected_jobs[dag_id]:
                    return None
                return jobs if all(emulator_polls(emu, [job], since) for job in jobs) else None

            jobs = {
                dag_id: step(
                    f"{dag_id}'s trigger to poll its jobs", lambda d=dag_id: polled_in_triggerer(d, 0), STARTUP
                )
                for dag_id in DEFERRED
            }
            phase("both deferred and polled")

            # --- The triggerer restarts while both tasks are deferred ----------------------------
            first = airflow.procs["triggerer"]
            if airflow.kill_group("triggerer", signal.SIGTERM) is None:
                airflow.kill_group("triggerer", signal.SIGKILL)
            assert first.poll() is not None, "the triggerer did not stop"
            stopped_at = time.time() + 1  # no poll of the stopped triggerer is in flight after this
            for dag_id, task in DEFERRED.items():
                assert (airflow.task_instance(dag_id, task) or {}).get("state") == "deferred", diagnose()
            airflow.start("triggerer", "triggerer")
            for dag_id in DEFERRED:
                again = step(
                    f"the new triggerer to poll {dag_id}'s jobs", lambda d=dag_id: polled_in_triggerer(d, stopped_at)
                )
                assert again == jobs[dag_id]
            phase("new triggerer polled")

            # --- The jobs end; everything succeeds -----------------------------------------------
            end_emulator_jobs(emu, [job for names in jobs.values() for job in names])

            def ended() -> bool:
                return all(state in {"success", "failed", "upstream_failed"} for state in states().values())

            step("every task to end", ended)
            phase("all ended")
            final = {
                (dag_id, task): airflow.task_instance(dag_id, task) or {} for dag_id in TASKS for task in TASKS[dag_id]
            }
            text = diagnose()
            logs = "".join(
                path.read_text(errors="replace") for path in (airflow.home / "logs").rglob("*") if path.is_file()
            )
            logs += "".join(proc.log_path.read_text(errors="replace") for proc in airflow.all_procs)  # type: ignore[attr-defined]
        created = emu.emulator.jobs_created
        final_jobs = {dag_id: emulator_jobs(emu, dag_id) for dag_id in TASKS}

    print(f"\ndeployment smoke on Airflow {airflow_version}: " + str(phase))
    for (dag_id, task), ti in final.items():
        assert ti.get("state") == "success", f"{dag_id}.{task}: {ti}\n{text}"
        assert ti.get("try_number") == 1, f"{dag_id}.{task}: {ti}"  # the restart cost no try
    assert created == sum(expected_jobs.values()), f"{created} jobs created"  # none again after the restart
    assert final_jobs == jobs
    for dag_id, source in requests.items():
        results = work / dag_id / "results.jsonl"
        assert_in_input_order(source, results)
        assert not (results.parent / "results.failed.jsonl").exists()  # none failed: no failed file
    assert "Trigger exited without sending an event" not in logs
    assert API_KEY not in logs
