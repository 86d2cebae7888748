"""The MaaS_Ge batch API emulator: its state, its lifecycle, and the ``aiohttp.web`` application.

Who serves what: ``api.py`` the four documented calls (upload, create, get, results; the routes
are listed there), ``admin.py`` the ``/_emulator/...`` routes that drive and inspect it (never
faulted), ``middleware.py`` the service's answer to every failure and the access log; the faults
come from ``schedule.py`` (exact: "the next N calls of kind K") and ``faults.py`` (rates).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from airflow_provider_maas.emulator.admin import add_admin_routes
from airflow_provider_maas.emulator.api import PREFIX, BatchApi
from airflow_provider_maas.emulator.config import EmulatorConfig
from airflow_provider_maas.emulator.faults import ApiError
from airflow_provider_maas.emulator.middleware import emulator_middleware
from airflow_provider_maas.emulator.schedule import FaultSchedule, ScheduledFault

if TYPE_CHECKING:
    import ssl

    from airflow_provider_maas.emulator.jobs import JobRecord

__all__ = ["PREFIX", "MaaSEmulator"]


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
        #: Guards the counters, dicts and log above (the server thread writes, tests read).
        self.lock = threading.Lock()
        self._own_dir = self.config.data_dir is None
        self.data_dir = self.config.data_dir or tempfile.mkdtemp(prefix="maas-emulator-")
        for sub in ("uploads", "results", "tmp"):
            os.makedirs(os.path.join(self.data_dir, sub), exist_ok=True)
        self._runner: web.AppRunner | None = None
        #: Set once the emulator stops (results still being written are abandoned).
        self.closing = threading.Event()
        self.api = BatchApi(self)
        self.app = self._build_app()

    # ------------------------------------------------------------------ application
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[emulator_middleware(self)])
        self.api.add_routes(app)
        add_admin_routes(app, self)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, app: web.Application) -> None:
        self.close()

    def close(self) -> None:
        """Delete the temporary data directory (when the emulator made it)."""
        self.closing.set()
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
        self.closing.set()
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

    def count_request(self) -> None:
        """One more API request (admin routes are not counted)."""
        with self.lock:
            self.request_count += 1

    def log_request(self, request: web.Request, status: int, fault: str | None) -> None:
        """One access-log entry (the key redacted, though a client should never put it in a URL)."""
        entry = {
            "time": time.time(),
            "method": request.method,
            "path_qs": self._redact(request.path_qs),
            "status": status,
            "user_agent": self._redact(request.headers.get("User-Agent", "")),
            "fault": fault,
        }
        with self.lock:
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
