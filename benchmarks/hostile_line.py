"""Figure: a 2 GiB input of one line (no newline), refused by every pass that reads it.

Issue 19 (finding 13): the batch operator's dedupe pass read whole lines with no cap, so such a
file took 6.2 GB of memory for 42 s before "line 1: not valid JSON" (a normal worker is
OOM-killed on every try). Each pass now refuses a line as soon as it is over its limit (50 MiB for
a request, 100 MiB for a results line). Measured in fresh interpreters, peak RSS growth from
``VmHWM`` reset once the modules are loaded: ``MaaSBatchPredictionOperator.execute`` (its first
pass is the dedupe pass), and each pass alone (dedupe, planning, the reuse index over the same file
given as ``reuse_results``). The reference reads the whole file in 8 MiB chunks, keeping nothing:
the floor of any reader that does not stop early. Writing the file is not timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks._common import Figure, child_env, measured, run_worker

NAME = "hostile-line"
TITLE = "a 2 GiB input with no newline: refused with bounded memory (time, peak RSS)"
MODULE = "benchmarks.hostile_line"
PASSES = ("operator", "dedupe", "plan", "reuse")


def _write_one_line(path: Path, size: int) -> None:
    block = b"x" * 2**20
    with path.open("wb") as out:
        out.write(b'{"request": {"contents": [{"role": "user", "parts": [{"text": "')
        for _ in range(size // len(block)):
            out.write(block)


def run(smoke: bool, workdir: Path) -> Figure:
    size = 128 * 2**20 if smoke else 2 * 2**30
    path = workdir / "one-line.jsonl"
    _write_one_line(path, size)
    env = child_env("http://127.0.0.1:9")  # a connection the operator resolves; the line is refused before any call
    figure = Figure(NAME, TITLE, "reading the whole file in 8 MiB chunks (nothing kept), fresh interpreter")
    try:
        reference = run_worker(MODULE, ["read", str(path)], env=env, workdir=workdir, timeout=600)
        for name in PASSES:
            result = run_worker(MODULE, [name, str(path), str(workdir)], env=env, workdir=workdir, timeout=600)
            label = "batch operator, execute" if name == "operator" else f"{name} pass alone"
            figure.add(
                f"{label}: time to refuse (s)", result["wall"], reference["wall"], result["wall"] / reference["wall"]
            )
            figure.add(
                "  peak RSS growth (MB)",
                result["rss_growth"],
                reference["rss_growth"],
                None,
                "< 256 MB" if not smoke else "",
                result["rss_growth"] < 256 if not smoke else None,
            )
            if name == "operator":
                figure.add("  peak RSS of the process (MB)", result["peak"], reference["peak"])
                figure.notes.append(f"The operator's error: {result['error'][:160]}")
    finally:
        path.unlink()
    figure.notes += [
        f"Input: {size / 2**30:.2f} GiB, one line, no newline. Before issue 19: 6.2 GB and 42 s (from the issue; "
        "not re-measured, it needs 6 GB of memory).",
        "Each pass stops after reading its limit plus one 8 MiB chunk, whatever the file's size.",
    ]
    return figure


def _pass(name: str, path: str, workdir: str) -> str:
    """Run one pass over ``path`` until it refuses; return the error's text."""
    import functools
    import io

    from airflow_provider_maas.batch.answers.matching import AnswerStore
    from airflow_provider_maas.batch.answers.pay_once import write_requests_to_send
    from airflow_provider_maas.batch.answers.results import ResultsFormatError
    from airflow_provider_maas.batch.inputs.shards import plan_shards
    from airflow_provider_maas.exceptions import MaaSInputError
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

    try:
        if name == "operator":
            from types import SimpleNamespace

            ti = SimpleNamespace(dag_id="bench", task_id="hostile", run_id="r1", map_index=-1, max_tries=1)
            operator = MaaSBatchPredictionOperator(task_id="hostile", source=path, destination=f"{workdir}/out.jsonl")
            operator.execute({"ti": ti, "run_id": "r1"})  # type: ignore[arg-type]
        with open(path, "rb") as handle:
            if name == "dedupe":
                write_requests_to_send(handle, io.BytesIO(), opener=functools.partial(open, mode="rb"))
            elif name == "plan":
                plan_shards(handle)
            elif name == "reuse":
                with AnswerStore() as store:
                    store.add("reuse_results[0]", handle, successes_only=True)
    except (MaaSInputError, ResultsFormatError) as err:
        return str(err)
    raise AssertionError(f"the {name} pass accepted a line of {Path(path).stat().st_size} bytes")


def _worker(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "read":

        def read() -> None:
            with open(path, "rb") as handle:
                while handle.read(8 * 2**20):
                    pass

        measured(read)
        return
    import airflow_provider_maas.operators.maas  # noqa: F401  (loaded before the peak is reset)

    measured(lambda: {"error": _pass(mode, path, argv[2])})


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2:])
