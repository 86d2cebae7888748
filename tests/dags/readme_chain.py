"""Test-only Airflow DAG: the README's chain example as written, its bucket on local disk
(``MAAS_README_BUCKET``) and a short poll interval; run three ways by tests/test_readme_runs.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
BUCKET = os.environ.get("MAAS_README_BUCKET", "/tmp/maas-readme-bucket")


def chain_example() -> str:
    """The README's python block that chains upload, create, the sensor and download."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "MaaSBatchJobSensor(" in b and "MaaSUploadFileOperator(" in b]
    return block


def localised(code: str, bucket: str) -> str:
    assert "s3://my-bucket/" in code and "poll_interval=60" in code and '"my_batch"' in code
    code = code.replace("s3://my-bucket/", bucket.rstrip("/") + "/").replace("poll_interval=60", "poll_interval=0.2")
    return code.replace('"my_batch"', '"readme_chain"')


_namespace: dict = {"__name__": __name__}
exec(compile(localised(chain_example(), BUCKET), __file__, "exec"), _namespace)  # the DAG lives in this file
dag = _namespace["dag"]
for _task in dag.tasks:
    _task.retries = 0  # a failing try fails the test at once, not after three retries 5 minutes apart
