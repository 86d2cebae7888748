"""``python -m benchmarks [--smoke] [--only NAME ...] [--keep]``: run the figures and print their tables.

Exit status 0 when every figure ran (whether or not its targets were met), 1 when one crashed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import FIGURE_MODULES
from benchmarks._common import Figure, render

_SLOWEST = "benchmarks.end_to_end"


def _names() -> dict[str, str]:
    return {module.rsplit(".", 1)[1].replace("_", "-"): module for module in FIGURE_MODULES}


def _isolate_airflow(workdir: Path) -> None:
    """A throwaway AIRFLOW_HOME (absolute sqlite URL) for this process and every child."""
    home = workdir / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ.pop("AIRFLOW_CONN_MAAS_DEFAULT", None)


def main(argv: list[str] | None = None) -> int:
    names = _names()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the benchmarks work (CI)")
    parser.add_argument("--only", action="append", choices=sorted(names), help="run only this figure (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, files)")
    parser.add_argument("--figures-only", action="store_true", help=argparse.SUPPRESS)  # no header/total lines
    args = parser.parse_args(argv)

    selected = [names[n] for n in args.only] if args.only else list(FIGURE_MODULES)
    workdir = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    _isolate_airflow(workdir)
    mode = "smoke" if args.smoke else "full"
    if not args.figures_only:
        print(
            f"# MaaS provider benchmarks ({mode}) - {time.strftime('%Y-%m-%d %H:%M')}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, work dir {workdir}\n",
            flush=True,
        )
    failed = 0
    started = time.monotonic()
    # Smoke only: the slowest figure (one process, mostly dag.test() start-up) runs beside the others.
    beside = None
    if args.smoke and len(selected) > 1 and _SLOWEST in selected:
        selected.remove(_SLOWEST)
        beside = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks",
                "--smoke",
                "--figures-only",
                "--only",
                _SLOWEST.rsplit(".", 1)[1].replace("_", "-"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        for module_name in selected:
            module = importlib.import_module(module_name)
            figure_dir = workdir / module.NAME
            figure_dir.mkdir(parents=True, exist_ok=True)
            began = time.monotonic()
            try:
                figure = module.run(smoke=args.smoke, workdir=figure_dir)
            except Exception as exc:
                failed += 1
                figure = Figure(module.NAME, module.TITLE, "-", error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            figure.seconds = time.monotonic() - began
            print(render(figure), flush=True)
        if beside is not None:
            output, _ = beside.communicate()
            print(output, end="", flush=True)
            if beside.returncode != 0:
                failed += 1
                print(f"{_SLOWEST} exited {beside.returncode}", flush=True)
    finally:
        if beside is not None and beside.poll() is None:
            beside.kill()
            beside.wait()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not args.figures_only:
        print(f"Total: {time.monotonic() - started:.0f} s; {failed} figure(s) failed.", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
