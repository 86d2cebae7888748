"""Reliability under faults: every result exactly once, one paid job per shard, no leaked key."""

from __future__ import annotations

import importlib.util
import json

from airflow_provider_maas.batch.answers.results import iter_results, request_key
from airflow_provider_maas.batch.inputs.request_lines import iter_request_lines
from tests.conftest import API_KEY, ROOT


def _load(name: str, monkeypatch, output):
    monkeypatch.setenv("MAAS_EXAMPLE_OUTPUT", str(output))
    monkeypatch.setenv("MAAS_POLL_INTERVAL", "0.1")
    spec = importlib.util.spec_from_file_location(f"{name}_chaos", ROOT / "example_dags" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


#: One of each fault a client must survive, met by whichever call of its kind comes first: the
#: service refuses (429), fails (5xx) or drops the connection; acknowledges an upload with a
#: wrong md5; cuts a download short or flips bytes in it.
CHAOS = (
    "upload:1:503",
    "upload:1:wrong-md5",
    "create:1:429",
    "get:1:503=html",
    "get:1:reset",
    "metadata:1:500",
    "content:1:truncate",
    "content:1:corrupt",
)
#: What the access log calls each of them.
CHAOS_LOGGED = ["503", "wrong_md5", "429", "503", "reset", "500", "truncate_download", "corrupt_download"]


def test_chaos_run_every_result_exactly_once_one_job_per_shard(emulator_factory, tmp_path, monkeypatch, capsys):
    emu = emulator_factory(job_duration=0.5, retry_after=0, faults=CHAOS)
    dag = _load("example_maas_batch_mapped", monkeypatch, tmp_path)
    run = dag.test()
    assert run.state == "success"
    (requests,) = tmp_path.rglob("requests.jsonl")
    (results,) = tmp_path.rglob("results.jsonl")
    with requests.open("rb") as handle:
        wanted = [request_key(line.request) for line in iter_request_lines(handle)]
    with results.open("rb") as handle:
        got = [request_key(r.request) for r in iter_results(handle) if r.succeeded]
    assert got == wanted  # every request exactly once, in input order
    assert emu.emulator.jobs_created == 3  # one job per shard, none paid twice
    met = [entry["fault"] for entry in emu.emulator.access_log if entry["fault"]]
    assert sorted(met) == sorted(CHAOS_LOGGED)  # every fault was met once, and survived
    assert emu.emulator.fault_schedule.pending() == []
    out = capsys.readouterr()
    statuses: dict[str, int] = {}
    for entry in emu.emulator.access_log:
        statuses[str(entry["status"])] = statuses.get(str(entry["status"]), 0) + 1
    retried_tasks = sum(1 for ti in run.get_task_instances() if (ti.try_number or 1) > 1)
    with capsys.disabled():
        print(
            f"\nchaos figures: requests={len(wanted)} api_calls={len(emu.emulator.access_log)} "
            f"statuses={statuses} jobs={emu.emulator.jobs_created} task_retries={retried_tasks}"
        )
    assert API_KEY not in out.out + out.err
    assert API_KEY not in json.dumps(emu.emulator.access_log)


async def test_1000_triggers_in_one_event_loop(emulator_factory, tmp_path):
    """Load: 1,000 MaaSBatchJobTrigger runs in one loop, as a triggerer holds them: every event
    delivered, no error, the shared session closed and its sockets released afterwards."""
    import asyncio
    import contextlib
    import os
    import time

    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.triggers.maas import MaaSBatchJobTrigger
    from tests.helpers import write_requests

    def open_sockets() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        return count

    emu = emulator_factory(job_duration=1.0, shuffle_results=False)
    hook = MaaSHook()
    hook.upload_file(write_requests(tmp_path / "r.jsonl", 2), "load.jsonl")
    names = [hook.create_batch_job("load.jsonl", f"load-{i}")["name"] for i in range(50)]
    hook.session.close()
    before = open_sockets()
    deadline = time.time() + 120
    triggers = [MaaSBatchJobTrigger(names[i % 50], poll_interval=0.3, end_time=deadline) for i in range(1000)]
    events = await asyncio.gather(*(t.run().__anext__() for t in triggers))
    assert [e.payload["status"] for e in events] == ["success"] * 1000
    assert {e.payload["job_name"] for e in events} == set(names)
    for _ in range(100):
        if open_sockets() <= before + 2:
            break
        await asyncio.sleep(0.05)
    assert open_sockets() <= before + 2, "the shared session was closed and its sockets released"
    errors = [entry for entry in emu.emulator.access_log if entry["status"] >= 400]
    assert errors == []
