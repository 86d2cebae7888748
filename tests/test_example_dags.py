"""The example DAGs, end to end in real Airflow (``dag.test()``) against the emulator.

The emulator shuffles result lines and echoes requests with null fields added (its defaults),
so these runs prove the results are matched to their requests, not assumed in order.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from airflow_provider_maas.batch.request_lines import iter_request_lines
from airflow_provider_maas.batch.results import iter_results, request_key
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
