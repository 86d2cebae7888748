"""Test-only Airflow DAG: the README's "Cost control" example as written, its bucket on local disk
(``MAAS_README_BUCKET``) and a short poll interval; run by tests/test_readme_runs.py."""

from __future__ import annotations

import os
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
BUCKET = os.environ.get("MAAS_README_BUCKET", "/tmp/maas-readme-bucket")


def cost_control_example() -> str:
    """The README's python block under "### Cost control"."""
    section = README.read_text().split("### Cost control", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


_code = cost_control_example()
assert "s3://b/" in _code and '"paid_batch"' in _code
_code = _code.replace("s3://b/", BUCKET.rstrip("/") + "/").replace('"paid_batch"', '"readme_cost_control"')
_namespace: dict = {"__name__": __name__}
exec(compile(_code, __file__, "exec"), _namespace)  # the DAG lives in this file
dag = _namespace["dag"]
for _task in dag.tasks:
    _task.retries = 0
    if hasattr(_task, "poll_interval"):
        _task.poll_interval = 0.2
