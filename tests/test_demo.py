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
    assert "Failed requests" not in result.stdout  # nothing failed: no path to a file of nothing


def test_demo_names_the_failed_requests_file_only_when_a_request_failed(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from demo import failed_requests_line
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    results = tmp_path / "results.jsonl"
    failed = tmp_path / "results.failed.jsonl"
    results.write_text('{"request": {}, "response": {}, "status": ""}\n')
    assert failed_requests_line(results) is None  # no failed file at all
    failed.write_text("")
    assert failed_requests_line(results) is None  # written, but empty
    failed.write_text('{"request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}\n')
    line = failed_requests_line(results)
    assert line is not None and line.endswith(str(failed)) and "source" in line
