"""The triggers under the triggerer's own comms channel to its supervisor, in this process (issue 24).

In a real triggerer, Task SDK calls (connection lookups, ``mask_secret``) talk to the triggerer's
supervisor through ``task_runner.SUPERVISOR_COMMS``, an Airflow ``TriggerCommsDecoder`` whose
synchronous ``send`` cannot be called from the event loop's thread on Airflow 3.0 (``RuntimeError:
You cannot use AsyncToSync in the same thread as an async event loop``) and fails silently on 3.1.
``dag.test()`` and the other trigger tests never install it, so they passed while every deferrable
task failed in a real 3.0 triggerer.

Here the installed Airflow's own ``TriggerCommsDecoder`` is wired, as ``TriggerRunner.init_comms``
does, to a socket whose other end is a stand-in supervisor (a thread answering every request frame
and recording each ``MaskSecret``). Both triggers must then end in success, and the API key must
have reached the supervisor (which masks the triggerer's logs), on every Airflow version.
tests/test_deployment_smoke.py runs the same through real Airflow processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import attrs
import msgspec
import pytest

from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger, MaaSBatchJobTrigger
from tests.conftest import API_KEY
from tests.helpers import write_requests


class StandInSupervisor:
    """The supervisor's end of the triggerer's socket: answers each request frame with an empty
    response (what Airflow's supervisor sends for ``MaskSecret``) and records every request body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.requests: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._serve, name="stand-in-supervisor", daemon=True)
        self.thread.start()

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        from airflow.sdk.execution_time.comms import _ResponseFrame

        with contextlib.suppress(EOFError, OSError):
            while True:
                length = int.from_bytes(self._read_exactly(4), "big")
                request_id, body, *_ = msgspec.msgpack.decode(self._read_exactly(length))
                self.requests.append(body or {})
                self.sock.sendall(_ResponseFrame(id=request_id, body=None).as_bytes())

    def masked(self) -> list[Any]:
        """The values sent to be masked; a list (the key in every form a response may echo) flattened."""
        values = [body.get("value") for body in self.requests if body.get("type") == "MaskSecret"]
        return [item for value in values for item in (value if isinstance(value, list) else [value])]


@pytest.fixture
async def triggerer_comms(monkeypatch):
    """Installs the installed Airflow's ``TriggerCommsDecoder`` as ``SUPERVISOR_COMMS``, as a triggerer
    does; the test calls it once its jobs exist (the synchronous hook of the deferring task ran
    without it). Returns the stand-in supervisor."""
    from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
    from airflow.sdk.execution_time import task_runner

    runner_end, supervisor_end = socket.socketpair()
    supervisor = StandInSupervisor(supervisor_end)
    writers = []

    async def install() -> StandInSupervisor:
        reader, writer = await asyncio.open_connection(sock=runner_end)
        writers.append(writer)
        kwargs: dict[str, Any] = {"async_writer": writer, "async_reader": reader}
        if "socket" in attrs.fields_dict(TriggerCommsDecoder):  # its default wraps fd 0, the triggerer's socket
            kwargs["socket"] = runner_end
        comms = TriggerCommsDecoder(**kwargs)
        if hasattr(comms, "start_reader"):  # Airflow >= 3.2
            await comms.start_reader()
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
        return supervisor

    try:
        yield install
    finally:
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", None, raising=False)
        for writer in writers:
            writer.close()
        supervisor_end.close()
        runner_end.close()
        supervisor.thread.join(timeout=5)


async def _as_the_triggerer_runs_it(trigger: Any) -> dict[str, Any]:
    """One event of ``trigger``, run as ``TriggerRunner.run_trigger`` does (a greenback portal on >= 3.1)."""
    with contextlib.suppress(ImportError):
        import greenback

        await greenback.ensure_portal()
    event = await asyncio.wait_for(trigger.run().__anext__(), timeout=60)
    return event.payload  # type: ignore[no-any-return]


def _jobs(tmp_path, count: int) -> list[str]:
    hook = MaaSHook()  # synchronous, before the comms are installed: as the deferring task did
    names = []
    for i in range(count):
        name = hook.upload_file(write_requests(tmp_path / f"r{i}.jsonl", 3, prefix=f"Q{i}"), f"t{i}.jsonl")["name"]
        names.append(hook.create_batch_job(name, f"comms-test-{i}")["name"])
    return names


async def test_sensor_trigger_under_the_triggerers_comms(emulator_factory, tmp_path, triggerer_comms):
    emulator_factory(job_duration=0.2)
    (job_name,) = _jobs(tmp_path, 1)
    supervisor = await triggerer_comms()
    trigger = MaaSBatchJobTrigger(job_name, poll_interval=0.05, end_time=time.time() + 60)
    event = await _as_the_triggerer_runs_it(trigger)
    assert event["status"] == "success", event
    assert API_KEY in supervisor.masked(), supervisor.requests


async def test_batch_trigger_under_the_triggerers_comms(emulator_factory, tmp_path, triggerer_comms):
    emulator_factory(job_duration=0.2)
    names = _jobs(tmp_path, 3)
    supervisor = await triggerer_comms()
    trigger = MaaSBatchJobsTrigger(names, poll_interval=0.05, end_time=time.time() + 60, first_poll_after=0)
    event = await _as_the_triggerer_runs_it(trigger)
    assert event["status"] == "success", event
    assert sorted(item["job_name"] for item in event["ended"]) == sorted(names)
    assert API_KEY in supervisor.masked(), supervisor.requests
