"""The README's templated examples, run end to end (``dag.test()`` against the emulator) as the three
kinds of run Airflow 3 makes: a manual run (no logical date: ``{{ ds }}`` is undefined there), a
scheduled run and a backfill (a logical date and a data interval, from the DAG's timetable).

Each run must read the day's prompts it is meant to read and write that day's results in input order.
"""

from __future__ import annotations

import datetime
import importlib.util
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import assert_in_input_order, write_requests

DAG_FILE = ROOT / "tests" / "dags" / "readme_chain.py"


@pytest.fixture
def chain_dag(tmp_path, monkeypatch):
    """tests/dags/readme_chain.py (the README's block, its bucket in ``tmp_path``), loaded as dag.test() needs."""
    data = tmp_path / "bucket"
    monkeypatch.setenv("MAAS_README_BUCKET", str(data))
    spec = importlib.util.spec_from_file_location("readme_chain_under_test", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag, data


def _run_as(monkeypatch, run_type: str, interval: tuple[datetime.datetime, datetime.datetime], run_after):
    """Make ``dag.test()`` create a run of ``run_type`` with this data interval, as the scheduler would."""
    from airflow.models import dagrun
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    kind = DagRunType(run_type)

    def create(*, dag, run_id, logical_date, data_interval, run_after: datetime.datetime, **kwargs):
        session = kwargs["session"]
        return dag.create_dagrun(
            run_id=dagrun.DagRun.generate_run_id(run_type=kind, logical_date=logical_date, run_after=run_after_),
            logical_date=logical_date,
            data_interval=interval,
            run_after=run_after_,
            conf=kwargs["conf"],
            run_type=kind,
            state=DagRunState.RUNNING,
            triggered_by=kwargs["triggered_by"],
            start_date=run_after_,
            session=session,
        )

    run_after_ = run_after
    monkeypatch.setattr(dagrun, "get_or_create_dagrun", create)


def _scheduled_interval(dag, after: datetime.datetime):
    """The data interval the DAG's own timetable gives the run following the one that ended at ``after``."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    timetable = coerce_to_core_timetable(dag.timetable)
    previous = DataInterval(after - datetime.timedelta(days=1), after)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=previous, restriction=TimeRestriction(earliest=None, latest=None, catchup=True)
    )
    return info.logical_date, (info.data_interval.start, info.data_interval.end), info.run_after


def _prompts(data: Path, day: str) -> Path:
    (data / "prompts").mkdir(parents=True, exist_ok=True)
    return write_requests(data / "prompts" / f"{day}.jsonl", 7, prefix=f"Day {day}")


def _check(run, data: Path, day: str) -> None:
    assert run.state == "success"
    results = data / "results" / f"{day}.jsonl"
    assert results.is_file(), sorted(str(p) for p in data.rglob("*"))
    assert_in_input_order(data / "prompts" / f"{day}.jsonl", results)  # source= puts them in input order


def test_manual_run_without_a_logical_date_reads_the_day_it_was_triggered(emulator, chain_dag):
    dag, data = chain_dag
    today = datetime.datetime.now(datetime.timezone.utc).date()
    for day in (today, today + datetime.timedelta(days=1)):  # a run started just before midnight
        _prompts(data, day.isoformat())
    run = dag.test(logical_date=None)
    assert run.logical_date is None
    _check(run, data, run.run_after.date().isoformat())


def test_scheduled_run_reads_its_interval_not_the_day_it_runs(emulator, chain_dag, monkeypatch):
    dag, data = chain_dag
    logical_date, interval, run_after = _scheduled_interval(
        dag, datetime.datetime(2026, 3, 14, tzinfo=datetime.timezone.utc)
    )
    assert interval[0].date().isoformat() == "2026-03-14" and run_after.date().isoformat() == "2026-03-15"
    _prompts(data, "2026-03-14")
    _run_as(monkeypatch, "scheduled", interval, run_after)
    run = dag.test(logical_date=logical_date)
    assert run.run_type == "scheduled"
    _check(run, data, "2026-03-14")


def test_backfill_run_reads_its_interval(emulator, chain_dag, monkeypatch):
    dag, data = chain_dag
    logical_date, interval, run_after = _scheduled_interval(
        dag, datetime.datetime(2026, 2, 1, tzinfo=datetime.timezone.utc)
    )
    _prompts(data, "2026-02-01")
    _run_as(monkeypatch, "backfill", interval, run_after)
    run = dag.test(logical_date=logical_date)
    assert run.run_type == "backfill"
    _check(run, data, "2026-02-01")


def test_the_cost_control_example_runs_twice_as_written_with_file_parts(emulator, tmp_path, monkeypatch):
    """The README's "Cost control" block (tests/dags/readme_cost_control.py), its bucket in ``tmp_path``:
    a plan, a decision and a capped run with a canary, on the README's own input line (a file part),
    run manually twice: the second run writes a destination of its own rather than being refused, and
    the cap bounds the file part."""
    monkeypatch.setenv("MAAS_README_BUCKET", str(tmp_path))
    readme_line = next(
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith('{"request"') and "file_data" in line
    )
    (tmp_path / "all.jsonl").write_text((readme_line + "\n") * 25)
    spec = importlib.util.spec_from_file_location(
        "readme_cost_control_under_test", ROOT / "tests" / "dags" / "readme_cost_control.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for _ in range(2):
        run = module.dag.test(logical_date=None)
        assert run.state == "success"
        assert {ti.task_id: ti.state for ti in run.get_task_instances()}["predict"] == "success"
    outputs = sorted(tmp_path.glob("*/out.jsonl"))
    assert len(outputs) == 2 and all(len(p.read_text().splitlines()) == 25 for p in outputs)
