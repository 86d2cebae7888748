"""Never pay twice, with real Airflow processes: the create task's process is SIGKILLed (as the OOM
killer would) while its create request is in flight; the service has created the job. Airflow
retries the task (retries=3); the retry finds the "creating" marker and fails for good without
sending another create. Exactly one job exists. The marker is in ``task_state_store`` (Airflow >= 3.3)
or, as on Airflow 3.0-3.2 (the DAG's operator then gets no ``task_state_store``), in an Airflow Variable
written through the real Execution API."""

from __future__ import annotations

import os
import shutil
import signal
import sys

import pytest
from airflow import __version__ as airflow_version
from packaging.version import Version

from airflow_provider_maas.emulator import EmulatorConfig, run_emulator
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.airflow_processes import AirflowProcesses, wait_for
from tests.conftest import API_KEY, ENDPOINT, ROOT, connection_env
from tests.helpers import write_requests

DAG_ID = "maas_create_killed"
TASK = "create"
STARTUP = 150
STEP = 90

# Airflow 3.3 retries a task whose process was SIGKILLed. Airflow 3.0.6 marks it failed at once (seen
# running this test there: one job, no retry to refuse), so both cases run on 3.3; the "variable" one
# gives the operator the context of 3.0-3.2. There, the retry that matters is the scheduler's, after a
# whole worker is lost; it finds the same Variable.
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the task process through /proc"),
    pytest.mark.skipif(Version(airflow_version) < Version("3.3"), reason="a killed task is retried from 3.3"),
]


@pytest.mark.parametrize(
    "no_task_state_store", [pytest.param(False, id="task_state_store"), pytest.param(True, id="variable")]
)
def test_retry_after_a_killed_create_refuses_and_pays_once(tmp_path, monkeypatch, no_task_state_store):
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "tests" / "dags" / f"{DAG_ID}.py", dags)
    # The service creates the job and holds its answer: the task is killed while it waits for it.
    config = EmulatorConfig(
        api_key=API_KEY, endpoint=ENDPOINT, job_duration=3600, faults=("create:1:lost-timeout=600",)
    )
    with run_emulator(config) as emu:
        conn_name, conn_value = connection_env(emu.base_url, timeout=900)
        monkeypatch.setenv(conn_name, conn_value)
        MaaSHook().upload_file(write_requests(tmp_path / "r.jsonl", 3), "killed.jsonl")
        env = {conn_name: conn_value, "PYTHONPATH": str(ROOT)}
        if no_task_state_store:
            env["MAAS_TEST_NO_TASK_STATE_STORE"] = "1"
        airflow = AirflowProcesses(tmp_path / "airflow", dags, env)
        airflow.home.mkdir()
        with airflow:

            def diagnose() -> str:
                return f"jobs created: {emu.emulator.jobs_created}\n" + airflow.diagnose([DAG_ID], TASK)

            def ti() -> dict:
                return airflow.task_instance(DAG_ID, TASK) or {}

            airflow.migrate()
            airflow.start_api_server()
            airflow.start("dag-processor", "dag-processor")
            wait_for("the execution API server", airflow.api_ready, STARTUP, diagnose=diagnose)
            airflow.start("scheduler", "scheduler")
            wait_for("the create to be in flight", lambda: emu.emulator.jobs_created == 1, STARTUP, diagnose=diagnose)
            state = ti()
            assert (state["state"], state["try_number"]) == ("running", 1), state
            process = airflow.task_process(state["id"])
            assert process, f"no task process for {state}"
            os.kill(process[0], signal.SIGKILL)  # the task process only: its supervisor reports the death
            wait_for("the task to end", lambda: ti().get("state") == "failed", STEP, diagnose=diagnose)
            assert ti()["try_number"] == 2, diagnose()  # one automatic retry, which refused
            assert "An earlier try of this task sent a create-job request" in airflow.task_log(DAG_ID, TASK, 2)
            assert "'killed-in-flight'" in airflow.task_log(DAG_ID, TASK, 2)
            assert emu.emulator.jobs_created == 1
            assert API_KEY not in airflow.task_log(DAG_ID, TASK, 1) + airflow.task_log(DAG_ID, TASK, 2)
            # The marker the retry found: a Variable (its value is encrypted) only when there is no task_state_store.
            records = airflow.query("SELECT key FROM variable WHERE key LIKE 'maas_create.%'")
            assert len(records) == (1 if no_task_state_store else 0), records
