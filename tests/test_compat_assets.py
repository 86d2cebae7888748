"""Airflow 3.0: the results summary reaches the asset event once the DAG is registered.

Airflow 3.0's ``dag.test()`` does not write the DAG and its assets to the database (3.3's does), so
a task with ``outlets`` fails there with ``AirflowInactiveAssetInInletOrOutletException``. In a
deployment the dag processor registers them before any run; this test does that step, as the dag
processor does, then runs the example producer DAG. On newer Airflow
``test_example_dags.py::test_download_attaches_summary_to_asset_event`` covers the same with
plain ``dag.test()``.
"""

from __future__ import annotations

import importlib.util

import pytest
from airflow import __version__ as airflow_version
from packaging.version import Version

from tests.conftest import ROOT
from tests.helpers import assert_asset_summary

pytestmark = pytest.mark.skipif(
    Version(airflow_version) >= Version("3.1"),
    reason="dag.test() registers assets itself here: test_example_dags.py covers the asset event",
)


def test_download_attaches_summary_to_asset_event_airflow30(emulator_factory, tmp_path, monkeypatch):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models.dag import DAG as SchedulerDAG
    from airflow.serialization.serialized_objects import SerializedDAG

    emulator_factory(job_duration=0.5)
    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(tmp_path))
    monkeypatch.setenv("MAAS_POLL_INTERVAL", "0.1")
    path = ROOT / "example_dags" / "example_maas_assets.py"
    spec = importlib.util.spec_from_file_location("example_maas_assets_airflow30", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    # What the dag processor does before any run: bundles, DAGs and their (now active) assets.
    DagBundlesManager().sync_bundles_to_db()
    dags = [SerializedDAG.deserialize_dag(SerializedDAG.serialize_dag(d)) for d in (module.producer, module.consumer)]
    SchedulerDAG.bulk_write_to_db("dags-folder", None, dags)

    run = module.producer.test()
    assert run.state == "success"
    assert_asset_summary()
