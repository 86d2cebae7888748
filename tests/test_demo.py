"""`make demo` (scripts/demo.py) end to end: emulator, `airflow dags test`, results and summary."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_demo_runs_the_example_dag_and_prints_a_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MAAS_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MAAS_DEMO_DIR"] = str(tmp_path / "demo")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Summary: 9 requests, 9 succeeded, 0 failed" in result.stdout
    results = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("Results: ")]
    assert results and os.path.getsize(results[0]) > 0
