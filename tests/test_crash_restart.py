"""Crash and restart with real Airflow processes (issue 5, item 3).

One throwaway deployment (own AIRFLOW_HOME, sqlite, LocalExecutor): ``airflow api-server``
(execution API), ``scheduler``, ``dag-processor`` and ``triggerer`` run as real processes, the
emulator in a thread of this test. Three DAGs from ``tests/dags/`` run at once, each a single
``MaaSBatchPredictionOperator`` task over 150 requests (2 shards, so 2 jobs), ``retries=1``:

* ``maas_crash_task_process`` (``deferrable=False``): once both jobs exist and the task polls them,
  the task's own process (``airflow worker -- <ti id>``) gets SIGKILL, as the OOM killer would. Its
  supervisor reports the failure, Airflow retries the task.
* ``maas_crash_worker`` (``deferrable=False``): the whole worker, supervisor and task process, gets
  SIGKILL, as when a machine or container dies: nobody reports anything; the scheduler fails the
  task when its heartbeat stops (timeout lowered to 25 s here) and retries it.
* ``maas_crash_triggerer`` (``deferrable=True``): while the task is deferred and its trigger polls,
  the triggerer gets SIGTERM (graceful stop); a new one must take the trigger over; that one then
  gets SIGKILL with its whole process group (no cleanup at all), and a third one must take over.

Each retry must find its progress in ``task_state_store`` and poll the SAME jobs; each new
triggerer must poll the same jobs. The jobs stay RUNNING (emulator job duration: one hour) until the
test has seen that, then the test ends them through the emulator, so every step is checked whatever
the machine's speed. At the end: every task succeeded, the emulator created exactly one job per shard
(6 in all), each results file holds all 150 results in input order, and the API key is in no task log.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from airflow import __version__ as airflow_version
from packaging.version import Version

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator
from tests.airflow_processes import (
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

KILLED_TASK = "maas_crash_task_process"
LOST_WORKER = "maas_crash_worker"
TRIGGERER = "maas_crash_triggerer"
DAG_IDS = (KILLED_TASK, LOST_WORKER, TRIGGERER)
TASK = "predict"
REQUESTS = 150  # 2 shards of at most 100 requests
SHARDS = 2

# Generous deadlines (a loaded 2-core CI machine): each wait ends as soon as its condition holds.
STARTUP = 150
STEP = 90

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="finds and kills Airflow's task processes through /proc (Linux only)",
    ),
    pytest.mark.skipif(
        Version(airflow_version) < Version("3.3"),
        reason="reattaching on retry needs task_state_store (Airflow >= 3.3); before, a retry creates new jobs",
    ),
]


def test_killed_workers_and_restarted_triggerers_reattach_to_the_same_jobs(tmp_path):
    phase = Phases()
    work, dags = deployment_dirs(tmp_path, "maas_crash_restart.py")
    requests = write_requests(work / "requests.jsonl", REQUESTS)
    config = EmulatorConfig(api_key=API_KEY, endpoint=ENDPOINT, job_duration=3600)

    with run_emulator(config) as emu:
        conn_name, conn_value = connection_env(emu.base_url)
        airflow = AirflowProcesses(
            tmp_path / "airflow",
            dags,
            {
                conn_name: conn_value,
                "MAAS_CRASH_DIR": str(work),
                "PYTHONPATH": str(ROOT),
                # A worker lost with its supervisor is found by its missing heartbeat (default 300 s).
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "25",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            },
        )
        airflow.home.mkdir()
        with airflow:

            def diagnose() -> str:
                jobs = {name: (job.display_name, job.state) for name, job in list(emu.emulator.jobs.items())}
                return f"emulator jobs: {jobs}\n" + airflow.diagnose(DAG_IDS, TASK)

            def ti(dag_id: str) -> dict:
                return airflow.task_instance(dag_id, TASK) or {}

            def step(what: str, check, timeout: float = STEP):
                return wait_for(what, check, timeout, diagnose=diagnose)

            # --- Start the deployment ------------------------------------------------------
            airflow.migrate()
            airflow.start_api_server()
            airflow.start("dag-processor", "dag-processor")
            airflow.start("triggerer", "triggerer")
            # Workers need the execution API from their first call: start the scheduler after it.
            step("the execution API server", airflow.api_ready, STARTUP)
            airflow.start("scheduler", "scheduler")
            phase("started")

            # --- Every task waits on its 2 jobs --------------------------------------------
            def polling(dag_id: str) -> list[str] | None:
                airflow.check_running()
                jobs = emulator_jobs(emu, dag_id)
                saved = f"Shard {SHARDS - 1}: job" in airflow.task_log(dag_id, TASK, 1)  # logged after the save
                return jobs if len(jobs) == SHARDS and saved and emulator_polls(emu, jobs, 0) else None

            jobs = {
                dag_id: step(f"{dag_id} to poll its jobs", lambda d=dag_id: polling(d), STARTUP)
                for dag_id in DAG_IDS[:2]
            }

            def trigger_polling() -> list[str] | None:
                airflow.check_running()
                state = ti(TRIGGERER)
                if state.get("state") != "deferred" or not airflow.trigger_owner(state.get("trigger_id") or -1):
                    return None
                found = emulator_jobs(emu, TRIGGERER)
                return found if len(found) == SHARDS and emulator_polls(emu, found, time.time() - 1.5) else None

            jobs[TRIGGERER] = step("the deferred task's trigger to poll its jobs", trigger_polling, STARTUP)
            phase("all waiting")

            # --- The kills ---------------------------------------------------------------------
            processes = {}
            for dag_id in (KILLED_TASK, LOST_WORKER):
                state = ti(dag_id)
                assert state["state"] == "running" and state["try_number"] == 1, state
                processes[dag_id] = airflow.task_process(state["id"])
                assert processes[dag_id], f"no task process for {dag_id} {state} under the scheduler"
            os.kill(processes[KILLED_TASK][0], signal.SIGKILL)  # the task process only
            task_pid, supervisor_pid = processes[LOST_WORKER]
            os.kill(supervisor_pid, signal.SIGKILL)  # the supervisor first: nobody reports the death
            os.kill(task_pid, signal.SIGKILL)
            first_triggerer = airflow.procs["triggerer"]
            first_triggerer.send_signal(signal.SIGTERM)  # as a deployment or ``docker stop`` does

            def resumed(dag_id: str) -> list[str]:
                """Wait for try 2 of ``dag_id`` to resume from its task state and poll the old jobs."""

                def resuming() -> bool:
                    airflow.check_running("scheduler", "api-server", "dag-processor")
                    return "Resuming a previous try" in airflow.task_log(dag_id, TASK, 2)

                step(f"try 2 of {dag_id} to resume from its task state", resuming)
                since = time.time()
                step(f"try 2 of {dag_id} to poll the jobs of try 1", lambda: emulator_polls(emu, jobs[dag_id], since))
                return jobs[dag_id]

            end_emulator_jobs(emu, resumed(KILLED_TASK))
            phase("killed task retried")

            # --- The triggerer: SIGTERM, a new one; SIGKILL, a third one --------------------------
            step("the SIGTERMed triggerer to exit", lambda: first_triggerer.poll() is not None)
            assert first_triggerer.returncode == 0, f"the triggerer exited with {first_triggerer.returncode} on SIGTERM"
            assert ti(TRIGGERER)["state"] == "deferred", ti(TRIGGERER)
            stopped_at = time.time()
            second = airflow.start("triggerer", "triggerer")
            step(
                "a new triggerer to poll the jobs (after SIGTERM)",
                lambda: second.poll() is None and emulator_polls(emu, jobs[TRIGGERER], stopped_at),
            )
            phase("2nd triggerer polling")
            assert airflow.kill_group("triggerer", signal.SIGKILL) is not None, "the SIGKILLed triggerer still runs"
            assert ti(TRIGGERER)["state"] == "deferred", ti(TRIGGERER)
            killed_at = time.time() + 1  # no request of the killed triggerer is in flight after this
            third = airflow.start("triggerer", "triggerer")
            step(
                "a third triggerer to poll the jobs (after SIGKILL)",
                lambda: third.poll() is None and emulator_polls(emu, jobs[TRIGGERER], killed_at),
            )
            phase("3rd triggerer polling")
            end_emulator_jobs(emu, jobs[TRIGGERER])

            # --- The lost worker: failed by the scheduler when its heartbeat stopped, retried ----
            end_emulator_jobs(emu, resumed(LOST_WORKER))
            phase("lost worker retried")

            # --- Every task finishes -------------------------------------------------------
            for dag_id in DAG_IDS:
                step(f"{dag_id} to end", lambda d=dag_id: ti(d).get("state") in {"success", "failed"})
                assert ti(dag_id)["state"] == "success", diagnose()
            phase("all succeeded")
            final = {dag_id: ti(dag_id) for dag_id in DAG_IDS}
            logs = {(d, attempt): airflow.task_log(d, TASK, attempt) for d in DAG_IDS for attempt in (1, 2, 3)}

        # --- What must hold ----------------------------------------------------------------------
        # Exactly one job per shard: no retry and no restarted triggerer created one.
        assert emu.emulator.jobs_created == len(DAG_IDS) * SHARDS, diagnose()
        for dag_id in DAG_IDS:
            assert emulator_jobs(emu, dag_id) == jobs[dag_id]
    for dag_id in (KILLED_TASK, LOST_WORKER):
        assert final[dag_id]["try_number"] == 2  # the kill failed try 1; try 2 reattached and finished
        assert "0 shards done, 2 jobs running; no job is recreated" in logs[(dag_id, 2)]
        assert "Created batch job" not in logs[(dag_id, 2)]
        assert not logs[(dag_id, 3)]
    assert final[TRIGGERER]["try_number"] == 1  # the triggerer restarts cost no task retry
    assert not logs[(TRIGGERER, 2)]
    for dag_id in DAG_IDS:
        assert_in_input_order(requests, work / dag_id / "results.jsonl")
        assert not (work / dag_id / "results.failed.jsonl").exists()  # none failed: no failed file
    assert not any(API_KEY in text for text in logs.values())
    print("\ncrash/restart: " + str(phase))
