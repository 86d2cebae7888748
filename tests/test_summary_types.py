"""The XCom ``summary`` types (``batch/answers/summary_types.py``) are the keys the README lists, both ways:
every key of an operator's summary type is in the README's lists for it, every key listed there is in
the type. ``tests/test_readme.py`` checks the same lists against what the operators push at runtime."""

from __future__ import annotations

from typing import get_args, get_type_hints

import pytest

from airflow_provider_maas.batch.answers.summary_types import BatchSummary, ResultsSummary
from airflow_provider_maas.operators._metrics import SUMMARY_COUNTERS, SummaryCounterKey
from tests.test_readme import SUMMARY_TYPES, _keys, _summary_common, _summary_documented


def test_the_common_list_is_the_results_summary():
    assert _summary_common() == _keys(ResultsSummary)


@pytest.mark.parametrize("operator", sorted(SUMMARY_TYPES))
def test_each_operators_list_is_its_summary_type(operator):
    documented, typed = _summary_documented(operator), _keys(SUMMARY_TYPES[operator])
    assert not typed - documented, f"README: the summary of {operator} lacks {sorted(typed - documented)}"
    assert not documented - typed, f"README lists {sorted(documented - typed)} for {operator}: not in its summary type"


def test_every_metric_counts_a_number_of_the_batch_summary():
    assert set(SUMMARY_COUNTERS) == set(get_args(SummaryCounterKey))
    hints = get_type_hints(BatchSummary)
    for key in SUMMARY_COUNTERS:
        assert key in hints, f"metric {SUMMARY_COUNTERS[key]} reads {key!r}, which BatchSummary does not have"
        kinds = set(get_args(hints[key])) or {hints[key]}
        assert kinds - {type(None)} <= {int, float}, f"{key!r} is {hints[key]}, not a number"
