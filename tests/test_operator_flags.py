"""Every yes/no parameter of the operators and the sensor is read by one parser
(``flags.parameter_flag``): a bool as is, a string as a flag (``"false"`` is false: a Variable, a param
read in the DAG file or a mapped value used to read as true), anything else refused naming the parameter.
Not templated: read where the operator is made (a mapped task: when it is unmapped, with its mapped
values); ``start_over`` (templated): once rendered, in ``execute``."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.flags import parameter_flag
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import (
    MaaSBatchPredictionOperator,
    MaaSDownloadResultsOperator,
    MaaSSplitRequestsOperator,
)
from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor
from tests.helpers import batch_operator, make_context, write_requests

BATCH = (MaaSBatchPredictionOperator, {"source": "a", "destination": "b"})
SENSOR = (MaaSBatchJobSensor, {"job_name": "j"})
DOWNLOAD = (MaaSDownloadResultsOperator, {"job_name": "j", "destination": "b"})
SPLIT = (MaaSSplitRequestsOperator, {"source": "a", "destination_prefix": "b"})
#: (operator, its required arguments, a yes/no parameter that is not templated, the attribute it is kept in)
FLAGS = [
    (*BATCH, "deferrable", "deferrable"),
    (*BATCH, "fail_on_partial", "fail_on_partial"),
    (*BATCH, "deduplicate", "deduplicate"),
    (*BATCH, "retry_invalid", "retry_invalid"),
    (*BATCH, "set_response_schema", "set_response_schema"),
    (*BATCH, "reuse_other_models", "reuse_other_models"),
    (*BATCH, "dry_run", "plan_only"),
    (*SENSOR, "deferrable", "deferrable"),
    (*SENSOR, "fail_on_partial", "fail_on_partial"),
    (*DOWNLOAD, "extract_images", "extract_images"),
    (*SPLIT, "for_upload", "for_upload"),
]
IDS = [f"{operator.__name__}.{name}" for operator, _, name, _ in FLAGS]


def _made(operator: type, required: dict[str, Any], **flag: Any) -> Any:
    return operator(task_id="t", **required, **flag)


def test_every_yes_no_parameter_is_listed_here():
    """A new bool parameter must be read by the parser too: any annotated ``bool`` is in :data:`FLAGS`."""
    import inspect

    from airflow_provider_maas.operators import maas

    listed = {(operator, name) for operator, _, name, _ in FLAGS}
    for operator in [*(getattr(maas, name) for name in maas.__all__), MaaSBatchJobSensor]:
        flags = set()
        for name, parameter in inspect.signature(operator.__init__).parameters.items():
            kinds = {part.strip() for part in str(parameter.annotation).split("|")}
            if "bool" in kinds and name != "start_over":  # templated: test below
                assert (operator, name) in listed, f"{operator.__name__}.{name}"
                flags.add(name)
        assert set(getattr(operator, "FLAGS", ())) == flags, f"{operator.__name__}.FLAGS"  # read by .partial()


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAGS, ids=IDS)
@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("false", False),
        ("False", False),
        ("0", False),
        ("off", False),
        ("true", True),
        (" Yes ", True),
        (True, True),
        (False, False),
    ],
)
def test_a_string_is_read_as_a_flag_where_the_operator_is_made(operator, required, name, attribute, given, read):
    assert getattr(_made(operator, required, **{name: given}), attribute) is read


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAGS, ids=IDS)
@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ture", "{name} must be true or false, got 'ture'; write one of true, 1, yes, on for true"),
        ("{{ params.flag }}", "{name} is not templated, got '{{{{ params.flag }}}}': give True or False"),
        (1, "{name} must be true or false, got 1 (type int) (not templated"),
        (None, "{name} must be true or false, got None (type NoneType)"),
        (["false"], "{name} must be true or false, got ['false'] (type list)"),
    ],
)
def test_anything_else_is_refused_where_the_dag_is_parsed_naming_the_parameter(
    operator, required, name, attribute, given, says
):
    with pytest.raises(MaaSInputError, match=re.escape(says.format(name=name))):
        _made(operator, required, **{name: given})


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAGS, ids=IDS)
def test_a_mapped_value_is_read_when_the_mapped_task_is_made(operator, required, name, attribute):
    """``.expand()`` resolves at run time: the task instance's operator is made with the mapped value."""
    mapped = operator.partial(task_id="t", **required).expand(**{name: ["false", "true"]})
    assert getattr(mapped.unmap({name: "false"}), attribute) is False
    assert getattr(mapped.unmap({name: "true"}), attribute) is True
    with pytest.raises(MaaSInputError, match=f"{name} must be true or false, got 'ture'"):
        mapped.unmap({name: "ture"})
    first, *rest = required.items()  # a partial value, the task mapped over another parameter
    partial = operator.partial(task_id="t", **dict(rest), **{name: "false"}).expand(**{first[0]: [first[1]]})
    assert getattr(partial.unmap({first[0]: first[1]}), attribute) is False


@pytest.mark.parametrize(("operator", "required", "name", "attribute"), FLAGS, ids=IDS)
def test_a_partial_value_is_read_where_the_dag_is_parsed(operator, required, name, attribute):
    """Not by each mapped task instance when it runs: a typo, a template or an XComArg (the parameter is
    not templated: an XCom value is mapped with .expand()) in .partial() is refused at once."""
    from airflow.sdk import DAG

    _, *rest = required.items()
    for given, says in (("ture", "must be true or false, got 'ture'"), ("{{ params.flag }}", "is not templated")):
        with pytest.raises(MaaSInputError, match=re.escape(f"{name} {says}")):
            operator.partial(task_id="t", **dict(rest), **{name: given})
    with DAG("flags_partial", schedule=None):
        upstream = MaaSSplitRequestsOperator(task_id="up", source="a", destination_prefix="b")
        with pytest.raises(MaaSInputError, match=re.escape(f"{name} must be true or false, got ")):
            operator.partial(task_id="t", **dict(rest), **{name: upstream.output})


def test_start_over_is_templated_so_read_once_rendered():
    op = MaaSBatchPredictionOperator(task_id="t", source="a", destination="b", start_over="{{ params.start_over }}")
    assert op.start_over == "{{ params.start_over }}"  # legitimate where the DAG is parsed
    for rendered, read in (("false", False), ("True", True), (True, True), ("", False)):
        op.start_over = rendered
        assert op._settings().start_over is read
    for rendered, says in (
        ("ture", "start_over must be true or false, got 'ture'"),
        (2, "got 2 (type int); give True"),
    ):
        op.start_over = rendered
        with pytest.raises(MaaSInputError, match=re.escape(says)):
            op._settings()


def test_start_over_with_a_typo_is_refused_before_anything_is_sent(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 3)
    with pytest.raises(MaaSInputError, match="start_over must be true or false, got 'ture'"):
        batch_operator(source, tmp_path / "out.jsonl", start_over="ture").execute(make_context())
    assert emulator.emulator.jobs_created == 0 and not (tmp_path / "out.jsonl").exists()


def test_deduplicate_false_as_a_string_sends_each_identical_request(emulator, tmp_path):
    source = tmp_path / "r.jsonl"
    source.write_text('{"request": {"contents": [{"role": "user", "parts": [{"text": "same"}]}]}}\n' * 3)
    context = make_context()
    batch_operator(source, tmp_path / "out.jsonl", deduplicate="false").execute(context)
    summary = context["ti"].xcom["summary"]
    assert summary["deduplicated"] == 0 and summary["sent"] == 3  # "false" used to send one of the three


def test_fail_on_partial_false_as_a_string_lets_a_partial_job_pass(emulator_factory, tmp_path):
    emulator_factory(final_state="JOB_STATE_PARTIALLY_SUCCEEDED", fail_every=2, job_duration=0.1)
    hook = MaaSHook()
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", 4), "case.jsonl")["name"]
    job_name = hook.create_batch_job(name, "case")["name"]
    time.sleep(0.2)
    sensor = MaaSBatchJobSensor(task_id="w", job_name=job_name, poll_interval=0.05, fail_on_partial="false")
    assert sensor.execute(make_context())["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"  # used to fail


def test_the_parser_takes_the_flag_spellings_of_is_true():
    assert parameter_flag("No", what="x") is False and parameter_flag(" ON ", what="x") is True
