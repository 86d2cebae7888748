"""What importing the operator, sensor and trigger modules loads where a DAG is parsed (issue 21: the
parse cost, ``python -m benchmarks --only parse-cost``): the modules construction needs, not those the
first execute imports. The count is the one benchmarks/README.md's parse-cost section reports; a module
added to the parse-time imports changes it here first."""

from __future__ import annotations

import json
import subprocess
import sys

#: The provider's modules (packages included) the three imports load, as measured on 2026-12-06 (30 before
#: ``batch.settings``, ``batch.cost.estimates`` and ``batch.inputs.request_lines`` moved to first execute).
PARSE_TIME_MODULES = 26

#: Loaded by the first execute, poke or wait only: each costs import time and holds nothing construction
#: checks need (BatchSettings' dataclass of 30 fields was ~3 ms of the parse cost on its own).
FIRST_USE_ONLY = (
    "airflow_provider_maas.batch.settings",
    "airflow_provider_maas.batch.cost.estimates",
    "airflow_provider_maas.batch.inputs.request_lines",
    "airflow_provider_maas.batch.run",
    "airflow_provider_maas.hooks.maas",
    "airflow_provider_maas.storage",
    "airflow_provider_maas.triggers.events",
    "requests",
    "aiohttp",
)

_CHILD = """
import json, sys
import airflow.sdk
airflow.sdk.BaseOperator
before = set(sys.modules)
import airflow_provider_maas.operators.maas, airflow_provider_maas.sensors.maas, airflow_provider_maas.triggers.maas
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _loaded_at_parse_time() -> list[str]:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def test_parse_time_imports_load_what_construction_needs_only():
    loaded = _loaded_at_parse_time()
    own = [m for m in loaded if m.startswith("airflow_provider_maas")]
    assert not set(FIRST_USE_ONLY) & set(loaded), sorted(set(FIRST_USE_ONLY) & set(loaded))
    assert len(own) == PARSE_TIME_MODULES, own
