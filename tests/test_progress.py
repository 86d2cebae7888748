"""The progress reader (issue 23): what the progress page and API show, read from a batch's state
through the journal, with no location or secret in it; and the metrics module's names and values."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pytest

from airflow_provider_maas.batch import progress as progress_module
from airflow_provider_maas.batch.journal import BatchJournal
from airflow_provider_maas.batch.progress import RESULTS_KEPT_SECONDS, job_progress, read_progress
from airflow_provider_maas.batch.shards import ShardPlan
from airflow_provider_maas.batch.state import BatchState, Round, ShardKey, ShardRecord, ShardStatus, fingerprint
from airflow_provider_maas.operators import _metrics as metrics
from airflow_provider_maas.storage import to_path
from tests.helpers import make_context
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
    real = progress_module._count_part
    monkeypatch.setattr(progress_module, "_count_part", lambda path: calls.append(path) or real(path))
    progress_module._cache.clear()
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
