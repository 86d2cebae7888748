"""Deterministic fault injection of the emulator.

Each API request gets a decision drawn from a hash of ``(seed, method, path and query, n)``
where ``n`` counts earlier requests with the same method, path and query. The decisions are
thus the same from one run to the next for the same sequence of requests (whatever the
interleaving of requests to different paths), and a retried request gets a fresh draw.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import math
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from airflow_provider_maas.emulator.config import JOB_STATE_PARTIALLY_SUCCEEDED
from airflow_provider_maas.emulator.schedule import (
    PLAIN_FAULTS,
    SLOW,
    ScheduledFault,
    request_digests,
    request_selector,
)

if TYPE_CHECKING:
    from airflow_provider_maas.emulator.config import EmulatorConfig


#: Notes about the request being handled (``fault``, ``sent_status``), read by the access log.
REQUEST_NOTES: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("maas_emulator_request_notes")


def note(key: str, value: Any) -> None:
    """Record something about the current request for the access log."""
    notes = REQUEST_NOTES.get(None)
    if notes is not None:
        notes[key] = value


class ApiError(Exception):
    """Answered as a Google-style JSON error: ``{"error": {"code", "message", "status"}}``."""

    def __init__(self, code: int, status: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.StreamResponse:
        body = {"error": {"code": self.code, "message": self.message, "status": self.status}}
        return web.Response(
            status=self.code,
            text=json.dumps(body),
            content_type="application/json",
            charset="UTF-8",
            headers=self.headers,
        )


class RawError(ApiError):
    """An error answered with a non-JSON body (HTML or plain text), as proxies and gateways do."""

    def __init__(self, code: int, body: str, content_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, "", body, headers)
        self.body = body
        self.content_type = content_type

    def response(self) -> web.StreamResponse:
        return web.Response(status=self.code, text=self.body, content_type=self.content_type, headers=self.headers)


class DropConnection(Exception):
    """Close the connection without an answer."""


_HTML_503 = (
    "<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n"
    "<title>Error {code} (Server Error)!!1</title>\n"
    "<p><b>{code}.</b> <ins>That's an error.</ins>\n"
    "<p>The server encountered a temporary error and could not complete your request."
    "<p>Please try again in 30 seconds. <ins>That's all we know.</ins>\n"
)
_TEXT_5XX = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"


@dataclass(frozen=True)
class FaultDecision:
    """What goes wrong with one request (nothing, by default)."""

    reset: bool = False
    too_many_requests: bool = False
    server_error: int = 0  # 0, 500 or 503
    server_error_body: str = "json"  # json, html or text
    slow: bool = False
    truncate_download: bool = False
    corrupt_download: bool = False
    wrong_md5: bool = False
    lost_create_response: bool = False
    salt: int = 0  # for choosing where to cut/corrupt a download
    scheduled: ScheduledFault | None = None  # from the fault schedule (takes the place of the rates)

    @property
    def name(self) -> str | None:
        """Short name of the fault that applies before the route runs (for the access log)."""
        if self.scheduled is not None:
            return str(self.scheduled.fault)
        if self.reset:
            return "reset"
        if self.too_many_requests:
            return "429"
        if self.server_error:
            return str(self.server_error)
        if self.slow:
            return "slow"
        return None


NO_FAULT = FaultDecision()


class FaultInjector:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._seen: dict[tuple[str, str], int] = {}
        #: Digests of the requests the ``fail-requests`` fault has failed once (they succeed after).
        self.failed_once: set[str] = set()
        self._lock = threading.Lock()

    def decide(self, route: str, method: str, path_qs: str) -> FaultDecision:
        cfg = self.config
        if not cfg.has_faults():
            return NO_FAULT
        key = (method, path_qs)
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
        digest = hashlib.blake2b(f"{cfg.seed}\0{method}\0{path_qs}\0{n}".encode(), digest_size=48).digest()
        draws = [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 48, 4)]
        generic = route != "create" or cfg.fault_create
        server_error = 0
        if generic and draws[2] < cfg.rate_5xx:
            server_error = 500 if draws[8] < 0.5 else 503
        body = "json" if draws[9] < 0.5 else ("html" if draws[9] < 0.75 else "text")
        return FaultDecision(
            reset=generic and draws[0] < cfg.rate_reset,
            too_many_requests=generic and draws[1] < cfg.rate_429,
            server_error=server_error,
            server_error_body=body,
            slow=generic and draws[3] < cfg.rate_slow,
            truncate_download=route == "content" and draws[4] < cfg.rate_truncate_download,
            corrupt_download=route == "content" and draws[5] < cfg.rate_corrupt_download,
            wrong_md5=route == "upload" and draws[6] < cfg.rate_wrong_md5,
            lost_create_response=route == "create" and draws[7] < cfg.rate_create_lost_response,
            salt=int.from_bytes(digest[40:48], "big"),
        )

    def retry_after_header(self) -> dict[str, str]:
        return {"Retry-After": str(max(0, math.ceil(self.config.retry_after)))}

    async def apply_before(self, request: web.Request, decision: FaultDecision) -> None:
        """Apply the faults that replace the route's work (raise), or delay it (slow)."""
        scheduled = decision.scheduled
        if scheduled is not None:
            if scheduled.fault in PLAIN_FAULTS:
                raise self.plain_answer(request, scheduled)
            if scheduled.fault == SLOW:
                await self.answer_late(request, float(scheduled.arg) if scheduled.arg else self.config.slow_seconds)
            return
        if decision.reset:
            raise DropConnection
        if decision.too_many_requests:
            raise self.too_many_requests()
        if decision.server_error:
            raise self.server_error(decision.server_error, decision.server_error_body)
        if decision.slow:
            await self.answer_late(request, self.config.slow_seconds)

    @staticmethod
    async def answer_late(request: web.Request, seconds: float) -> None:
        """Wait ``seconds``; then drop the call if the client has given up (no side effect)."""
        await asyncio.sleep(seconds)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise DropConnection

    def too_many_requests(self) -> ApiError:
        return ApiError(
            429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", self.retry_after_header()
        )

    def server_error(self, code: int, body: str | None = "json") -> ApiError:
        """A 500 or 503 (with Retry-After) as Google-style JSON, or a gateway's HTML or text page."""
        headers = self.retry_after_header() if code == 503 else {}
        if body == "html":
            return RawError(code, _HTML_503.format(code=code), "text/html", headers)
        if body == "text":
            return RawError(code, _TEXT_5XX, "text/plain", headers)
        if code == 500:
            return ApiError(500, "INTERNAL", "Internal error encountered.", headers)
        return ApiError(503, "UNAVAILABLE", "The service is currently unavailable.", headers)

    def plain_answer(self, request: web.Request, fault: ScheduledFault) -> Exception:
        """The answer of a scheduled fault that replaces the call (the call is not carried out)."""
        name = fault.fault
        if name == "reset":
            return DropConnection()
        if name == "429":
            return self.too_many_requests()
        if name in ("500", "503"):
            return self.server_error(int(name), fault.arg)
        if name == "401":
            return ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if name == "404":
            return ApiError(404, "NOT_FOUND", f"The requested URL {request.path} was not found.")
        if name == "redirect-307":
            location = f"{request.scheme}://{request.host}/_emulator/redirect-target"
            return RawError(307, "Temporary Redirect", "text/plain", {"Location": location})
        if name == "echo-headers":
            echoed = "\n".join(f"{key}: {value}" for key, value in request.headers.items())
            page = f"<html><body><h1>Request headers</h1><pre>{echoed}</pre></body></html>"
            return RawError(int(fault.arg or 200), page, "text/html")
        if name == "deep-json":
            return RawError(200, '{"a":' * DEEP_JSON_LEVELS + "1" + "}" * DEEP_JSON_LEVELS, "application/json")
        if name == "nonjson-200":
            return RawError(200, NON_JSON_PAGE, "text/html")
        raise AssertionError(f"not a plain fault: {name}")  # pragma: no cover - checked by ScheduledFault

    def job_fields(self, fault: ScheduledFault | None, meta: dict[str, Any]) -> dict[str, Any]:
        """JobRecord fields for the results faults of the schedule (partial-missing, ...)."""
        if fault is None:
            return {}
        count = int(meta["request_count"])
        if fault.fault == "partial-missing":
            k = min(int(fault.arg) if fault.arg else max(1, count // 3), count)
            return {"final_state": JOB_STATE_PARTIALLY_SUCCEEDED, "missing": frozenset(range(count - k, count))}
        if fault.fault == "duplicate-lines":
            return {"duplicate_lines": int(fault.arg) if fault.arg else 2}
        if fault.fault == "fail-requests":
            assert fault.arg is not None
            how, value = request_selector(fault.arg)
            chosen = set()
            for position, (digest, line) in enumerate(request_digests(meta["path"])):
                picked = position in value if how == "index" else value in line
                with self._lock:
                    if picked and digest not in self.failed_once:
                        self.failed_once.add(digest)
                        chosen.add(position)
            return {"extra_failed": frozenset(chosen)}
        return {}

    async def spoil_create_answer(self, fault: ScheduledFault) -> None:
        """The ``lost-*`` faults: the job exists, the answer does not say so."""
        name = fault.fault
        if name in ("lost-500", "lost-503"):
            raise self.server_error(int(name[-3:]))
        if name == "lost-reset":
            raise DropConnection
        if name == "lost-nonjson":
            raise RawError(200, NON_JSON_PAGE, "text/html")
        if name == "lost-timeout":
            await asyncio.sleep(float(fault.arg) if fault.arg else self.config.slow_seconds)


#: Depth of the ``deep-json`` answer.
DEEP_JSON_LEVELS = 100_000
NON_JSON_PAGE = "<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body>It works!</body></html>\n"


def _read_at(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


async def faulty_download(
    request: web.Request, path: str, size: int, decision: FaultDecision, headers: dict[str, Any]
) -> web.StreamResponse:
    """Serve ``path`` cut short (then drop the connection) or with a few bytes flipped (same length)."""
    start, stop = 0, size
    status = 200
    rng = request.http_range
    if rng.start is not None or rng.stop is not None:
        start = rng.start or 0
        stop = min(rng.stop if rng.stop is not None else size, size)
        if start < 0:
            start, stop = max(size + start, 0), size
        status = 206
    length = max(stop - start, 0)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = length
    if status == 206:
        resp.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    await resp.prepare(request)
    picker = random.Random(decision.salt)
    cut = stop
    if decision.truncate_download and length > 0:
        cut = start + int(length * picker.uniform(0.05, 0.9))
    flips: set[int] = set()
    if decision.corrupt_download and length > 0:
        flips = {picker.randrange(start, stop) for _ in range(min(8, length))}
    loop = asyncio.get_running_loop()
    offset = start
    chunk = 256 * 1024
    while offset < cut:
        data = await loop.run_in_executor(None, _read_at, path, offset, min(chunk, cut - offset))
        if not data:
            break
        hits = [p - offset for p in flips if offset <= p < offset + len(data)]
        if hits:
            buf = bytearray(data)
            for i in hits:
                buf[i] ^= 0xFF
            data = bytes(buf)
        await resp.write(data)
        offset += len(data)
    if cut < stop:
        note("sent_status", status)
        raise DropConnection
    await resp.write_eof()
    return resp
