"""``make test-distributed``: one distributed deployment (deployment.py) for the whole session.

These tests start PostgreSQL, Redis, an S3-compatible server and seven Airflow processes; they run
only when ``MAAS_TEST_DISTRIBUTED=1`` (the make target sets it after installing what they need), so a
plain ``pytest`` or ``make test`` skips them. What ran where is printed at the end of the session.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.distributed.deployment import BUCKET, REPORT, Deployment
from tests.helpers import write_requests

if os.environ.get("MAAS_TEST_DISTRIBUTED") != "1":
    collect_ignore_glob = ["test_*.py"]

#: (key in the bucket, number of requests) of the inputs the DAGs read.
INPUTS = {"input/requests-100.jsonl": 100, "input/requests-300.jsonl": 300}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """The request files, here (to compare results against) and in the object store (for the DAGs)."""
    folder = tmp_path_factory.mktemp("inputs")
    return {key: write_requests(folder / key.rsplit("/", 1)[-1], count) for key, count in INPUTS.items()}


@pytest.fixture(scope="session")
def deployment(inputs):
    """Every server and Airflow component running, the inputs in the bucket, the DAGs scheduled."""
    dep = Deployment(emulator_args=("--job-duration", "4", "--seed", "12"))

    def terminated(signum, frame):  # `timeout` or CI stopping us: leave nothing running, then end with a summary
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        dep.stop_all()
        pytest.exit(f"stopped by signal {signum} (the time limit?); every process it started is stopped", 128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        dep.start_all()
        s3 = dep.s3()
        for key, path in inputs.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        dep.start_scheduling()
        yield dep
    finally:
        REPORT.append("phases: " + ", ".join(dep.timings))
        dep.stop_all()
        signal.signal(signal.SIGTERM, previous)


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("distributed deployment: what ran where")
        for line in REPORT:
            terminalreporter.write_line(line)
