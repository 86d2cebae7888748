"""Admin routes of the emulator (never faulted; all but health need the API key).

    GET  /_emulator/health
    GET  /_emulator/state
    POST /_emulator/jobs/{job}/state      {"state": "JOB_STATE_FAILED", "error": {...} or "message"}
    POST /_emulator/jobs/{job}/expire     the job's results answer 410 from now on
    POST /_emulator/config                {"rate_429": 0.2, ...}: change settings while running
    GET  /_emulator/faults                the fault schedule left: {"faults": ["create:1:lost-500"]}
    POST /_emulator/faults                {"faults": ["create:1:lost-500", ...]} (or entries as
                                          {"kind", "count", "fault", "arg"}): add to the schedule;
                                          {"replace": true, ...} drops what was left first
    DELETE /_emulator/faults              clear the schedule
    *    /_emulator/redirect-target       where the redirect-307 fault points (counts the hits)

They let a test or script drive an emulator running in another process (the CLI).
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import TYPE_CHECKING

from aiohttp import web

from airflow_provider_maas.emulator.config import EmulatorConfig
from airflow_provider_maas.emulator.faults import ApiError
from airflow_provider_maas.emulator.schedule import ScheduledFault

if TYPE_CHECKING:
    from airflow_provider_maas.emulator.server import MaaSEmulator

_READ_ONLY = {"host", "port", "data_dir", "faults"}  # faults: use /_emulator/faults


def add_admin_routes(app: web.Application, emulator: MaaSEmulator) -> None:
    def job_name(request: web.Request) -> str:
        emulator.check_auth(request)
        name = request.match_info["job"]
        if name not in emulator.jobs:
            raise ApiError(404, "NOT_FOUND", f"The BatchPredictionJob {name} does not exist.")
        return name

    async def health(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def state(request: web.Request) -> web.StreamResponse:
        emulator.check_auth(request)
        return web.json_response(
            {
                "jobs_created": emulator.jobs_created,
                "jobs_by_file": dict(emulator.jobs_by_file),
                "redirect_hits": emulator.redirect_hits,
                "faults": emulator.fault_schedule.pending(),
                "request_count": emulator.request_count,
                "jobs": {name: job.state for name, job in list(emulator.jobs.items())},
                "files": {name: meta["generation"] for name, meta in list(emulator.files.items())},
                "uploads_by_name": dict(emulator.uploads_by_name),
            }
        )

    async def job_state(request: web.Request) -> web.StreamResponse:
        name = job_name(request)
        try:
            body = json.loads(await request.read())
            emulator.set_job_state(name, body["state"], body.get("error"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(
                400, "INVALID_ARGUMENT", f'Expected {{"state": "JOB_STATE_...", "error": ...}}: {exc}'
            ) from None
        return web.json_response({"name": name, "state": emulator.jobs[name].state})

    async def expire(request: web.Request) -> web.StreamResponse:
        name = job_name(request)
        emulator.expire_results(name)
        return web.json_response({"name": name, "resultsExpired": True})

    async def config(request: web.Request) -> web.StreamResponse:
        emulator.check_auth(request)
        try:
            changes = json.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            unknown = set(changes) - {f.name for f in fields(EmulatorConfig)} - _READ_ONLY
            unknown |= set(changes) & _READ_ONLY
            if unknown:
                raise ValueError(f"unknown or read-only settings {sorted(unknown)}")
            if "extra_endpoints" in changes or "forbidden_endpoints" in changes:
                for key in ("extra_endpoints", "forbidden_endpoints"):
                    if key in changes:
                        changes[key] = tuple(changes[key])
            updated = replace(emulator.config, **changes)  # validates
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"Bad settings: {exc}") from None
        for key in changes:
            setattr(emulator.config, key, getattr(updated, key))
        return web.json_response({key: getattr(emulator.config, key) for key in sorted(changes)})

    async def get_faults(request: web.Request) -> web.StreamResponse:
        emulator.check_auth(request)
        return web.json_response({"faults": emulator.fault_schedule.pending()})

    async def add_faults(request: web.Request) -> web.StreamResponse:
        emulator.check_auth(request)
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("faults"), list):
                raise ValueError('expected {"faults": ["KIND:N:FAULT", ...]}')
            if not isinstance(body.get("replace", False), bool):
                raise ValueError(f'"replace" must be true or false, not {body["replace"]!r}')
            entries = [ScheduledFault.parse(spec) for spec in body["faults"]]
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"Bad fault schedule: {exc}") from None
        if body.get("replace"):
            emulator.fault_schedule.clear()
        emulator.fault_schedule.add(*entries)
        return web.json_response({"faults": emulator.fault_schedule.pending()})

    async def clear_faults(request: web.Request) -> web.StreamResponse:
        emulator.check_auth(request)
        emulator.fault_schedule.clear()
        return web.json_response({"faults": []})

    async def redirect_target(request: web.Request) -> web.StreamResponse:
        emulator.redirect_hits += 1
        return web.json_response({"redirected": True})

    app.router.add_get("/_emulator/health", health)
    app.router.add_get("/_emulator/faults", get_faults)
    app.router.add_post("/_emulator/faults", add_faults)
    app.router.add_delete("/_emulator/faults", clear_faults)
    app.router.add_route("*", "/_emulator/redirect-target", redirect_target)
    app.router.add_get("/_emulator/state", state)
    app.router.add_post("/_emulator/jobs/{job}/state", job_state)
    app.router.add_post("/_emulator/jobs/{job}/expire", expire)
    app.router.add_post("/_emulator/config", config)
