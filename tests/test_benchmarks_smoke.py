"""``make bench-smoke``: every benchmark still runs (tiny sizes) and prints its table.

Not a timed test: the figures' values are not checked, only that each figure ran to the end.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

FIGURES = (
    "emulator-ceiling",
    "triggerer-fanin",
    "poll-bound",
    "download",
    "upload",
    "split-validate",
    "merge-1m",
    "parse-cost",
    "reuse-index",
    "dry-run",
    "hostile-line",
    "progress-api",
    "end-to-end",
    "scale",
)


def test_figure_list_matches_the_package():
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import FIGURE_MODULES
    finally:
        sys.path.remove(str(ROOT))
    assert tuple(m.rsplit(".", 1)[1].replace("_", "-") for m in FIGURE_MODULES) == FIGURES


def test_benchmarks_smoke():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke"],
        cwd=ROOT,
        env=dict(os.environ),  # the runner makes its own throwaway AIRFLOW_HOME
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for name in FIGURES:
        assert f"### {name}:" in proc.stdout, f"figure {name} printed nothing:\n{output[-6000:]}"
    assert "**FAILED**" not in proc.stdout, proc.stdout
    assert "| metric | value | reference | ratio | target | met |" in proc.stdout
