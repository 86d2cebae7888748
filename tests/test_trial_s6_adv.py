"""Session 6, adversarial round on the refactor that moved cost control from the operator into batch/
(``BatchSettings`` carries every cost parameter; ``BatchRun.start``/``resume`` build the gate).

Each test drives the operator against the emulator and checks a promise of README "Cost control",
docs/cost-control.md and docs/reliability.md on a path the refactor touched (start vs. resume after a
deferral, retry rounds, canary, dry run, templated values)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from airflow_provider_maas.exceptions import MaaSBudgetExceededError, MaaSCanaryFailedError, MaaSInputError
from tests.compat import TaskDeferred
from tests.cost_helpers import (
    EMULATOR_MAX_OUT,
    PRICES,
    job_worst,
    shard_operator,
    succeeded_event,
    write_priced_requests,
)
from tests.helpers import make_context

JOB_WORST = job_worst(EMULATOR_MAX_OUT)
PER_REQUEST = EMULATOR_MAX_OUT * PRICES["candidates"] / 1_000_000


def _requests(path: Path, count: int, config: dict | None = None) -> Path:
    return write_priced_requests(
        path, range(count), config={"maxOutputTokens": EMULATOR_MAX_OUT} if config is None else config
    )


def _defer(handle, operator, context=None):
    with pytest.raises(TaskDeferred) as info:
        operator.execute(context or make_context())
    return info.value


# 1. The canary's verdict on a resume after a deferral: canary_max_failed reaches the gate -------------
@pytest.mark.parametrize("max_failed, stops", [(0.5, True), (0.0, True), (0.7, False)])
def test_canary_verdict_after_a_deferral_uses_canary_max_failed(emulator_factory, tmp_path, max_failed, stops):
    handle = emulator_factory(job_duration=60, faults=["create:1:fail-requests=index:1,2,3"])
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    kwargs = dict(canary_requests=5, canary_max_failed=max_failed, deferrable=True, prices=PRICES, request_retries=0)
    deferred = _defer(handle, shard_operator(source, dest, **kwargs))
    assert handle.emulator.jobs_created == 1  # the canary alone
    event = succeeded_event(handle, deferred)
    op = shard_operator(source, dest, **kwargs)
    if stops:
        with pytest.raises(MaaSCanaryFailedError):
            op.execute_complete(make_context(), event)
        assert handle.emulator.jobs_created == 1
    else:
        with contextlib.suppress(TaskDeferred):
            op.execute_complete(make_context(), event)
        assert handle.emulator.jobs_created > 1


# 2. Retry rounds created by a resume after a deferral: gated, and sent with the ceiling ---------------
def _uploaded_requests(handle):
    import json

    lines = []
    for info in handle.emulator.files.values():
        path = info["path"] if isinstance(info, dict) else info.path
        with open(path, "rb") as f:
            lines += [json.loads(line)["request"] for line in f if line.strip()]
    return lines


def test_a_retry_round_created_on_resume_is_gated_and_bounded(emulator_factory, tmp_path):
    """10 requests without a ceiling (2 shards), default_max_output_tokens=16, 2 of the first job fail:
    round 1 is created by the resume, from the echoed requests. The cap is exactly 10 answers' worth."""
    handle = emulator_factory(job_duration=60, faults=["create:1:fail-requests=index:1,2"])
    source = _requests(tmp_path / "r.jsonl", 10, config={})
    dest = tmp_path / "out.jsonl"
    cap = 10 * PER_REQUEST
    kwargs = dict(
        prices=PRICES,
        max_cost_usd=cap,
        deferrable=True,
        request_retries=1,
        retry_failures=[".*"],
        default_max_output_tokens=EMULATOR_MAX_OUT,
    )
    deferred = _defer(handle, shard_operator(source, dest, **kwargs))
    assert handle.emulator.jobs_created == 2
    event = succeeded_event(handle, deferred)
    context = make_context()
    try:
        shard_operator(source, dest, **kwargs).execute_complete(context, event)
    except TaskDeferred as again:
        shard_operator(source, dest, **kwargs).execute_complete(context, succeeded_event(handle, again))
    assert handle.emulator.jobs_created == 3
    summary = context["ti"].xcom["summary"]
    assert summary["cost_usd"] <= cap + 1e-12
    sent = _uploaded_requests(handle)
    assert sent and all(r["generationConfig"]["maxOutputTokens"] == EMULATOR_MAX_OUT for r in sent)


# 3. dry_run sends nothing and writes nothing beside the destination ----------------------------------
@pytest.mark.parametrize("deferrable", [False, True])
def test_dry_run_calls_nothing_and_writes_nothing(emulator_factory, tmp_path, deferrable):
    handle = emulator_factory()
    source = _requests(tmp_path / "r.jsonl", 20, config={})
    dest = tmp_path / "out" / "out.jsonl"
    dest.parent.mkdir()
    before = sorted(os.listdir(tmp_path))
    context = make_context()
    shard_operator(
        source, dest, prices=PRICES, max_cost_usd=1.0, canary_requests=5, dry_run=True, deferrable=deferrable
    ).execute(context)
    assert handle.emulator.jobs_created == 0
    assert handle.emulator.uploads_by_name == {}
    assert list(handle.emulator.access_log) == []
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(dest.parent) == []
    assert "plan" in context["ti"].xcom


# 4. A budget stop found by a resume holds across an automatic retry and a clear with the same cap -----
def test_a_budget_stop_on_resume_holds_across_retry_and_clear(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=2)
    source = _requests(tmp_path / "r.jsonl", 20)  # 4 shards of 5
    dest = tmp_path / "out.jsonl"
    cap = 3 * JOB_WORST
    kwargs = dict(prices=PRICES, max_cost_usd=cap, max_active_jobs=2, deferrable=True)
    deferred = _defer(handle, shard_operator(source, dest, **kwargs), make_context(max_tries=1))
    assert handle.emulator.jobs_created == 2
    event = succeeded_event(handle, deferred)
    try:
        shard_operator(source, dest, **kwargs).execute_complete(make_context(max_tries=1), event)
    except TaskDeferred as again:  # the third job, then the stop
        with pytest.raises(MaaSBudgetExceededError):
            shard_operator(source, dest, **kwargs).execute_complete(
                make_context(max_tries=1), succeeded_event(handle, again)
            )
    assert handle.emulator.jobs_created == 3
    # an automatic retry (same clear epoch), then a person's clear, same cap: nothing more is created
    for max_tries in (1, 2):
        op = shard_operator(source, dest, **{**kwargs, "deferrable": False})
        with pytest.raises(MaaSBudgetExceededError):
            op.execute(make_context(max_tries=max_tries))
        assert handle.emulator.jobs_created == 3


# 5. Prices changed while deferred: the resume refuses before any create -------------------------------
def test_prices_changed_while_deferred_are_refused_on_resume(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    kwargs = dict(max_cost_usd=1.0, max_active_jobs=2, deferrable=True)
    deferred = _defer(handle, shard_operator(source, dest, prices=PRICES, **kwargs))
    event = succeeded_event(handle, deferred)
    uploads = dict(handle.emulator.uploads_by_name)
    cheaper = {"prompt": 0.0, "candidates": 0.001}
    with pytest.raises(MaaSInputError, match="prices changed"):
        shard_operator(source, dest, prices=cheaper, **kwargs).execute_complete(make_context(), event)
    assert handle.emulator.jobs_created == 2
    assert handle.emulator.uploads_by_name == uploads  # refused before any upload too


# 6. A cap lowered while deferred: the resume's gate has the new cap ----------------------------------
def test_a_cap_lowered_while_deferred_stops_the_resume(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    kwargs = dict(prices=PRICES, max_active_jobs=2, deferrable=True)
    deferred = _defer(handle, shard_operator(source, dest, max_cost_usd=4 * JOB_WORST, **kwargs))
    event = succeeded_event(handle, deferred)
    with pytest.raises(MaaSBudgetExceededError):
        shard_operator(source, dest, max_cost_usd=2 * JOB_WORST, **kwargs).execute_complete(make_context(), event)
    assert handle.emulator.jobs_created == 2


# 7. A canary stop on resume, then a clear with canary_max_failed raised: the rest is sent ------------
def test_a_canary_stop_on_resume_then_a_clear_with_a_higher_threshold(emulator_factory, tmp_path):
    handle = emulator_factory(job_duration=2, faults=["create:1:fail-requests=index:1,2,3"])
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    kwargs = dict(canary_requests=5, deferrable=True, prices=PRICES, request_retries=0, max_cost_usd=1.0)
    deferred = _defer(handle, shard_operator(source, dest, **kwargs), make_context(max_tries=1))
    event = succeeded_event(handle, deferred)
    with pytest.raises(MaaSCanaryFailedError):
        shard_operator(source, dest, **kwargs).execute_complete(make_context(max_tries=1), event)
    assert handle.emulator.jobs_created == 1
    with pytest.raises(MaaSCanaryFailedError):  # an automatic retry: still stopped
        shard_operator(source, dest, **{**kwargs, "deferrable": False}).execute(make_context(max_tries=1))
    assert handle.emulator.jobs_created == 1
    context = make_context(max_tries=2)
    shard_operator(source, dest, **{**kwargs, "deferrable": False, "canary_max_failed": 0.8}).execute(context)
    assert handle.emulator.jobs_created == 4


# 8. Every cost parameter reaches the gate, the same on a start and on a resume after a deferral ------
def test_every_cost_parameter_reaches_the_gate_on_start_and_on_resume(emulator_factory, tmp_path, monkeypatch):
    from airflow_provider_maas.batch.cost import budget

    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    prices = {"prompt": 0.5, "candidates": 2.0, "thoughts": 3.0}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    kwargs = dict(
        prices=prices,
        max_cost_usd=7.5,
        default_max_output_tokens=17,
        max_tokens_per_file_part=111,
        max_cached_content_tokens=222,
        canary_requests=3,
        canary_max_failed=0.25,
        response_schema=schema,
        deferrable=True,
    )
    gates = []
    built = budget.SpendGate.for_batch.__func__

    def spy(cls, settings, journal, state):
        gate = built(cls, settings, journal, state)
        gates.append(gate)
        return gate

    monkeypatch.setattr(budget.SpendGate, "for_batch", classmethod(spy))
    deferred = _defer(handle, shard_operator(source, dest, **kwargs))
    event = succeeded_event(handle, deferred)
    with contextlib.suppress(TaskDeferred):
        shard_operator(source, dest, **kwargs).execute_complete(make_context(), event)
    assert len(gates) == 2
    fields = (
        "prices",
        "max_cost_usd",
        "default_max_output_tokens",
        "max_tokens_per_file_part",
        "max_cached_content_tokens",
        "canary_requests",
        "canary_max_failed",
    )
    expect = {
        "prices": prices,
        "max_cost_usd": 7.5,
        "default_max_output_tokens": 17,
        "max_tokens_per_file_part": 111,
        "max_cached_content_tokens": 222,
        "canary_requests": 3,
        "canary_max_failed": 0.25,
    }
    for gate in gates:
        assert {f: getattr(gate, f) for f in fields} == expect
        assert gate.check is not None
        assert str(gate.source).endswith(".requests.jsonl")  # the requests as sent, on both paths


# 9. FINDING: start_over after a person's clear forgets what the discarded state spent ----------------
@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_start_over_on_a_damaged_state_keeps_the_spend_under_the_cap(emulator_factory, tmp_path, damage):
    """Promised: with max_cost_usd no create is sent unless spent + reserved + its worst case fits, across
    retries, deferrals, clears and start_over. A state damaged after its 4 jobs were created (cap: 4 jobs)
    and discarded by start_over=True after a person's clear: the new plan started from $0 and paid the whole
    cap again (8 jobs' worst case for a cap of 4); now refused, naming the jobs and the way on."""
    from airflow_provider_maas.exceptions import MaaSStateError, MaaSTimeoutError
    from tests.helpers import FakeStateStore

    handle = emulator_factory(job_duration=1.0)
    source = _requests(tmp_path / "r.jsonl", 20)  # 4 shards of 5
    dest = tmp_path / "out.jsonl"
    store = FakeStateStore()
    kwargs = dict(prices=PRICES, max_cost_usd=4 * JOB_WORST)
    with pytest.raises(MaaSTimeoutError):
        shard_operator(source, dest, timeout=0.3, **kwargs).execute(make_context(store, max_tries=1))
    assert handle.emulator.jobs_created == 4  # the whole cap is reserved
    state_dir = dest.parent / f".{dest.name}.maas" / "dag.task.run1.m-1"
    if damage == "deleted":  # by hand, or by a lifecycle rule
        import shutil

        shutil.rmtree(state_dir)
    else:
        journal = sorted((state_dir / "journal").iterdir())
        journal[-1].write_bytes(journal[-1].read_bytes()[:40])  # a write cut short (disk full, a killed copy)
    with pytest.raises(MaaSStateError):
        shard_operator(source, dest, **kwargs).execute(make_context(store, max_tries=1))
    import time

    time.sleep(1.0)  # the 4 jobs ran to the end: billed
    with pytest.raises(MaaSStateError) as refused:  # a person's clear with start_over=True, the same cap
        shard_operator(source, dest, start_over="true", **kwargs).execute(make_context(store, max_tries=3))
    assert "max_cost_usd is set" in str(refused.value) and "destination of its own" in str(refused.value)
    assert handle.emulator.jobs_created <= 4, (
        f"{handle.emulator.jobs_created} jobs of worst case {JOB_WORST} created under max_cost_usd={4 * JOB_WORST}"
    )


@pytest.mark.parametrize("airflow", ["3.3 (task_state_store)", "3.0-3.2 (Variable)"])
def test_start_over_left_set_on_an_automatic_retry_keeps_the_spend(emulator_factory, tmp_path, monkeypatch, airflow):
    """The same, without a person: start_over=True left set on the task, an automatic retry (same clear
    epoch) after the state was damaged."""
    import time

    from airflow_provider_maas.exceptions import MaaSError, MaaSTimeoutError
    from tests.helpers import FakeStateStore, use_fake_variables

    store = FakeStateStore() if airflow.startswith("3.3") else None
    if store is None:
        use_fake_variables(monkeypatch)
    handle = emulator_factory(job_duration=1.0)
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    kwargs = dict(prices=PRICES, max_cost_usd=4 * JOB_WORST, start_over=True)
    with pytest.raises(MaaSTimeoutError):
        shard_operator(source, dest, timeout=0.3, **kwargs).execute(make_context(store, max_tries=1))
    assert handle.emulator.jobs_created == 4
    state_dir = dest.parent / f".{dest.name}.maas" / "dag.task.run1.m-1"
    journal = sorted((state_dir / "journal").iterdir())
    journal[-1].write_bytes(journal[-1].read_bytes()[:40])
    time.sleep(1.0)
    with contextlib.suppress(MaaSError):
        shard_operator(source, dest, **kwargs).execute(make_context(store, max_tries=1))
    assert handle.emulator.jobs_created <= 4


# 10. dry_run=True set while a real run is deferred: the resume goes on creating jobs --------------------
def test_dry_run_set_while_deferred_sends_nothing_on_resume(emulator_factory, tmp_path):
    """Promised: dry_run=True sends nothing. A DAG edited to dry_run=True while its real run waits in the
    triggerer: the resume (execute_complete) ignored dry_run and created the remaining jobs; now it stops."""
    handle = emulator_factory(job_duration=60)
    source = _requests(tmp_path / "r.jsonl", 20)
    dest = tmp_path / "out.jsonl"
    kwargs = dict(prices=PRICES, max_cost_usd=1.0, max_active_jobs=2, deferrable=True)
    deferred = _defer(handle, shard_operator(source, dest, **kwargs))
    assert handle.emulator.jobs_created == 2
    event = succeeded_event(handle, deferred)
    with pytest.raises(MaaSInputError, match="dry_run=True was set while this batch ran"):
        shard_operator(source, dest, dry_run=True, **kwargs).execute_complete(make_context(), event)
    assert handle.emulator.jobs_created == 2


# 11. The ceiling is in every request sent: a filtered round 0 (duplicates, reuse), the canary ------------
def test_every_request_sent_under_a_cap_carries_the_ceiling_with_duplicates_and_a_canary(emulator_factory, tmp_path):
    handle = emulator_factory()
    numbers = [n % 12 for n in range(20)]  # 12 unique requests, 8 repeats
    source = write_priced_requests(tmp_path / "r.jsonl", numbers, config={"temperature": 0.2})
    dest = tmp_path / "out.jsonl"
    context = make_context()
    shard_operator(
        source, dest, prices=PRICES, max_cost_usd=1.0, canary_requests=3, default_max_output_tokens=EMULATOR_MAX_OUT
    ).execute(context)
    sent = _uploaded_requests(handle)
    assert len(sent) == 12
    assert all(r["generationConfig"]["maxOutputTokens"] == EMULATOR_MAX_OUT for r in sent)
    assert context["ti"].xcom["summary"]["cost_usd"] <= 1.0
