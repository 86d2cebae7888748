"""Create answers that leave the job's existence unknown: a 3xx, and a job name that cannot be polled.

Both must end as :class:`MaaSJobCreationUncertainError` (no retry, no second job, the task fails
without Airflow retries), never as a setting to fix and try again, nor as a job silently dropped or
polled at another URL. The emulator gives the 307; :mod:`tests.service_stub` (an independent
``http.server``) gives the 303 and the odd names, which the emulator never answers.
"""

from __future__ import annotations

import json

import pytest

from airflow_provider_maas.exceptions import MaaSConfigError, MaaSError, MaaSJobCreationUncertainError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators.maas import JOB_STATE_KEY, MaaSCreateBatchJobOperator
from tests.conftest import API_KEY, connection_env
from tests.helpers import FakeStateStore, batch_operator, make_context, write_requests
from tests.service_stub import json_answer, stub_service


def _hook() -> MaaSHook:
    return MaaSHook(max_attempts=3, retry_base_delay=0.01)


def _assert_no_key(err: BaseException) -> None:
    while err is not None:
        assert API_KEY not in str(err) and API_KEY not in repr(err.args)
        err = err.__cause__ or err.__context__


# 3xx -------------------------------------------------------------------------------------------


def test_a_307_to_a_create_is_uncertain_not_a_setting_to_fix(emulator, tmp_path):
    hook = _hook()
    hook.upload_file(write_requests(tmp_path / "r.jsonl", 2), "r.jsonl")
    emulator.schedule("create:1:redirect-307")
    before = emulator.emulator.request_count
    with pytest.raises(MaaSJobCreationUncertainError) as info:
        hook.create_batch_job("r.jsonl", "redirected")
    assert not isinstance(info.value, MaaSConfigError)
    message = str(info.value)
    assert "HTTP 307, a redirect to http://127.0.0.1:" in message and "'redirected'" in message
    assert "not retried" in message and "clear the task" in message
    assert emulator.emulator.request_count - before == 1, "sent once, not retried"
    assert emulator.emulator.redirect_hits == 0, "never followed"


@pytest.mark.parametrize("status", [301, 302, 303, 308])
def test_any_3xx_to_a_create_is_uncertain_and_never_followed(monkeypatch, status):
    location = f"http://127.0.0.1:9/elsewhere?key={API_KEY}"
    with stub_service(create=(status, {"Location": location}, b"")) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        with pytest.raises(MaaSJobCreationUncertainError) as info:
            _hook().create_batch_job("r.jsonl", "moved")
    assert f"HTTP {status}, a redirect to http://127.0.0.1:9/elsewhere?key=***" in str(info.value)
    _assert_no_key(info.value)
    assert service.requests == [("POST", "/v1/ai/batch/gemini/test-endpoint/batchPredictionJobs")]


def test_the_create_operator_keeps_its_marker_after_a_303_and_its_retry_refuses(monkeypatch):
    with stub_service(create=(303, {"Location": "/somewhere"}, b"")) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        store = FakeStateStore()
        op = MaaSCreateBatchJobOperator(task_id="create", file_name="r.jsonl", display_name="d303")
        for _ in range(2):  # the first try, then Airflow's automatic retry (same clear epoch)
            with pytest.raises(MaaSJobCreationUncertainError, match="'d303'"):
                op.execute(make_context(store))
        assert store.data[JOB_STATE_KEY]["status"] == "creating"
    assert service.creates() == 1, "the retry sent no second create"


def test_the_batch_operator_stops_after_a_redirected_create(emulator, tmp_path):
    source = write_requests(tmp_path / "in.jsonl", 3)
    emulator.schedule("create:1:redirect-307")
    op = batch_operator(source, tmp_path / "out.jsonl")
    for _ in range(2):
        with pytest.raises(MaaSJobCreationUncertainError):
            op.execute(make_context())
    assert emulator.emulator.jobs_created == 0 and emulator.emulator.redirect_hits == 0
    creates = [e for e in emulator.emulator.access_log if e["path_qs"].endswith("/batchPredictionJobs")]
    assert len(creates) == 1, "the retry refused to create again"


# Job names the provider cannot poll -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("projects/1/jobs/2", "'projects/1/jobs/2'"),
        ("..", "'..'"),
        ("a\\b", "'a\\\\b'"),
        ("job\n7", "'job\\\\x0a7'"),  # neutralised: no raw newline in the message
        (f"x/{API_KEY}", "'x/***'"),
        ("9" * 1025, "'" + "9" * 199),
    ],
)
def test_a_created_job_whose_name_cannot_be_polled_is_uncertain(monkeypatch, name, shown):
    with stub_service(create=json_answer({"name": name, "state": "JOB_STATE_PENDING"})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        with pytest.raises(MaaSJobCreationUncertainError) as info:
            _hook().create_batch_job("r.jsonl", "odd-name")
    message = str(info.value)
    assert f"the answer names the job {shown}" in message, message
    assert "'odd-name'" in message and "cannot be polled" in message
    _assert_no_key(info.value)
    assert service.requests == [("POST", "/v1/ai/batch/gemini/test-endpoint/batchPredictionJobs")], "nothing polled"


def test_the_create_operator_does_not_drop_a_job_it_cannot_poll(monkeypatch):
    with stub_service(create=json_answer({"name": "jobs/42"})) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        store = FakeStateStore()
        op = MaaSCreateBatchJobOperator(task_id="create", file_name="r.jsonl", display_name="d42")
        with pytest.raises(MaaSJobCreationUncertainError, match="'jobs/42'") as info:
            op.execute(make_context(store))
        assert isinstance(info.value, MaaSError)
        assert store.data[JOB_STATE_KEY]["status"] == "creating", "a retry refuses rather than pays again"
    assert [method for method, _ in service.requests] == ["POST"]


def test_a_usable_name_is_still_accepted(monkeypatch):
    with stub_service() as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        job = _hook().create_batch_job("r.jsonl", "fine")
    assert job["name"] == "1"
    assert json.loads(json.dumps(job)) == {"name": "1", "state": "JOB_STATE_PENDING"}
