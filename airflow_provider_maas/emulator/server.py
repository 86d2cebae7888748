"""The MaaS_Ge batch API emulator: an ``aiohttp.web`` application serving the 4 documented calls.

Routes (``PREFIX`` = ``/v1/ai/batch/gemini/{ENDPOINT}``)::

    POST PREFIX/files?uploadType=media&name=NAME          upload a JSONL file
    POST PREFIX/batchPredictionJobs                       create a job
    GET  PREFIX/batchPredictionJobs/{job}                 get a job
    GET  PREFIX/batchPredictionJobs/{job}/content?alt=... results (alt=json metadata, alt=media JSONL)

Admin routes (never faulted; all but health need the API key)::

    GET  /_emulator/health
    GET  /_emulator/state
    POST /_emulator/jobs/{job}/state      {"state": "JOB_STATE_FAILED", "error": {...} or "message"}
    POST /_emulator/jobs/{job}/expire     results answer 410 from now on
    POST /_emulator/config                {"rate_429": 0.2, ...}: change settings while running
    GET/POST/DELETE /_emulator/faults     the fault schedule (see ``schedule.py``)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from aiohttp import ClientPayloadError, web

from airflow_provider_maas.emulator.admin import add_admin_routes
from airflow_provider_maas.emulator.config import (
    RESULT_STATES,
    TERMINAL_STATES,
    EmulatorConfig,
)
from airflow_provider_maas.emulator.faults import (
    NO_FAULT,
    REQUEST_NOTES,
    ApiError,
    DropConnection,
    FaultDecision,
    FaultInjector,
    faulty_download,
    note,
)
from airflow_provider_maas.emulator.jobs import JobRecord, parse_create_body
from airflow_provider_maas.emulator.objects import (
    UploadRejected,
    b64,
    object_resource,
    receive_upload,
    too_big_message,
)
from airflow_provider_maas.emulator.results import ResultsSpec, write_results
from airflow_provider_maas.emulator.schedule import RESULTS_GONE, FaultSchedule, ScheduledFault

if TYPE_CHECKING:
    import ssl

logger = logging.getLogger(__name__)

PREFIX = "/v1/ai/batch/gemini/{endpoint}"
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_JOB = "{job:[0-9]{1,32}}"


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


class MaaSEmulator:
    """State of the emulated service and the ``aiohttp`` application serving it (``.app``)."""

    def __init__(self, config: EmulatorConfig | None = None, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config or EmulatorConfig()
        #: Serve https with this context (e.g. a self-signed certificate, to test TLS errors).
        self.ssl_context = ssl_context
        self.config.validate()
        self.jobs: dict[str, JobRecord] = {}
        self.jobs_created = 0
        #: Jobs created per uploaded file name (``"exactly one job per file"``).
        self.jobs_by_file: dict[str, int] = {}
        #: Requests to the redirect target of the ``redirect-307`` fault (a client that follows).
        self.redirect_hits = 0
        self.fault_schedule = FaultSchedule(self.config.scheduled_faults())
        self.files: dict[str, dict[str, Any]] = {}
        self.uploads_by_name: dict[str, int] = {}
        self.access_log: list[dict[str, Any]] = []
        self.request_count = 0
        self.base_url: str | None = None
        self._faults = FaultInjector(self.config)
        self._lock = threading.Lock()
        self._last_generation = 0
        self._referenced: set[str] = set()
        self._own_dir = self.config.data_dir is None
        self.data_dir = self.config.data_dir or tempfile.mkdtemp(prefix="maas-emulator-")
        for sub in ("uploads", "results", "tmp"):
            os.makedirs(os.path.join(self.data_dir, sub), exist_ok=True)
        self._runner: web.AppRunner | None = None
        self._closing = threading.Event()
        self.app = self._build_app()

    # ------------------------------------------------------------------ application
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        p = PREFIX
        app.router.add_post(f"{p}/files", self._upload)
        app.router.add_post(f"{p}/batchPredictionJobs", self._create)
        app.router.add_get(f"{p}/batchPredictionJobs/{_JOB}", self._get_job)
        app.router.add_get(f"{p}/batchPredictionJobs/{_JOB}/content", self._content)
        add_admin_routes(app, self)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, app: web.Application) -> None:
        self.close()

    def close(self) -> None:
        """Delete the temporary data directory (when the emulator made it)."""
        self._closing.set()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def start(self, host: str | None = None, port: int | None = None) -> str:
        """Serve on ``host:port`` (default: the config's) in the running loop; return the base URL."""
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.config.shutdown_timeout, handle_signals=False
        )
        await runner.setup()
        host = host or self.config.host
        site = web.TCPSite(
            runner, host, self.config.port if port is None else port, backlog=4096, ssl_context=self.ssl_context
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        scheme = "https" if self.ssl_context is not None else "http"
        self.base_url = f"{scheme}://{shown}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving (in-flight requests get ``shutdown_timeout`` seconds) and clean up."""
        runner, self._runner = self._runner, None
        self._closing.set()
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ inspection / control
    def set_job_state(self, name: str, state: str, error: dict[str, Any] | str | None = None) -> None:
        """Force a job's state from now on (``error``: a dict with code/message, or a message).

        Any state name is accepted, even one the documentation does not list (to test how a
        client copes with a new state); only the documented terminal states end the job.
        """
        if not isinstance(state, str) or not state:
            raise ValueError(f"A job state must be a non-empty string, not {state!r}")
        self.jobs[name].force(state, error)

    def expire_results(self, name: str) -> None:
        """Make the job's results gone (410), as after the 7-day retention."""
        job = self.jobs[name]
        job.results_expired = True
        if job.results_path:
            with contextlib.suppress(OSError):
                os.unlink(job.results_path)

    def job_state(self, name: str) -> str:
        return self.jobs[name].state

    def schedule(self, *faults: str | dict[str, Any] | ScheduledFault) -> None:
        """Add fault schedule entries, e.g. ``schedule("create:1:lost-500", "get:2:503")``."""
        self.fault_schedule.add(*faults)

    # ------------------------------------------------------------------ plumbing
    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key and key in text else text

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        notes: dict[str, Any] = {}
        REQUEST_NOTES.set(notes)
        if not request.path.startswith("/_emulator/"):
            with self._lock:
                self.request_count += 1
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
        resp: web.StreamResponse
        try:
            resp = await handler(request)
            status = resp.status
        except ApiError as exc:
            resp = exc.response()
            status = resp.status
        except web.HTTPNotFound:
            resp = ApiError(404, "NOT_FOUND", f"The requested URL {request.path} was not found.").response()
            status = 404
        except web.HTTPMethodNotAllowed:
            message = f"Method {request.method} is not supported on {request.path}."
            resp = ApiError(404, "NOT_FOUND", message).response()
            status = 404
        except DropConnection:
            notes.setdefault("fault", "reset")
            if request.transport is not None:
                request.transport.close()
            resp = web.Response(status=599)  # never sent: the transport is closed
            status = notes.get("sent_status", 0)
        except web.HTTPException as exc:  # e.g. a create body past aiohttp's client_max_size
            code = exc.status if exc.status >= 400 else 400
            resp = ApiError(code, _GOOGLE_STATUS.get(code, "UNKNOWN"), exc.reason).response()
            status = code
        except (ConnectionError, ClientPayloadError, asyncio.IncompleteReadError):
            # The client went away (e.g. mid-upload): nobody to answer.
            notes.setdefault("fault", "client_disconnected")
            resp = web.Response(status=599)
            status = 0
        except Exception as exc:
            logger.exception("MaaS emulator: unexpected error on %s %s", request.method, request.path)
            resp = ApiError(500, "INTERNAL", f"Internal error of the emulator: {exc!r}").response()
            status = 500
        self._log(request, status, notes.get("fault"))
        return resp

    def _log(self, request: web.Request, status: int, fault: str | None) -> None:
        entry = {
            "time": time.time(),
            "method": request.method,
            "path_qs": self._redact(request.path_qs),
            "status": status,
            "user_agent": self._redact(request.headers.get("User-Agent", "")),
            "fault": fault,
        }
        with self._lock:
            self.access_log.append(entry)
            limit = self.config.access_log_limit
            if limit and len(self.access_log) > limit:
                del self.access_log[: len(self.access_log) - limit // 2]

    def check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.config.api_key.encode()):
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected a valid API key "
                "as 'Authorization: Bearer KEY'.",
                {"WWW-Authenticate": "Bearer"},
            )

    async def _prelude(self, request: web.Request, route: str) -> tuple[str, FaultDecision]:
        """Auth, endpoint checks and the faults of the request; return the endpoint and the decision."""
        self.check_auth(request)
        endpoint = request.match_info["endpoint"]
        if endpoint not in self.config.endpoints:
            raise ApiError(404, "NOT_FOUND", f"Endpoint {endpoint} not found.")
        if endpoint in self.config.forbidden_endpoints:
            raise ApiError(403, "PERMISSION_DENIED", f"The API key may not use endpoint {endpoint}.")
        kind = route
        if route == "content":
            kind = "content" if request.query.get("alt") == "media" else "metadata"
        scheduled = self.fault_schedule.take(kind)
        if scheduled is not None:
            decision = FaultDecision(
                scheduled=scheduled,
                wrong_md5=scheduled.fault == "wrong-md5",
                truncate_download=scheduled.fault == "truncate",
                corrupt_download=scheduled.fault == "corrupt",
                salt=self.request_count,
            )
        else:
            decision = self._faults.decide(route, request.method, request.path_qs)
        if decision is not NO_FAULT:
            note("fault", decision.name)
            await self._faults.apply_before(request, decision)
        return endpoint, decision

    def _next_generation(self) -> int:
        with self._lock:
            gen = max(time.time_ns() // 1000, self._last_generation + 1)
            self._last_generation = gen
            return gen

    def _new_job_name(self) -> str:
        while True:
            name = str(10**17 + secrets.randbelow(9 * 10**18 - 10**17))
            if name not in self.jobs:
                return name

    def _live_file(self, name: str) -> dict[str, Any] | None:
        meta = self.files.get(name)
        if meta is None:
            return None
        if time.time() - meta["uploaded_at"] > self.config.retention_seconds:
            self.files.pop(name, None)
            self._drop_path(meta["path"])
            return None
        return meta

    def _drop_path(self, path: str) -> None:
        if path not in self._referenced:
            with contextlib.suppress(OSError):
                os.unlink(path)

    # ------------------------------------------------------------------ 1. upload
    async def _upload(self, request: web.Request) -> web.StreamResponse:
        _, decision = await self._prelude(request, "upload")
        if request.query.get("uploadType") != "media":
            raise _invalid("uploadType must be 'media'.")
        name = request.query.get("name", "")
        if not name:
            raise _invalid("Required parameter: name")
        if len(name.encode()) > 1024 or "\r" in name or "\n" in name or name in (".", ".."):
            raise _invalid(f"Invalid object name: {name!r}")
        cfg = self.config
        if request.content_length is not None and request.content_length > cfg.max_bytes:
            raise _invalid(too_big_message(cfg.max_bytes))
        tmp = os.path.join(self.data_dir, "tmp", secrets.token_hex(8))
        try:
            writer, count = await receive_upload(request, tmp, cfg.max_bytes, cfg.max_requests)
        except UploadRejected as exc:
            raise _invalid(str(exc)) from None
        generation = self._next_generation()
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        path = os.path.join(self.data_dir, "uploads", f"{digest}-{generation}.jsonl")
        os.replace(tmp, path)
        now = time.time()
        resource = object_resource(
            name=name, generation=generation, size=writer.size, md5=writer.md5, crc32c=writer.crc32c, created=now
        )
        with self._lock:
            old = self.files.get(name)
            self.files[name] = {**resource, "path": path, "request_count": count, "uploaded_at": now}
            self.uploads_by_name[name] = self.uploads_by_name.get(name, 0) + 1
        if old is not None:
            self._drop_path(old["path"])
        if decision.wrong_md5:
            note("fault", "wrong_md5")
            resource = {**resource, "md5Hash": b64(hashlib.md5(writer.md5).digest())}
        return web.json_response(resource)

    # ------------------------------------------------------------------ 2. create
    async def _create(self, request: web.Request) -> web.StreamResponse:
        endpoint, decision = await self._prelude(request, "create")
        display_name, file_name = parse_create_body(await request.read())
        meta = self._live_file(file_name)
        if meta is None:
            raise ApiError(404, "NOT_FOUND", f"File {file_name} not found (upload it first).")
        cfg = self.config
        shaping = self._faults.job_fields(decision.scheduled, meta)
        with self._lock:
            self.jobs_created += 1
            self.jobs_by_file[file_name] = self.jobs_by_file.get(file_name, 0) + 1
            ordinal = self.jobs_created
            job = JobRecord(
                name=self._new_job_name(),
                ordinal=ordinal,
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
            self.jobs[job.name] = job
        if decision.lost_create_response:
            note("fault", "lost_create_response")
            raise DropConnection
        if decision.scheduled is not None:
            await self._faults.spoil_create_answer(decision.scheduled)
        return web.json_response(job.create_resource())

    # ------------------------------------------------------------------ 3. get
    def _find_job(self, request: web.Request, endpoint: str) -> JobRecord:
        name = request.match_info["job"]
        job = self.jobs.get(name)
        if job is None or job.endpoint != endpoint:
            raise ApiError(404, "NOT_FOUND", f"The BatchPredictionJob {name} does not exist.")
        return job

    async def _get_job(self, request: web.Request) -> web.StreamResponse:
        endpoint, _ = await self._prelude(request, "get")
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
        cfg = self.config
        t = job.times()
        assert t.start is not None and t.end is not None
        path = os.path.join(self.data_dir, "results", f"{job.name}.jsonl")
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
            cancel=self._closing,
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

    async def _content(self, request: web.Request) -> web.StreamResponse:
        endpoint, decision = await self._prelude(request, "content")
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
        if job.results_expired or time.time() - t.end > self.config.retention_seconds:
            if not job.results_expired:
                self.expire_results(job.name)
            raise ApiError(
                410,
                "NOT_FOUND",
                f"Results of job {job.name} have expired: results are kept "
                f"{self.config.retention_seconds:g} seconds after the job ends.",
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
            job.results_path, headers={"Content-Type": "application/octet-stream"}, chunk_size=256 * 1024
        )
