"""`make demo`: run the example DAG end to end against the local emulator.

Starts the emulator, runs ``airflow dags test example_maas_batch`` on a throwaway AIRFLOW_HOME
(sqlite) under ``.demo/``, prints where the results are, the failed-requests file only when a request
failed, and a one-line summary, then stops the emulator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("MAAS_DEMO_DIR") or ROOT / ".demo")
DAG_ID = "example_maas_batch"


def failed_requests_line(results: Path) -> str | None:
    """The line naming the failed-requests file beside ``results``, or None when no request failed."""
    failed = results.with_name(f"{results.stem}.failed.jsonl")
    if not failed.exists() or failed.stat().st_size == 0:
        return None
    return f"Failed requests (input format: resubmit by passing this file as `source`): {failed}"


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    home = DEMO / "airflow"
    home.mkdir(parents=True)
    ready = DEMO / "emulator.url"
    output = DEMO / "results"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MAAS_EXAMPLE_OUTPUT": str(output),
        "MAAS_POLL_INTERVAL": "1",
    }
    emulator_log = (DEMO / "emulator.log").open("w")
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_maas.emulator",
            "--port",
            "0",
            "--job-duration",
            "3",
            "--ready-file",
            str(ready),
        ],
        stdout=emulator_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        for _ in range(100):
            if ready.exists() and ready.read_text().strip():
                break
            if emulator.poll() is not None:
                print(f"The emulator exited early; see {DEMO / 'emulator.log'}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        base_url = ready.read_text().strip()
        env["AIRFLOW_CONN_MAAS_DEFAULT"] = json.dumps(
            {
                "conn_type": "maas",
                "host": base_url,
                "password": "emulator-key",
                "extra": {"endpoint": "emulator-endpoint"},
            }
        )
        print(f"Emulator running at {base_url}")
        airflow = [sys.executable, "-m", "airflow"]
        subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        log_path = DEMO / "dag-test.log"
        print(f"Running `airflow dags test {DAG_ID}` (log: {log_path}) ...")
        with log_path.open("w") as log:
            result = subprocess.run([*airflow, "dags", "test", DAG_ID], env=env, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            print(f"The DAG failed; see {log_path}", file=sys.stderr)
            return result.returncode
        results = sorted(output.rglob("results.jsonl"))
        if not results:
            print(f"The DAG ran but wrote no results under {output}; see {log_path}", file=sys.stderr)
            return 1
        from airflow_provider_maas.batch.answers.results import iter_results, summarize

        with results[-1].open("rb") as handle:
            summary = summarize(iter_results(handle))
        print(f"Results: {results[-1]}")
        failed = failed_requests_line(results[-1])
        if failed:
            print(failed)
        print(
            f"Summary: {summary['requests']} requests, {summary['succeeded']} succeeded, {summary['failed']} failed, "
            f"{summary['total_tokens']} tokens"
        )
        return 0
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        emulator_log.close()


if __name__ == "__main__":
    sys.exit(main())
