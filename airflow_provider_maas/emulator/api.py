"""The four documented calls of the MaaS_Ge batch API, served from the emulator's state.

Routes (``PREFIX`` = ``/v1/ai/batch/gemini/{ENDPOINT}``)::

    POST PREFIX/files?uploadType=media&name=NAME          upload a JSONL file
    POST PREFIX/batchPredictionJobs                       create a job
    GET  PREFIX/batchPredictionJobs/{job}                 get a job
    GET  PREFIX/batchPredictionJobs/{job}/content?alt=... results (alt=json metadata, alt=media JSONL)

Every call first checks the key and the ENDPOINT, then takes its fault (the schedule's, else the
rates'): see :meth:`BatchApi.prelude`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from airflow_provider_maas.emulator.config import RESULT_STATES, TERMINAL_STATES
from airflow_provider_maas.emulator.faults import (
    NO_FAULT,
    ApiError,
    DropConnection,
    FaultDecision,
    FaultInjector,
    faulty_download,
    note,
)
from airflow_provider_maas.emulator.jobs import JobRecord, parse_create_body
from airflow_provider_maas.emulator.objects import (
    SERVE_BLOCK,
    UploadRejected,
    b64,
    object_resource,
    receive_upload,
    too_big_message,
)
from airflow_provider_maas.emulator.results import ResultsSpec, write_results
from airflow_provider_maas.emulator.schedule import RESULTS_GONE

if TYPE_CHECKING:
    from airflow_provider_maas.emulator.server import MaaSEmulator

PREFIX = "/v1/ai/batch/gemini/{endpoint}"
_JOB = "{job:[0-9]{1,32}}"


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


class BatchApi:
    """The handlers of the four calls, and the bookkeeping only they need (object generations,
    files still referenced by a job, the rate-based fault injector)."""

    def __init__(self, emulator: MaaSEmulator) -> None:
        self.emulator = emulator
        self.faults = FaultInjector(emulator.config)
        self._last_generation = 0
        #: Uploaded files a job reads (kept on disk when the name is uploaded again).
        self._referenced: set[str] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(f"{PREFIX}/files", self.upload)
        app.router.add_post(f"{PREFIX}/batchPredictionJobs", self.create)
        app.router.add_get(f"{PREFIX}/batchPredictionJobs/{_JOB}", self.get_job)
        app.router.add_get(f"{PREFIX}/batchPredictionJobs/{_JOB}/content", self.content)

    # ------------------------------------------------------------------ shared steps
    async def prelude(self, request: web.Request, route: str) -> tuple[str, FaultDecision]:
        """Auth, endpoint checks and the faults of the request; return the endpoint and the decision."""
        emulator = self.emulator
        emulator.check_auth(request)
        config = emulator.config
        endpoint = request.match_info["endpoint"]
        if endpoint not in config.endpoints:
            raise ApiError(404, "NOT_FOUND", f"Endpoint {endpoint} not found.")
        if endpoint in config.forbidden_endpoints:
            raise ApiError(403, "PERMISSION_DENIED", f"The API key may not use endpoint {endpoint}.")
        kind = route
        if route == "content":
            kind = "content" if request.query.get("alt") == "media" else "metadata"
        scheduled = emulator.fault_schedule.take(kind)
        if scheduled is not None:
            decision = FaultDecision(
                scheduled=scheduled,
                wrong_md5=scheduled.fault == "wrong-md5",
                truncate_download=scheduled.fault == "truncate",
                corrupt_download=scheduled.fault == "corrupt",
                salt=emulator.request_count,
            )
        else:
            decision = self.faults.decide(route, request.method, request.path_qs)
        if decision is not NO_FAULT:
            note("fault", decision.name)
            await self.faults.apply_before(request, decision)
        return endpoint, decision

    def _next_generation(self) -> int:
        with self.emulator.lock:
            gen = max(time.time_ns() // 1000, self._last_generation + 1)
            self._last_generation = gen
            return gen

    def _new_job_name(self) -> str:
        while True:
            name = str(10**17 + secrets.randbelow(9 * 10**18 - 10**17))
            if name not in self.emulator.jobs:
                return name

    def _live_file(self, name: str) -> dict[str, Any] | None:
        meta = self.emulator.files.get(name)
        if meta is None:
            return None
        if time.time() - meta["uploaded_at"] > self.emulator.config.retention_seconds:
            self.emulator.files.pop(name, None)
            self._drop_path(meta["path"])
            return None
        return meta

    def _drop_path(self, path: str) -> None:
        if path not in self._referenced:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _find_job(self, request: web.Request, endpoint: str) -> JobRecord:
        name = request.match_info["job"]
        job = self.emulator.jobs.get(name)
        if job is None or job.endpoint != endpoint:
            raise ApiError(404, "NOT_FOUND", f"The BatchPredictionJob {name} does not exist.")
        return job

    # ------------------------------------------------------------------ 1. upload
    async def upload(self, request: web.Request) -> web.StreamResponse:
        _, decision = await self.prelude(request, "upload")
        if request.query.get("uploadType") != "media":
            raise _invalid("uploadType must be 'media'.")
        name = request.query.get("name", "")
        if not name:
            raise _invalid("Required parameter: name")
        if len(name.encode()) > 1024 or "\r" in name or "\n" in name or name in (".", ".."):
            raise _invalid(f"Invalid object name: {name!r}")
        emulator = self.emulator
        cfg = emulator.config
        if request.content_length is not None and request.content_length > cfg.max_bytes:
            raise _invalid(too_big_message(cfg.max_bytes))
        tmp = os.path.join(emulator.data_dir, "tmp", secrets.token_hex(8))
        try:
            writer, count = await receive_upload(request, tmp, cfg.max_bytes, cfg.max_requests)
        except UploadRejected as exc:
            raise _invalid(str(exc)) from None
        generation = self._next_generation()
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        path = os.path.join(emulator.data_dir, "uploads", f"{digest}-{generation}.jsonl")
        os.replace(tmp, path)
        now = time.time()
        resource = object_resource(
            name=name, generation=generation, size=writer.size, md5=writer.md5, crc32c=writer.crc32c, created=now
        )
        with emulator.lock:
            old = emulator.files.get(name)
            emulator.files[name] = {**resource, "path": path, "request_count": count, "uploaded_at": now}
            emulator.uploads_by_name[name] = emulator.uploads_by_name.get(name, 0) + 1
        if old is not None:
            self._drop_path(old["path"])
        if decision.wrong_md5:
            note("fault", "wrong_md5")
            resource = {**resource, "md5Hash": b64(hashlib.md5(writer.md5).digest())}
        return web.json_response(resource)

    # ------------------------------------------------------------------ 2. create
    async def create(self, request: web.Request) -> web.StreamResponse:
        endpoint, decision = await self.prelude(request, "create")
        display_name, file_name = parse_create_body(await request.read())
        meta = self._live_file(file_name)
        if meta is None:
            raise ApiError(404, "NOT_FOUND", f"File {file_name} not found (upload it first).")
        emulator = self.emulator
        cfg = emulator.config
        shaping = self.faults.job_fields(decision.scheduled, meta)
        with emulator.lock:
            emulator.jobs_created += 1
            emulator.jobs_by_file[file_name] = emulator.jobs_by_file.get(file_name, 0) + 1
            job = JobRecord(
                name=self._new_job_name(),
                ordinal=emulator.jobs_created,
                endpoint=endpoint,
                display_name=display_name,
                model=cfg.model_name,
                file_name=file_name,
                file_path=meta["path"],
                request_count=meta["request_count"],
                created_at=time.time(),
                **{
                    "duration": cfg.job_duration,
                    "final_state": cfg.final_state,
                    "fail_every": cfg.fail_every,
                    **shaping,
                },
            )
            self._referenced.add(meta["path"])
            emulator.jobs[job.name] = job
        if decision.lost_create_response:
            note("fault", "lost_create_response")
            raise DropConnection
        if decision.scheduled is not None:
            await self.faults.spoil_create_answer(decision.scheduled)
        return web.json_response(job.create_resource())

    # ------------------------------------------------------------------ 3. get
    async def get_job(self, request: web.Request) -> web.StreamResponse:
        endpoint, _ = await self.prelude(request, "get")
        job = self._find_job(request, endpoint)
        resource = job.resource(f"{request.scheme}://{request.host}")
        if resource["state"] in RESULT_STATES and job.results_task is None and not job.results_expired:
            self._results_future(job)  # start writing the results now; the content call awaits them
        return web.json_response(resource)

    # ------------------------------------------------------------------ 4. results
    def _results_future(self, job: JobRecord) -> asyncio.Future[dict[str, Any]]:
        if job.results_task is None:
            job.results_task = asyncio.ensure_future(self._write_results(job))
            # The exception (if any) is reported by the content call; don't warn when nobody awaits it.
            job.results_task.add_done_callback(lambda f: f.cancelled() or f.exception())
        return job.results_task

    async def _write_results(self, job: JobRecord) -> dict[str, Any]:
        emulator = self.emulator
        cfg = emulator.config
        t = job.times()
        assert t.start is not None and t.end is not None
        path = os.path.join(emulator.data_dir, "results", f"{job.name}.jsonl")
        spec = ResultsSpec(
            input_path=job.file_path,
            output_path=path,
            job_name=job.name,
            job_ordinal=job.ordinal,
            seed=cfg.seed,
            failed=job.failed_positions(t.state),
            omit=job.missing,
            duplicate=job.duplicate_lines,
            shuffle=cfg.shuffle_results,
            normalise=cfg.normalise_requests,
            image_output=cfg.image_output,
            padding=cfg.result_padding_bytes,
            model=job.model,
            start_time=t.start,
            end_time=t.end,
            cancel=emulator.closing,
            invalid_output_rate=cfg.invalid_output_rate,
        )
        size, crc = await asyncio.get_running_loop().run_in_executor(None, write_results, spec)
        generation = self._next_generation()
        job.results_path = path
        job.results_meta = object_resource(
            generation=generation, size=size, crc32c=crc, created=time.time(), component_count=1
        )
        if job.results_expired:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return job.results_meta

    async def content(self, request: web.Request) -> web.StreamResponse:
        endpoint, decision = await self.prelude(request, "content")
        alt = request.query.get("alt", "json")
        if alt not in ("json", "media"):
            raise _invalid(f"Invalid value for alt: {alt!r} (expected 'json' or 'media').")
        job = self._find_job(request, endpoint)
        if decision.scheduled is not None and decision.scheduled.fault == RESULTS_GONE:
            raise ApiError(410, "NOT_FOUND", f"Results of job {job.name} have expired.")
        t = job.times()
        if t.state not in TERMINAL_STATES:
            raise ApiError(
                400, "FAILED_PRECONDITION", f"Results of job {job.name} are not ready: the job is {t.state}."
            )
        if t.state not in RESULT_STATES:
            raise ApiError(404, "NOT_FOUND", f"Job {job.name} ended in {t.state} and has no results.")
        assert t.end is not None
        retention = self.emulator.config.retention_seconds
        if job.results_expired or time.time() - t.end > retention:
            if not job.results_expired:
                self.emulator.expire_results(job.name)
            raise ApiError(
                410,
                "NOT_FOUND",
                f"Results of job {job.name} have expired: results are kept {retention:g} seconds after the job ends.",
            )
        try:
            meta = await asyncio.shield(self._results_future(job))
        except Exception as exc:
            raise ApiError(500, "INTERNAL", f"Could not produce results: {exc}") from None
        if alt == "json":
            return web.json_response(meta)
        assert job.results_path is not None
        if decision.truncate_download or decision.corrupt_download:
            note("fault", "truncate_download" if decision.truncate_download else "corrupt_download")
            return await faulty_download(request, job.results_path, int(meta["size"]), decision, {})
        return web.FileResponse(
            job.results_path, headers={"Content-Type": "application/octet-stream"}, chunk_size=SERVE_BLOCK
        )
