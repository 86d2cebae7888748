"""The example DAGs, end to end in real Airflow (``dag.test()``) against the emulator.

The emulator shuffles result lines and echoes requests with null fields added (its defaults),
so these runs prove the results are matched to their requests, not assumed in order.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from airflow_provider_maas.batch.answers.results import iter_results, request_key
from airflow_provider_maas.batch.inputs.request_lines import iter_request_lines
from tests.conftest import API_KEY, ROOT
from tests.helpers import assert_asset_summary, assert_in_input_order

EXAMPLES = ROOT / "example_dags"


def _load_dag(name: str, monkeypatch, output: Path):
    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(output))
    monkeypatch.setenv("MAAS_POLL_INTERVAL", "0.1")
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _only(pattern: str, root: Path) -> Path:
    (found,) = list(root.rglob(pattern))
    return found


@pytest.fixture
def emu(emulator_factory):
    return emulator_factory(job_duration=0.5, shuffle_results=True, normalise_requests=True)


def test_example_maas_batch(emu, tmp_path, monkeypatch, capsys):
    dag = _load_dag("example_maas_batch", monkeypatch, tmp_path)
    run = dag.test()
    assert run.state == "success"
    results = _only("results.jsonl", tmp_path)
    records = assert_in_input_order_any(EXAMPLES / "data" / "example_requests.jsonl", results)
    assert all(r.succeeded for r in records)
    assert emu.emulator.jobs_created == 1
    _assert_no_key(capsys.readouterr(), run, emu)


def test_example_maas_batch_single_task(emu, tmp_path, monkeypatch, capsys):
    dag = _load_dag("example_maas_batch_single_task", monkeypatch, tmp_path)
    run = dag.test()
    assert run.state == "success"
    results = _only("results.jsonl", tmp_path)
    assert_in_input_order(EXAMPLES / "data" / "example_requests.jsonl", results)
    assert emu.emulator.jobs_created == 1
    _assert_no_key(capsys.readouterr(), run, emu)


def test_example_maas_batch_mapped_250_requests(emu, tmp_path, monkeypatch, capsys):
    dag = _load_dag("example_maas_batch_mapped", monkeypatch, tmp_path)
    run = dag.test()
    assert run.state == "success"
    results = _only("results.jsonl", tmp_path)
    requests = _only("requests.jsonl", tmp_path)
    assert_in_input_order(requests, results)
    assert not list(tmp_path.rglob("results.failed.jsonl"))  # none failed: no failed file
    assert emu.emulator.jobs_created == 3
    _assert_no_key(capsys.readouterr(), run, emu)


def test_single_task_operator_250_requests_deferred(emu, tmp_path, monkeypatch, capsys):
    requests = tmp_path / "requests.jsonl"
    with requests.open("w") as handle:
        for i in range(250):
            handle.write(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}]}}) + "\n")
    dag = _load_dag("example_maas_batch_single_task", monkeypatch, tmp_path / "out")
    run = dag.test(run_conf={"source": str(requests)})
    assert run.state == "success"
    assert_in_input_order(requests, _only("results.jsonl", tmp_path / "out"))
    assert emu.emulator.jobs_created == 3
    _assert_no_key(capsys.readouterr(), run, emu)


def assert_in_input_order_any(requests: Path, results: Path):
    """The four-step DAG keeps the service's order: check every request has exactly one result."""
    with requests.open("rb") as handle:
        wanted = sorted(request_key(line.request) for line in iter_request_lines(handle))
    with results.open("rb") as handle:
        records = list(iter_results(handle))
    assert sorted(request_key(r.request) for r in records) == wanted
    return records


def _assert_no_key(captured, run, emu) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    assert API_KEY not in captured.out
    assert API_KEY not in captured.err
    with create_session() as session:
        values = session.query(XComModel.value).filter(XComModel.run_id == run.run_id).all()
    assert values, "the run pushed XComs"
    assert API_KEY not in repr(values)
    assert API_KEY not in json.dumps(emu.emulator.access_log)


def test_download_attaches_summary_to_asset_event(emu, tmp_path, monkeypatch):

    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(tmp_path))
    monkeypatch.setenv("MAAS_POLL_INTERVAL", "0.1")
    spec = importlib.util.spec_from_file_location("example_maas_assets_under_test", EXAMPLES / "example_maas_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.producer.test()
    assert run.state == "success"
    assert_asset_summary()


def test_every_example_dag_parses_without_errors():
    from tests.compat import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {
        "example_maas_batch",
        "example_maas_batch_single_task",
        "example_maas_batch_mapped",
        "example_maas_assets_producer",
        "example_maas_assets_consumer",
        "example_maas_cost_control",
    }


def test_example_maas_cost_control(emu, tmp_path, monkeypatch, capsys):
    """Dry run (nothing paid), the branch, then the real run with a cap and a canary: two jobs."""
    dag = _load_dag("example_maas_cost_control", monkeypatch, tmp_path)
    run = dag.test()
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert (states["plan"], states["predict"], states["too_dear"]) == ("success", "success", "skipped")
    results = _only("results.jsonl", tmp_path)
    in_order = assert_in_input_order(EXAMPLES / "data" / "example_requests.jsonl", results, ceiling_written=True)
    assert all(r.succeeded for r in in_order)
    assert all(r.request["generationConfig"]["maxOutputTokens"] for r in in_order)  # the cap's ceiling was sent
    assert sorted(job.request_count for job in emu.emulator.jobs.values()) == [4, 5]  # the canary, then the rest
    _assert_no_key(capsys.readouterr(), run, emu)


def _template_strings(value) -> list[str]:
    """The Jinja templates in a templated field's value (strings, inside lists and dicts too)."""
    if isinstance(value, str):
        return [value] if "{{" in value or "{%" in value else []
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _template_strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _template_strings(item)]
    return []  # an XComArg, a number...: nothing rendered from the run


def _run_context(dag, task, kind: str) -> dict:
    """What Airflow 3's task runner puts in a template's context for a run of ``kind``: a manual run
    has no logical date, so no ``ds``, ``logical_date`` or data interval (task_runner.get_template_context)."""
    import types

    import pendulum

    run_after = pendulum.datetime(2026, 3, 15, tz="UTC")
    logical_date = None if kind == "manual" else run_after.subtract(days=1)
    run_id = f"{kind}__{(logical_date or run_after).isoformat()}"
    ti = types.SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, run_id=run_id, map_index=0, try_number=1)
    dag_run = types.SimpleNamespace(
        run_id=run_id, run_type=kind, run_after=run_after, logical_date=logical_date, conf={}
    )
    context = {"dag": dag, "task": task, "ti": ti, "task_instance": ti, "dag_run": dag_run, "run_id": run_id}
    context["params"] = dag.params.dump()
    if logical_date is not None:
        context |= {
            "logical_date": logical_date,
            "ds": logical_date.strftime("%Y-%m-%d"),
            "ds_nodash": logical_date.strftime("%Y%m%d"),
            "ts": logical_date.isoformat(),
            "data_interval_start": logical_date,
            "data_interval_end": run_after,
        }
    return context


@pytest.mark.parametrize("kind", ["manual", "scheduled", "backfill"])
def test_every_templated_path_of_the_examples_renders_in_each_kind_of_run(kind, tmp_path, monkeypatch):
    """Issue 21 item 9: ``{{ ds }}`` in a path fails a manual run on Airflow 3 ("'ds' is undefined").
    Every template of every example task (mapped ones: their partial arguments) renders, strictly,
    in the context of a manual run, a scheduled run and a backfill."""
    from tests.compat import DagBag

    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(tmp_path))
    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    rendered = 0
    for dag in bag.dags.values():
        env = dag.get_template_env()
        for task in dag.tasks:
            values = getattr(task, "partial_kwargs", None) or {f: getattr(task, f, None) for f in task.template_fields}
            for template in _template_strings([values.get(f) for f in task.template_fields]):
                text = env.from_string(template).render(_run_context(dag, task, kind))
                assert "{{" not in text, (dag.dag_id, task.task_id, template, text)  # blank is allowed: reuse_results
                rendered += 1
    assert rendered >= 10  # the examples' source, destination and params templates were all found
