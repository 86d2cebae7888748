"""The deprecated parameter names of the download and merge operators (``requests``, now ``source``;
``sources``, now ``results``) work, and warn, where a DAG gives them to ``.partial()`` or maps over them
with ``.expand()`` (dynamic task mapping): Airflow accepts there only the names ``__init__`` declares,
and took the old names (read from ``**kwargs``) for unknown arguments."""

from __future__ import annotations

import importlib.util
import warnings

import pytest

from airflow_provider_maas._compat import AirflowProviderDeprecationWarning
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSDownloadResultsOperator,
    MaaSMergeResultsOperator,
)
from tests.conftest import ROOT
from tests.helpers import assert_in_input_order, write_requests


def _messages(caught: list[warnings.WarningMessage]) -> set[str]:
    return {str(w.message) for w in caught if issubclass(w.category, AirflowProviderDeprecationWarning)}


def test_partial_takes_the_old_names_as_the_new_ones_warning_where_the_dag_is_parsed():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge = MaaSMergeResultsOperator.partial(task_id="merge", sources=["a.jsonl"], requests="r.jsonl").expand(
            destination=["out"]
        )
        download = MaaSDownloadResultsOperator.partial(task_id="download", requests="r.jsonl").expand(
            job_name=["j1"], destination=["out"]
        )
        batch = MaaSBatchPredictionOperator.partial(task_id="batch", source="r", wait_timeout=30).expand(
            destination=["out"]
        )
    assert _messages(caught) == {
        "sources is deprecated: use results",
        "requests is deprecated: use source",
        "wait_timeout is deprecated: use timeout",
    }
    assert merge.partial_kwargs["results"] == ["a.jsonl"] and merge.partial_kwargs["source"] == "r.jsonl"
    assert download.partial_kwargs["source"] == "r.jsonl" and batch.partial_kwargs["timeout"] == 30
    with pytest.raises(MaaSInputError, match="requests is the old name of source: give source only"):
        MaaSDownloadResultsOperator.partial(task_id="both", requests="r.jsonl", source="s.jsonl")


def test_expand_maps_over_the_old_names_and_the_mapped_task_warns_once_made():
    download = MaaSDownloadResultsOperator.partial(task_id="download", destination="out").expand(
        job_name=["j1", "j2"], requests=["r.jsonl"]
    )
    merge = MaaSMergeResultsOperator.partial(task_id="merge", destination="out").expand(
        sources=[["a.jsonl"], ["b.jsonl"]], requests=["r.jsonl"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = download.unmap({"job_name": "j1", "requests": "r.jsonl"})
        assert made.source == "r.jsonl"
        made = merge.unmap({"sources": ["a.jsonl"], "requests": "r.jsonl"})
        assert made.results == ["a.jsonl"] and made.source == "r.jsonl"
    assert _messages(caught) == {"sources is deprecated: use results", "requests is deprecated: use source"}


def test_a_dag_mapping_over_the_old_names_runs(emulator_factory, tmp_path, monkeypatch):
    emulator_factory(job_duration=0.3)
    requests = write_requests(tmp_path / "requests.jsonl", 12)  # 3 shards of at most 5
    monkeypatch.setenv("MAAS_RENAMED_REQUESTS", str(requests))
    monkeypatch.setenv("MAAS_RENAMED_OUTPUT", str(tmp_path / "out"))
    spec = importlib.util.spec_from_file_location(
        "maas_renamed_mapped_under_test", ROOT / "tests" / "dags" / "maas_renamed_mapped.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.dag.test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert sorted(i for (task_id, i) in states if task_id == "download") == [0, 1, 2]
    for name in ("results.jsonl", "results-mapped.jsonl"):
        assert all(r.succeeded for r in assert_in_input_order(requests, tmp_path / "out" / name))
