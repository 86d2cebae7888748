"""Benchmarks of the MaaS provider, each measured against a reference taken in the same run.

``python -m benchmarks`` (``make bench``) runs every figure; ``--smoke`` runs them at tiny sizes
(CI: ``make bench-smoke``); ``--only NAME`` runs one. See ``benchmarks/README.md`` for what each
figure means and the latest numbers. All traffic goes to emulators on 127.0.0.1.

Kept free of heavy imports: worker subprocesses (``python -m benchmarks.<figure> worker ...``)
import this package first.
"""

from __future__ import annotations

#: Figure modules in the order they run; each has ``NAME``, ``TITLE`` and ``run(smoke, workdir)``.
FIGURE_MODULES = (
    "benchmarks.emulator_ceiling",
    "benchmarks.triggerer_fanin",
    "benchmarks.poll_bound",
    "benchmarks.download",
    "benchmarks.upload",
    "benchmarks.split_validate",
    "benchmarks.merge_1m",
    "benchmarks.parse_cost",
    "benchmarks.reuse_index",
    "benchmarks.dry_run",
    "benchmarks.hostile_line",
    "benchmarks.progress_api",
    "benchmarks.end_to_end",
    "benchmarks.scale",
)
