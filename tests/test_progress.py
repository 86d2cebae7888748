"""The progress reader (issue 23): what the progress page and API show, read from a batch's state
through the journal, with no location or secret in it; and the metrics module's names and values."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pytest

from airflow_provider_maas.batch import answer_counts
from airflow_provider_maas.batch import progress as progress_module
from airflow_provider_maas.batch.inputs.shards import ShardPlan
from airflow_provider_maas.batch.progress import RESULTS_KEPT_SECONDS, job_progress, read_progress
from airflow_provider_maas.batch.record.journal import BatchJournal
from airflow_provider_maas.batch.record.state import BatchState, Round, ShardKey, ShardRecord, ShardStatus, fingerprint
from airflow_provider_maas.operators import _metrics as metrics
from airflow_provider_maas.storage import to_path
from tests.helpers import batch_settings, make_context
from tests.test_results import result_line

PRICES = {"prompt": 1.0, "candidates": 2.0, "thoughts": 2.0}


def _plans(count: int, requests: int = 10) -> tuple[ShardPlan, ...]:
    return tuple(
        ShardPlan(i, i * requests + 1, (i + 1) * requests, 0, 0, requests, 0, f"{i:064x}", True) for i in range(count)
    )


@dataclass(frozen=True)
class NewerFormatRecord(ShardRecord):
    lease_owner_key: str | None = None


@pytest.fixture
def journal(tmp_path) -> BatchJournal:
    plans = _plans(4)
    state = BatchState(fingerprint(plans), "d.t.r.m-1", [Round(0, plans)], deadline=time.time() + 3600)
    journal = BatchJournal(to_path(str(tmp_path / ".out.jsonl.maas" / "d.t.r.m-1")))
    journal.create(state)
    done = ShardRecord(
        ShardKey(0, 0), ShardStatus.DONE, attempts=1, job_name="batchPredictionJobs/1", job_state="JOB_STATE_SUCCEEDED"
    )
    retried = ShardRecord(
        ShardKey(0, 1),
        ShardStatus.RUNNING,
        attempts=2,
        job_name="batchPredictionJobs/3",
        job_state="JOB_STATE_RUNNING",
        error="job batchPredictionJobs/2 ended JOB_STATE_FAILED: boom",
    )
    failed = ShardRecord(ShardKey(0, 2), ShardStatus.FAILED, attempts=3, error="JOB_STATE_EXPIRED: too slow")
    for record in (done, retried, failed):
        state.apply(record)
    journal.append(state, [done, retried, failed])
    # A record of a newer format: the replay ignores its unknown field, the reader never shows it.
    newer = NewerFormatRecord(ShardKey(0, 3), ShardStatus.PENDING, lease_owner_key="secret")
    journal.append(state, [newer])
    part = journal.part(ShardKey(0, 0))
    part.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        result_line({"contents": [i]}, "ok", promptTokenCount=100, candidatesTokenCount=10, thoughtsTokenCount=5)
        for i in range(8)
    ]
    lines += [result_line({"contents": [8]}, None, status="RESOURCE_EXHAUSTED: quota")] * 2
    part.write_bytes(b"".join(lines))
    return journal


def test_progress_counts_shards_requests_answers_and_cost(journal):
    started = time.time() - 100
    p = read_progress(journal, prices=PRICES, started=started, now=started + 100)
    assert p is not None
    assert p["shards"] == {"total": 4, "pending": 1, "creating": 0, "running": 1, "done": 1, "failed": 1}
    assert p["requests"]["total"] == 40 and p["requests"]["in_shards"]["done"] == 10
    assert p["requests"]["finished_fraction"] == 0.5
    answers = p["answers"]
    assert (answers["answered"], answers["failed"], answers["counted_parts"], answers["parts"]) == (8, 2, 1, 1)
    assert answers["tokens"]["prompt_tokens"] == 800 and answers["tokens"]["thoughts_tokens"] == 40
    assert answers["cost_usd"] == pytest.approx((800 * 1.0 + 80 * 2.0 + 40 * 2.0) / 1e6)
    assert answers["reasons"] == [{"reason": "RESOURCE_EXHAUSTED: quota", "requests": 2}]
    assert p["jobs_created"] == 6
    assert p["failures"]["failed_shards"] == 1 and p["failures"]["retried_shards"] == 1
    # Running first, then failed, pending, done; the done job's results are kept 7 days after its end.
    assert [j["shard"] for j in p["jobs"]] == ["1", "2", "3", "0"]
    done = p["jobs"][-1]
    mtime = os.path.getmtime(journal.part(ShardKey(0, 0)).path)
    assert done["results_until"] == progress_module._iso(mtime + RESULTS_KEPT_SECONDS)
    # 20 of 40 requests in finished shards after 100 s: 100 s more.
    assert p["estimated_end"] == progress_module._iso(started + 200)
    assert p["deadline"] and p["last_update"]
    text = json.dumps(p)
    assert str(journal.root.path) not in text and "secret" not in text and "lease_owner_key" not in text


def test_progress_counts_each_part_once_and_within_budget(journal, monkeypatch):
    calls = []
    real = answer_counts._count_part
    monkeypatch.setattr(answer_counts, "_count_part", lambda path: calls.append(path) or real(path))
    answer_counts._cache.clear()
    assert read_progress(journal, count_budget=-1)["answers"]["counted_parts"] == 0  # no time left: counted later
    assert read_progress(journal)["answers"]["counted_parts"] == 1
    assert read_progress(journal)["answers"]["answered"] == 8
    assert len(calls) == 1


def test_progress_jobs_limit_and_no_state(journal, tmp_path):
    assert len(read_progress(journal, jobs_limit=2)["jobs"]) == 2
    assert read_progress(BatchJournal(to_path(str(tmp_path / "nothing")))) is None


def test_extra_state_fields_are_passed_through_unless_they_look_secret(journal):
    @dataclass
    class NewerState(BatchState):  # what another version of the state may carry
        budget_usd: float | None = 5.0
        spent_usd: float = 1.25
        api_key: str = "k"
        lease_url: str = "https://u:p@host"

    state = journal.load()
    assert state is not None
    extras = progress_module._plain_extras(
        NewerState(state.fingerprint, state.identity, state.rounds), progress_module._KNOWN_STATE_FIELDS
    )
    assert extras == {"budget_usd": 5.0, "spent_usd": 1.25, "spent_before_usd": 0.0}  # the last: a state field


def test_job_progress_from_xcom():
    assert job_progress("batchPredictionJobs/7")["job"] == {"name": "batchPredictionJobs/7", "state": None}
    job = {
        "name": "batchPredictionJobs/7",
        "state": "JOB_STATE_SUCCEEDED",
        "createTime": "2026-01-01T00:00:00Z",
        "endTime": "2026-01-01T01:00:00Z",
        "completionStats": {"successfulCount": "9", "failedCount": "1"},
        "outputInfo": {"gcsOutputDirectory": "https://key@service/x"},
    }
    row = job_progress(job)["job"]
    assert row["results_until"].startswith("2026-01-08T01:00:00")
    assert row["stats"] == {"successfulCount": "9", "failedCount": "1"}
    assert "outputInfo" not in row
    assert job_progress(None) == {"found": False, "kind": "job"}


def test_scrub_drops_locations_and_userinfo():
    from airflow_provider_maas.plugins.progress_api import _scrub

    cleaned = _scrub({"failed_uri": "s3://c@b/k", "shard_errors": ["see https://user:pw@host/x"], "n": 1})
    assert cleaned == {"shard_errors": ["see https://host/x"], "n": 1}


def test_metrics_names_and_tags(monkeypatch):
    sent = []

    class FakeStats:
        @staticmethod
        def incr(name, value, tags=None):
            sent.append(("incr", name, value, tags))

        @staticmethod
        def gauge(name, value, tags=None):
            sent.append(("gauge", name, value, tags))

    monkeypatch.setattr(metrics, "_stats", lambda: FakeStats)
    context = make_context(dag_id="d", task_id="t")
    metrics.batch_finished(
        context, {"succeeded": 8, "failed": 2, "prompt_tokens": 800, "cost_usd": 0.5, "thoughts_tokens": 0}
    )
    metrics.jobs_active(context, 3)

    class Hook:
        def create_batch_job(self, file_name, display_name):
            return {"name": "j"}

        other = 1

    counting = metrics.CountingCreates(Hook(), context)
    assert counting.create_batch_job("f", "n") == {"name": "j"} and counting.other == 1
    tags = {"dag_id": "d", "task_id": "t"}
    assert sent == [
        ("incr", "maas.batch.requests_answered", 8, tags),
        ("incr", "maas.batch.requests_failed", 2, tags),
        ("incr", "maas.batch.prompt_tokens", 800, tags),
        ("incr", "maas.batch.cost_usd", 0.5, tags),
        ("gauge", "maas.batch.jobs_active", 3, tags),
        ("incr", "maas.batch.jobs_created", 1, tags),
    ]


def test_a_failing_metrics_backend_does_not_fail_the_task(monkeypatch):
    monkeypatch.setattr(metrics, "_stats", lambda: (_ for _ in ()).throw(RuntimeError("no backend")))
    metrics.jobs_active(make_context(), 1)


def test_the_plugin_is_an_airflow_plugins_entry_point():
    """Installed means loaded: Airflow reads ``airflow.plugins`` entry points on every version."""
    from importlib.metadata import entry_points

    from airflow_provider_maas.plugins.links import URL_PREFIX
    from airflow_provider_maas.plugins.progress import TAB, MaaSProgressPlugin

    (entry,) = [e for e in entry_points(group="airflow.plugins") if e.name == "maas_batch_progress"]
    assert entry.load() is MaaSProgressPlugin
    (app,) = MaaSProgressPlugin.fastapi_apps
    assert app["url_prefix"] == URL_PREFIX == "/maas-progress"
    assert MaaSProgressPlugin.external_views == [TAB]  # Airflow >= 3.1 here
    assert TAB["href"].startswith("maas-progress/?") and "{MAP_INDEX}" in TAB["href"]  # relative: base URL prefix


@pytest.mark.parametrize(("version", "scoped"), [((3, 1), False), ((3, 3), False), ((3, 4), True), ((4, 0), True)])
def test_the_tab_is_scoped_to_maas_operators_where_airflow_reads_applies_to(version, scoped):
    """Airflow's UI (``pluginAppliesTo.ts`` on main, read for issue 23) compares ``operators`` with
    the task instance's ``operator``: the class name Airflow records as the task type. A dotted path
    would match nothing and hide the tab on every page."""
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator, MaaSCreateBatchJobOperator
    from airflow_provider_maas.plugins.progress import tab
    from airflow_provider_maas.sensors.maas import MaaSBatchJobSensor

    view = tab(version)
    assert ("applies_to" in view) is scoped
    if scoped:
        assert set(view["applies_to"]) == {"operators"}  # a criterion Airflow knows (unknown ones drop the scope)
        shown = view["applies_to"]["operators"]
        for cls in (MaaSBatchPredictionOperator, MaaSCreateBatchJobOperator, MaaSBatchJobSensor):
            assert cls.__name__ in shown  # what TaskInstance.operator holds for these tasks
        assert "PythonOperator" not in shown and all("." not in name for name in shown)


def test_the_page_is_served_without_data():
    from fastapi.testclient import TestClient

    from airflow_provider_maas.plugins.progress_api import create_app

    response = TestClient(create_app()).get("/?dag_id=d&run_id=r&task_id=t")
    assert (
        response.status_code == 200 and "api/dags/" in response.text and response.headers["cache-control"] == "no-store"
    )


def test_money_fields_of_a_newer_state_are_summed(journal):
    @dataclass(frozen=True)
    class NewerRecord(ShardRecord):  # the fields issue 22's budget adds to a shard record
        reserve_usd: float | None = None
        cost_usd: float | None = None
        unsent: bool = False

    state = journal.load()
    assert state is not None
    state.shards[ShardKey(0, 0)] = NewerRecord(ShardKey(0, 0), ShardStatus.DONE, cost_usd=0.25)
    state.shards[ShardKey(0, 1)] = NewerRecord(ShardKey(0, 1), ShardStatus.RUNNING, reserve_usd=1.5, cost_usd=0.5)
    state.shards[ShardKey(0, 3)] = NewerRecord(ShardKey(0, 3), ShardStatus.FAILED, unsent=True)
    assert progress_module._money(state) == {"recorded_cost_usd": 0.75, "reserved_usd": 1.5, "unsent_shards": 1}
    assert progress_module._money(journal.load()) == {}


def test_an_unchanged_state_is_not_replayed_again_and_a_write_is_seen(journal, monkeypatch, tmp_path):
    loads = []
    real = BatchJournal.load
    monkeypatch.setattr(BatchJournal, "load", lambda self: loads.append(self.uri) or real(self))
    progress_module._states.clear()
    first = read_progress(journal, now=1.0)
    assert read_progress(journal, now=1.0) == first and len(loads) == 1  # nothing written: from the cache
    state = journal.load()
    loads.clear()
    assert state is not None
    record = state.shards[ShardKey(0, 3)].but(status=ShardStatus.FAILED, error="gave up")
    state.apply(record)
    journal.append(state, [record])  # a new journal object: replayed again
    assert read_progress(journal, now=1.0)["shards"]["failed"] == 2 and len(loads) == 1
    journal.compact(state)  # a snapshot replaces the journal objects: the key changes, the numbers do not
    assert read_progress(journal, now=1.0)["shards"]["failed"] == 2 and len(loads) == 2
    # Bounded: only the CACHED_STATES batches read last are kept.
    for n in range(progress_module.CACHED_STATES + 2):
        other = BatchJournal(to_path(str(tmp_path / f"b{n}")))
        other.create(BatchState(state.fingerprint, f"d.t.r{n}.m-1", state.rounds[:1]))
        read_progress(other)
    assert len(progress_module._states) == progress_module.CACHED_STATES
    assert journal.uri not in progress_module._states


def test_job_times_and_the_last_poll_are_recorded_and_shown(emulator_factory, tmp_path):
    """created when the create answered, ended from the job's endTime, the last poll at the resume
    the trigger caused; the API shows them (results kept until = ended + 7 days)."""
    import asyncio

    from tests.compat import TaskDeferred
    from tests.helpers import batch_operator, write_requests

    handle = emulator_factory(job_duration=60)
    source = write_requests(tmp_path / "r.jsonl", 250)  # 3 shards, 2 at a time
    dest = tmp_path / "results.jsonl"
    op = batch_operator(source, dest, deferrable=True, max_active_jobs=2)
    before = time.time() - 0.001  # the times are kept to the millisecond
    with pytest.raises(TaskDeferred) as info:
        op.execute(make_context())
    journal = BatchJournal.for_task(dest, make_context())
    running = [r for r in journal.load().shards.values() if r.status is ShardStatus.RUNNING]
    assert len(running) == 2 and all(before <= (r.created or 0) <= time.time() and r.ended is None for r in running)
    for name in info.value.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    ended_by = time.time() + 0.001  # the times are rounded to the millisecond
    event = asyncio.run(anext(info.value.trigger.run())).payload
    with pytest.raises(TaskDeferred):
        op.execute_complete(make_context(), event)
    state = journal.load()
    done = [r for r in state.shards.values() if r.status is ShardStatus.DONE]
    assert len(done) == 2 and all(before <= (r.ended or 0) <= ended_by for r in done)  # the service's endTime
    assert state.last_poll is not None and ended_by <= state.last_poll <= time.time()
    progress_module._states.clear()
    shown = read_progress(journal)
    assert shown["last_poll"] == progress_module._iso(state.last_poll)
    rows = {row["shard"]: row for row in shown["jobs"]}
    for record in done:
        row = rows[str(record.key)]
        assert row["ended"] == progress_module._iso(record.ended) and row["created"]
        assert row["results_until"] == progress_module._iso(record.ended + RESULTS_KEPT_SECONDS)


def test_a_polled_state_change_and_the_poll_time_ride_in_the_next_write_never_one_of_their_own(tmp_path):
    from airflow_provider_maas.batch.driver import BatchDriver

    plans = _plans(2)
    state = BatchState(fingerprint(plans), "d.t.r.m-1", [Round(0, plans)])
    journal = BatchJournal(to_path(str(tmp_path / "s")))
    journal.create(state)
    record = ShardRecord(ShardKey(0, 0), ShardStatus.RUNNING, 1, job_name="jobs/1", job_state="JOB_STATE_PENDING")
    state.apply(record)
    journal.append(state, [record])

    class Service:
        job_state = "JOB_STATE_RUNNING"

        def get_batch_job(self, name):
            return {"name": name, "state": self.job_state}

    service = Service()
    with BatchDriver(
        hook=service,  # type: ignore[arg-type]
        journal=journal,
        state=state,
        settings=batch_settings(max_active_jobs=1, max_parallel_transfers=1, shard_retries=0),
        names=lambda key, plan: ("f", "d"),
        clear_epoch=None,
    ) as driver:
        seq = journal.seq
        assert driver.poll(["jobs/1"]) == []
        driver._flush()
        assert journal.seq == seq  # polls alone write nothing (the tries' write schedule is unchanged)
        polled = state.last_poll
        assert polled is not None
        other = state.shards[ShardKey(0, 1)].but(file_name="f", display_name="d")
        driver._change(other)  # a change the driver writes anyway
        driver._flush()
        assert journal.seq == seq + 1  # the job's new state and the poll time rode in it
    stored = BatchJournal(journal.root).load()
    assert stored is not None
    assert stored.shards[ShardKey(0, 0)].job_state == "JOB_STATE_RUNNING" and stored.last_poll == polled
    assert stored.shards[ShardKey(0, 1)] == other


def test_a_state_written_before_job_times_were_kept_still_loads_and_shows(tmp_path):
    """tests/fixtures/state_v1 has no created, ended nor last_poll: they read as unknown, the page
    falls back to the state's last write and the download's time."""
    import shutil

    from tests.conftest import ROOT

    root = tmp_path / ".res.jsonl.maas" / "dag.task.run1.m-1"
    shutil.copytree(ROOT / "tests" / "fixtures" / "state_v1" / "dag.task.run1.m-1", root)
    journal = BatchJournal(to_path(str(root)))
    state = journal.load()
    assert state is not None and state.last_poll is None
    assert all(r.created is None and r.ended is None for r in state.shards.values())
    shown = read_progress(journal)
    assert shown["last_poll"] is None and shown["last_update"]
    assert all(row["created"] is None for row in shown["jobs"])
