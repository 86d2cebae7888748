"""Figure: DAG parse cost, i.e. what importing the provider adds to a DAG file.

Each run is a fresh interpreter that imports ``airflow.sdk`` and reads ``airflow.sdk.BaseOperator``
(what any DAG file does; the reference), then imports the provider's operator, sensor and trigger
modules, timing both with ``perf_counter``. The median of the runs is reported. The same child
records which modules the provider import loads (``sys.modules`` before/after) and any network
activity during it. Part of the time is Airflow's own ``airflow.triggers.base`` and
``airflow.sdk.bases.sensor``, which any deferrable provider's trigger and sensor import: the child
imports those first, so the breakdown comes from the same runs (an audit hook on socket events). For scale, it then times importing the HTTP
clients eagerly (``requests``, ``aiohttp``), which the provider defers to the first call.

Bytecode caching is on (``PYTHONPYCACHEPREFIX`` under the temp directory, after one warm-up run), as
for an installed package, even where the environment sets ``PYTHONDONTWRITEBYTECODE``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import Figure, child_env, median

NAME = "parse-cost"
TITLE = "import of the provider's operator, sensor and trigger modules on top of airflow.sdk"
HEAVY = ("requests", "urllib3", "aiohttp", "yarl", "multidict", "tenacity", "google_crc32c", "fsspec", "upath")

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import airflow.sdk
airflow.sdk.BaseOperator
t1 = time.perf_counter()
before = set(sys.modules)
import airflow.triggers.base, airflow.sdk.bases.sensor
t1b = time.perf_counter()
network = []
def audit(event, args):
    if event.startswith("socket.") and event not in ("socket.__new__",):
        network.append(event)
sys.addaudithook(audit)
import airflow_provider_maas.operators.maas
import airflow_provider_maas.sensors.maas
import airflow_provider_maas.triggers.maas
t2 = time.perf_counter()
provider_network = list(network)  # the client imports below are not the provider's
new = sorted(set(sys.modules) - before)
t3 = time.perf_counter()
import requests, aiohttp
t4 = time.perf_counter()
print(json.dumps({"sdk_ms": 1000 * (t1 - t0), "provider_ms": 1000 * (t2 - t1), "airflow_bases_ms": 1000 * (t1b - t1), "clients_ms": 1000 * (t4 - t3),
                  "new_modules": new, "network": provider_network, "already": sorted(m for m in before if m in %(heavy)r)}))
"""


def run(smoke: bool, workdir: Path) -> Figure:
    runs = 1 if smoke else 20
    figure = Figure(NAME, TITLE, "`import airflow.sdk` + `airflow.sdk.BaseOperator` in the same fresh interpreters")
    # A lasting cache (sources' mtimes are checked): later runs skip the first compile.
    env = child_env(PYTHONPYCACHEPREFIX=str(Path(tempfile.gettempdir()) / "maas-bench-pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not smoke:
        _child(env)  # warm-up: writes the bytecode caches, as an installed package has them
    results = [_child(env) for _ in range(runs)]
    provider = median([r["provider_ms"] for r in results])
    sdk = median([r["sdk_ms"] for r in results])
    clients = median([r["clients_ms"] for r in results])
    new = results[-1]["new_modules"]
    heavy = sorted({m.split(".")[0] for m in new} & set(HEAVY))
    network = sorted({e for r in results for e in r["network"]})
    figure.add("added import time, median (ms)", provider, sdk, provider / sdk, "< 20 ms", provider < 20)
    bases = median([r["airflow_bases_ms"] for r in results])
    figure.add("  of which Airflow's trigger + sensor base modules (ms)", bases)
    figure.add("  of which the provider's own modules (ms)", provider - bases)
    figure.add(
        "heavy modules pulled in",
        ", ".join(heavy) or "none",
        None,
        None,
        "none of requests/aiohttp/tenacity",
        not heavy,
    )
    figure.add("network activity during the import", ", ".join(network) or "none", None, None, "none", not network)
    figure.add("for scale: eager `import requests, aiohttp` after it (ms)", clients, sdk, clients / sdk)
    own = [m for m in new if m.startswith("airflow_provider_maas")]
    other = [m for m in new if not m.startswith("airflow_provider_maas")]
    times = ", ".join(f"{r['provider_ms']:.0f}" for r in results)
    figure.notes += [
        f"{runs} fresh interpreters; provider import {times} ms.",
        f"Provider modules loaded ({len(own)}): {', '.join(own)}.",
        f"Other modules loaded by the provider import ({len(other)}): {', '.join(other) or 'none'}.",
        f"Already loaded by airflow.sdk itself: {', '.join(results[-1]['already']) or 'none'}.",
    ]
    return figure


def _child(env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD % {"heavy": HEAVY}],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"import child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])
