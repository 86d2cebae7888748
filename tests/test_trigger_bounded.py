"""Bounded polling (issue 21): the batch trigger keeps at most ``max_parallel_polls`` GETs in flight."""

from __future__ import annotations

import time

import pytest

from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.triggers import maas as triggers_maas
from airflow_provider_maas.triggers.maas import DEFAULT_MAX_PARALLEL_POLLS, MaaSBatchJobsTrigger
from tests.helpers import write_requests


def test_max_parallel_polls_is_serialised_and_old_kwargs_get_the_default():
    trigger = MaaSBatchJobsTrigger(["1", "2"], fire_after=1, max_parallel_polls=3)
    classpath, kwargs = trigger.serialize()
    assert kwargs["max_parallel_polls"] == 3
    assert MaaSBatchJobsTrigger(**kwargs).serialize() == (classpath, kwargs)
    # a trigger row written before the parameter existed (a deferral across an upgrade)
    old = {k: v for k, v in kwargs.items() if k != "max_parallel_polls"}
    assert MaaSBatchJobsTrigger(**old).max_parallel_polls == DEFAULT_MAX_PARALLEL_POLLS == 16


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4", True, None])
def test_max_parallel_polls_is_checked(bad):
    with pytest.raises(MaaSInputError, match="max_parallel_polls"):
        MaaSBatchJobsTrigger(["1"], max_parallel_polls=bad)


class _CountingHook(MaaSHook):
    """The real hook (real HTTP to the emulator) that records how many polls were in flight at once."""

    in_flight = 0
    most = 0
    polled: list[str] = []

    async def aget_batch_job(self, job_name: str):  # type: ignore[override]
        cls = type(self)
        cls.in_flight += 1
        cls.most = max(cls.most, cls.in_flight)
        try:
            return await super().aget_batch_job(job_name)
        finally:
            cls.in_flight -= 1
            cls.polled.append(job_name)


@pytest.fixture
def counting_hook(monkeypatch):
    hook = type("Hook", (_CountingHook,), {"in_flight": 0, "most": 0, "polled": []})
    monkeypatch.setattr(triggers_maas, "MaaSHook", hook)
    return hook


def _jobs(tmp_path, count: int) -> list[str]:
    hook = MaaSHook()
    name = hook.upload_file(write_requests(tmp_path / "r.jsonl", 1), "t.jsonl")["name"]
    return [hook.create_batch_job(name, f"bounded-{i}")["name"] for i in range(count)]


@pytest.mark.parametrize(("limit", "jobs"), [(4, 30), (16, 10)])
async def test_polls_in_flight_never_exceed_the_limit(emulator_factory, tmp_path, counting_hook, limit, jobs):
    emulator_factory(job_duration=0.6, latency=0.02)
    names = _jobs(tmp_path, jobs)
    trigger = MaaSBatchJobsTrigger(
        names, poll_interval=0.05, first_poll_after=0, end_time=time.time() + 60, max_parallel_polls=limit
    )
    event = (await trigger.run().__anext__()).payload
    assert event["status"] == "success", event["message"]
    assert sorted(o["job_name"] for o in event["ended"]) == sorted(names)  # every job polled to its end
    assert counting_hook.most == min(limit, jobs)
    assert set(counting_hook.polled) == set(names)
