"""The emulator's one middleware: every failure answered as the service does, and every request logged.

An :class:`~airflow_provider_maas.emulator.faults.ApiError` is answered Google-style
(``{"error": {"code", "message", "status"}}``); aiohttp's own 404/405/413 are answered the same
way; :class:`~airflow_provider_maas.emulator.faults.DropConnection` closes the connection without
an answer; a client that went away gets nothing; anything else is a 500. Each request then gets
one access-log entry (``MaaSEmulator.access_log``), with the fault it met and never the key.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import ClientPayloadError, web

from airflow_provider_maas.emulator.faults import REQUEST_NOTES, ApiError, DropConnection

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from airflow_provider_maas.emulator.server import MaaSEmulator

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

logger = logging.getLogger(__name__)

#: The Google RPC status of each HTTP code aiohttp itself may answer.
GOOGLE_STATUS = {
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
#: The status of a response that is never sent (the connection is closed instead).
_UNSENT = 599


async def answer(request: web.Request, handler: Handler, notes: dict[str, Any]) -> tuple[web.StreamResponse, int]:
    """Run ``handler``; return its response, or the service's answer to what it raised, and the
    status the client got (0: none)."""
    try:
        resp = await handler(request)
        return resp, resp.status
    except ApiError as exc:
        resp = exc.response()
        return resp, resp.status
    except web.HTTPNotFound:
        return ApiError(404, "NOT_FOUND", f"The requested URL {request.path} was not found.").response(), 404
    except web.HTTPMethodNotAllowed:
        message = f"Method {request.method} is not supported on {request.path}."
        return ApiError(404, "NOT_FOUND", message).response(), 404
    except DropConnection:
        notes.setdefault("fault", "reset")
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=_UNSENT), notes.get("sent_status", 0)
    except web.HTTPException as exc:  # e.g. a create body past aiohttp's client_max_size
        code = exc.status if exc.status >= 400 else 400
        return ApiError(code, GOOGLE_STATUS.get(code, "UNKNOWN"), exc.reason).response(), code
    except (ConnectionError, ClientPayloadError, asyncio.IncompleteReadError):
        # The client went away (e.g. mid-upload): nobody to answer.
        notes.setdefault("fault", "client_disconnected")
        return web.Response(status=_UNSENT), 0
    except Exception as exc:
        logger.exception("MaaS emulator: unexpected error on %s %s", request.method, request.path)
        return ApiError(500, "INTERNAL", f"Internal error of the emulator: {exc!r}").response(), 500


def emulator_middleware(emulator: MaaSEmulator) -> Any:
    """Count API requests, add the configured latency, answer failures, log every request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        notes: dict[str, Any] = {}
        REQUEST_NOTES.set(notes)
        if not request.path.startswith("/_emulator/"):
            emulator.count_request()
            if emulator.config.latency:
                await asyncio.sleep(emulator.config.latency)
        resp, status = await answer(request, handler, notes)
        emulator.log_request(request, status, notes.get("fault"))
        return resp

    return middleware
