"""Issue 20 in a real task log: ``airflow dags test`` of ``tests/dags/maas_hostile.py`` (every operator
that calls the service, the poking and the deferred sensor) against a service that echoes the API key
in every form, in error bodies and in success bodies, or whose jobs end with a message that forges a
log line, clears the screen, flips text and splits lines. The whole output of the run (the task logs
of ``dags test``) is searched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import write_requests
from tests.hostile_service import RAW_CONTROLS, hostile, key_forms

DAG_FILE = ROOT / "tests" / "dags" / "maas_hostile.py"
TASKS = ("upload", "create", "wait_poke", "wait_deferred", "download", "batch")


def dags_test(mode: str, tmp_path) -> str:
    """The output of ``airflow dags test maas_hostile`` against a hostile service in ``mode``."""
    from tests.hostile_service import KEY

    with hostile(mode) as service:
        env = {
            **os.environ,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE),
            "PYTHONPATH": str(ROOT),  # the DAG imports tests.dag_builders
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "AIRFLOW_CONN_MAAS_DEFAULT": json.dumps(
                {"conn_type": "maas", "host": service.base_url, "password": KEY, "extra": {"endpoint": "ep"}}
            ),
            "MAAS_HOSTILE_REQUESTS": str(write_requests(tmp_path / "requests.jsonl", 2)),
            "MAAS_HOSTILE_OUTPUT": str(tmp_path / "out"),
        }
        run = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "test", "maas_hostile"],
            env=env,
            capture_output=True,
            timeout=600,
        )
        assert service.calls, "the DAG called the service"
    output = (run.stdout + run.stderr).decode("utf-8", errors="replace")
    # `dags test` prints the task logs; any task log file it writes under AIRFLOW_HOME counts too.
    folder = Path(os.environ["AIRFLOW_HOME"], "logs")
    logs = [path.read_text(errors="replace") for path in folder.rglob("*") if path.is_file()]
    text = "\n".join([output, *logs])
    for task in TASKS:
        assert f"task_id='{task}'" in text or f"task_id={task}" in text, (task, text[-3000:])
    return text


@pytest.mark.parametrize("mode", ["errors", "echo"])
def test_no_form_of_the_key_in_a_real_task_log(tmp_path, mode):
    text = dags_test(mode, tmp_path)
    assert "MaaS" in text and "***" in text  # errors were logged, with what they quoted redacted
    lowered = text.lower()
    found = [name for name, form in key_forms().items() if form in text or form.lower() in lowered]
    assert not found, found


def test_a_forged_job_message_stays_on_its_own_log_line(tmp_path):
    text = dags_test("forged", tmp_path)
    assert "quota exhausted\\x0a2026-12-06T03:00:00.000000Z" in text  # escaped, visibly
    assert not [c for c in RAW_CONTROLS if c in text]
    # The forged line never starts a line of the log: it stays inside the line of the real message.
    assert not re.search(r"^\s*2026-12-06T03:00:00\.000000Z", text, flags=re.M)
    # Wherever the forged text appears (the job's error, a file name quoted in an integrity error),
    # it follows a visible escape on the line of a real message.
    forged = [line for line in text.splitlines() if "FAKE: all 10 requests succeeded" in line]
    assert forged and all(
        line.split("FAKE: all 10", 1)[0].endswith("\\x0a2026-12-06T03:00:00.000000Z [info     ] ") for line in forged
    )
