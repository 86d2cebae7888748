"""Integer settings are refused where the DAG is parsed when they are not whole numbers in range,
booleans included (``True`` is an ``int`` in Python: ``max_active_jobs=True`` used to pass). One
check (``batch/int_settings.py``) with one message for the settings, the poll errors and the trigger."""

from __future__ import annotations

import io
import re

import pytest

from airflow_provider_maas.batch.inputs.shards import plan_shards
from airflow_provider_maas.batch.int_settings import LIMITS, check_limits
from airflow_provider_maas.batch.polling import check_poll_errors
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator, MaaSSplitRequestsOperator
from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger


@pytest.mark.parametrize("name", sorted(LIMITS))
@pytest.mark.parametrize("bad", [True, False, 2.0, "3", None])
def test_check_limits_refuses_what_is_not_a_whole_number(name, bad):
    with pytest.raises(MaaSInputError, match=name):
        check_limits({name: bad})


def test_check_limits_takes_whole_numbers_in_range():
    check_limits({name: max(low, 1) for name, (low, _high) in LIMITS.items()})


@pytest.mark.parametrize("value", [True, False])
def test_batch_operator_refuses_a_boolean_max_active_jobs_at_parse_time(value):
    with pytest.raises(MaaSInputError, match="max_active_jobs"):
        MaaSBatchPredictionOperator(task_id="p", source="in.jsonl", destination="out.jsonl", max_active_jobs=value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_requests_per_file": True}, "max_requests_per_file"),
        ({"max_requests_per_file": 101}, "max_requests_per_file"),
        ({"max_bytes_per_file": 0}, "max_bytes_per_file"),
        ({"max_bytes_per_file": 60 * 1024 * 1024}, "max_bytes_per_file"),
    ],
)
def test_split_operator_checks_upload_limits_at_parse_time(kwargs, name):
    with pytest.raises(MaaSInputError, match=name):
        MaaSSplitRequestsOperator(task_id="s", source="in.jsonl", destination_prefix="out/", **kwargs)
    # chunks have no upload limit, only the lowest bounds
    if kwargs.get("max_requests_per_file") == 101 or kwargs.get("max_bytes_per_file", 0) > 1:
        MaaSSplitRequestsOperator(task_id="c", source="in.jsonl", destination_prefix="out/", for_upload=False, **kwargs)
    else:
        with pytest.raises(MaaSInputError, match=name):
            MaaSSplitRequestsOperator(
                task_id="c", source="in.jsonl", destination_prefix="out/", for_upload=False, **kwargs
            )


# One table of bounds: what planning the shards refuses, the operators refuse where the DAG is parsed -----
def test_one_byte_per_file_is_refused_at_construction_naming_the_parameter():
    message = r"^max_bytes_per_file must be between 2 and \d+, got 1$"
    with pytest.raises(MaaSInputError, match=message):
        MaaSBatchPredictionOperator(task_id="p", source="in.jsonl", destination="out.jsonl", max_bytes_per_file=1)
    with pytest.raises(MaaSInputError, match=message):
        MaaSSplitRequestsOperator(task_id="s", source="in.jsonl", destination_prefix="out/", max_bytes_per_file=1)
    with pytest.raises(MaaSInputError, match=r"^max_bytes_per_file must be an integer >= 2, got 1$"):
        MaaSSplitRequestsOperator(
            task_id="c", source="in.jsonl", destination_prefix="out/", for_upload=False, max_bytes_per_file=1
        )


@pytest.mark.parametrize(
    ("name", "keyword"), [("max_requests_per_file", "max_requests"), ("max_bytes_per_file", "max_bytes")]
)
def test_planning_shards_refuses_below_the_tables_lowest_bound_naming_the_parameter(name, keyword):
    low = LIMITS[name][0]
    with pytest.raises(MaaSInputError, match=f"^{name} must be an integer >= {low}, got {low - 1}$"):
        plan_shards(io.BytesIO(b""), **{keyword: low - 1})
    # the lowest bound the operators accept is one shards accept: no refusal at run time
    line = b'{"key": "a", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'
    assert plan_shards(io.BytesIO(line * 2), **{keyword: max(low, len(line)) if keyword == "max_bytes" else low})


# One check, one message: the settings, the waiters' poll errors and the batch trigger's polls -----
@pytest.mark.parametrize(
    ("check", "name"),
    [
        (lambda value: check_limits({"max_active_jobs": value}), "max_active_jobs"),
        (check_poll_errors, "max_consecutive_poll_errors"),
        (lambda value: MaaSBatchJobsTrigger(["1"], max_parallel_polls=value), "max_parallel_polls"),
    ],
    ids=["settings", "polling", "trigger"],
)
@pytest.mark.parametrize("bad", [True, 0, 2.0, "3"])
def test_every_integer_check_names_the_setting_what_is_allowed_and_the_value(check, name, bad):
    with pytest.raises(MaaSInputError, match=f"^{name} must be an integer >= 1, got {re.escape(repr(bad))}$"):
        check(bad)


def test_a_setting_with_an_upper_bound_says_both_bounds():
    with pytest.raises(MaaSInputError, match=r"^max_requests_per_file must be between 1 and 100, got 101$"):
        check_limits({"max_requests_per_file": 101})


@pytest.mark.parametrize("value", [0, -1, -0.5, float("nan"), float("inf"), True, "5", None])
def test_seconds_must_be_a_number_above_zero(value):
    from airflow_provider_maas.batch.int_settings import check_seconds

    with pytest.raises(MaaSInputError, match="poll_interval must be a number of seconds above 0, got"):
        check_seconds("poll_interval", value)


def test_seconds_may_be_none_where_none_means_no_limit():
    from airflow_provider_maas.batch.int_settings import check_seconds

    assert check_seconds("timeout", None, optional=True) is None
    assert check_seconds("timeout", 0.5, optional=True) == 0.5
    with pytest.raises(MaaSInputError, match="timeout must be a number of seconds above 0, or None for no limit"):
        check_seconds("timeout", 0, optional=True)
