"""Trial of the README's operator reference against what the operators really push: the XCom
``summary`` keys each operator's section lists (the common list plus "The `summary` adds ...")."""

from __future__ import annotations

from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import MaaSDownloadResultsOperator, MaaSMergeResultsOperator
from tests.helpers import batch_operator, make_context, write_requests
from tests.test_readme import _summary_documented as _documented

#: What the batch summary holds with a cap, a canary or a schema only (this run has prices alone).
CONTROLS = {"cost_reserved_usd", "budget_usd", "answers_over_worst_case", "not_sent", "canary", "invalid_output"}


def test_the_summaries_have_the_documented_keys(emulator, tmp_path):
    source = write_requests(tmp_path / "r.jsonl", 4)
    context = make_context()
    batch_operator(source, tmp_path / "b.jsonl", prices={"prompt": 0.3, "candidates": 2.5}).execute(context)
    documented = _documented("MaaSBatchPredictionOperator") - CONTROLS
    assert set(context["ti"].xcom["summary"]) == documented

    hook = MaaSHook()
    job = hook.create_batch_job(hook.upload_file(source, "r.jsonl")["name"], "readme")
    hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=60)
    context = make_context()
    MaaSDownloadResultsOperator(task_id="d", job_name=job["name"], destination=str(tmp_path / "d.jsonl")).execute(
        context
    )
    documented = _documented("MaaSDownloadResultsOperator") - {"images", "unmatched"}  # extract_images, source
    assert set(context["ti"].xcom["summary"]) == documented

    context = make_context()
    MaaSMergeResultsOperator(
        task_id="m", results=[str(tmp_path / "d.jsonl")], source=str(source), destination=str(tmp_path / "m.jsonl")
    ).execute(context)
    assert set(context["ti"].xcom["summary"]) == _documented("MaaSMergeResultsOperator")
