"""docs/quickstart.md, run as a new user would: its two shell blocks and its DAG file, in a fresh
Airflow home, the emulator on a free port, nothing from the test session's own set-up."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

from airflow_provider_maas.batch.answers.results import iter_results, request_key
from airflow_provider_maas.batch.inputs.request_lines import iter_request_lines
from tests.conftest import ROOT

QUICKSTART = (ROOT / "docs" / "quickstart.md").read_text()
#: What a new user has to wait for, the install aside: the page promises five minutes.
WALL_LIMIT = 300


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", QUICKSTART, flags=re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _user_env() -> dict[str, str]:
    """The environment of a new user's shell: no Airflow or test settings of this session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MAAS_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def test_quickstart_runs_as_written_within_five_minutes(tmp_path):
    setup, run = _blocks("bash")
    (dag_file,) = _blocks("python")
    port = str(_free_port())
    assert "8089" in setup
    dag_path = "$AIRFLOW_HOME/dags/maas_quickstart.py"
    assert f"`{dag_path}`" in QUICKSTART
    (tmp_path / "dag.py").write_text(dag_file)
    script = "\n".join(
        [
            "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",  # the emulator stops even if a step fails
            setup.replace("8089", port),
            f'cp "{tmp_path / "dag.py"}" "{dag_path}"',
            run,
        ]
    )
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-ec", script], cwd=tmp_path, env=_user_env(), capture_output=True, text=True, timeout=WALL_LIMIT
    )
    wall = time.monotonic() - started
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert wall < WALL_LIMIT
    data = tmp_path / "maas-quickstart" / "data"
    (results,) = [p for p in (data / "results").glob("*.jsonl") if not p.name.endswith(".failed.jsonl")]
    with (data / "prompts.jsonl").open("rb") as handle:
        wanted = [request_key(line.request) for line in iter_request_lines(handle)]
    with results.open("rb") as handle:
        records = list(iter_results(handle))
    assert len(wanted) == 250
    assert [request_key(r.request) for r in records] == wanted  # every request, in input order
    assert all(r.succeeded for r in records)
    assert '"response"' in result.stdout  # `head` showed the results
