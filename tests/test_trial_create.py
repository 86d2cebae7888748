"""Trial of odd create answers (an independent ``http.server``, real HTTP): each leaves the job's
existence unknown, so it must be a MaaSJobCreationUncertainError saying what was wrong, sent once,
never polled, never quoting the key."""

from __future__ import annotations

import pytest

from airflow_provider_maas.exceptions import MaaSJobCreationUncertainError
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.conftest import API_KEY, connection_env
from tests.service_stub import json_answer, stub_service

CREATE = ("POST", "/v1/ai/batch/gemini/test-endpoint/batchPredictionJobs")


def _create(monkeypatch, answer) -> MaaSJobCreationUncertainError:
    with stub_service(create=answer) as service:
        monkeypatch.setenv(*connection_env(service.base_url))
        with pytest.raises(MaaSJobCreationUncertainError) as info:
            MaaSHook(max_attempts=3, retry_base_delay=0.01).create_batch_job("r.jsonl", "odd")
    assert service.requests == [CREATE], "sent once, nothing polled"
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value.args)
    return info.value


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (903523130369114112, "job name '903523130369114112' is a JSON number, not a string"),
        (["1"], "job name \"['1']\" is a JSON array, not a string"),
        ("   ", "the answer names the job '   ', which cannot be polled: a job name that is blank"),
    ],
)
def test_a_job_name_of_the_wrong_kind_is_named_for_what_it_is(monkeypatch, name, says):
    message = str(_create(monkeypatch, json_answer({"name": name, "state": "JOB_STATE_PENDING"})))
    assert says in message, message
    assert "has no job name" not in message


def test_a_job_name_that_is_the_key_is_not_polled_as_stars(monkeypatch):
    """The body is redacted before it is read: the name would silently become '***', another job."""
    message = str(_create(monkeypatch, json_answer({"name": API_KEY})))
    assert "job name holds the API key" in message


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"Content-Type": "text/html"}, f"<pre>Authorization: Bearer {API_KEY}</pre>".encode()),
        (200, {"Content-Type": "application/json"}, b'{"name": "1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        (204, {}, b""),
        json_answer([{"name": "1"}]),
    ],
    ids=["echoed-authorization", "deep-json", "no-content", "an-array"],
)
def test_an_unusable_success_body_is_uncertain(monkeypatch, answer):
    assert "not a usable JSON object" in str(_create(monkeypatch, answer))
