"""What a failed call means: transport errors of either HTTP library (``requests``, ``aiohttp``)
named by host, port and cause, and the rules of job creation. No HTTP library is imported here:
causes are found by type (OS errors, ``ssl``) and, for the libraries' own wrappers, by class name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_maas.client.config import check_name
from airflow_provider_maas.exceptions import (
    MaaSConfigError,
    MaaSError,
    MaaSInputError,
    MaaSJobCreationUncertainError,
    MaaSRetryableError,
)
from airflow_provider_maas.redaction import contains_key, neutralise, redact

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_maas.client.config import ApiConfig


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps (``__cause__``, ``args``, urllib3's ``reason``, aiohttp's
    ``os_error``/``certificate_error``), each once."""
    seen: set[int] = set()
    stack: list[Any] = [err]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend([item.__cause__, item.__context__, *item.args])
        stack.extend(getattr(item, name, None) for name in ("reason", "os_error", "certificate_error"))


def transport_cause(err: BaseException) -> str:
    """What went wrong under an HTTP library's error: ``certificate`` (verification failed), ``tls``
    (another TLS failure), ``dns``, ``refused``, ``timeout``, ``reset`` or ``other`` (found by type,
    never by message text)."""
    causes = list(_causes(err))
    if any(isinstance(c, ssl.SSLCertVerificationError) or type(c).__name__ in _CERT_ERRORS for c in causes):
        return "certificate"
    if any(isinstance(c, ssl.SSLError) or type(c).__name__ in _TLS_ERRORS for c in causes):
        return "tls"
    if any(isinstance(c, socket.gaierror) or type(c).__name__ in _DNS_ERRORS for c in causes):
        return "dns"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "refused"
    if any(isinstance(c, (TimeoutError, asyncio.TimeoutError)) or type(c).__name__ in _TIMEOUTS for c in causes):
        return "timeout"
    if any(isinstance(c, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) for c in causes):
        return "reset"
    return "other" if not any(type(c).__name__ in _RESET_ERRORS for c in causes) else "reset"


_CERT_ERRORS = frozenset({"ClientConnectorCertificateError"})
_TLS_ERRORS = frozenset({"SSLError", "ClientSSLError", "ClientConnectorSSLError"})
_DNS_ERRORS = frozenset({"NameResolutionError", "ClientConnectorDNSError"})
_TIMEOUTS = frozenset({"Timeout", "ReadTimeout", "ConnectTimeout", "ReadTimeoutError", "ConnectTimeoutError"})
_RESET_ERRORS = frozenset({"RemoteDisconnected", "ProtocolError", "ServerDisconnectedError", "ClientOSError"})
_CAUSE_TEXT = {
    "dns": "the host name could not be resolved (DNS failure); check the connection's Base URL",
    "refused": "the connection was refused (nothing listens on that port); check the Base URL and that the "
    "service is up",
}


def transport_error(
    err: BaseException, *, what: str, url: str, config: ApiConfig, sent: bool | None = None
) -> Exception:
    """Map an HTTP library's error (``requests`` or ``aiohttp``) to a message naming host, port and
    cause. TLS failures are a :class:`MaaSConfigError` (never retried); the rest are retryable.

    :param sent: False when the request cannot have left (no connection was made), None if unknown.
    """
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cause = transport_cause(err)
    if cause == "tls":
        return MaaSConfigError(
            f"{what}: the TLS handshake with {host}:{port} failed ({type(err).__name__}): check that the "
            "connection's Base URL uses the scheme (https or http) and port the service really serves."
        )
    if cause == "certificate":
        return MaaSConfigError(
            f"{what}: TLS certificate verification failed for {host}:{port} ({type(err).__name__}). If the "
            'server uses a private CA, set the connection extra "verify" to the path of its CA bundle '
            '(PEM file); "verify": false turns checking off (not recommended).'
        )
    if cause == "timeout" and sent is not False:
        text = f"no answer from {host}:{port} within {config.timeout:g}s (timed out)"
    elif cause == "timeout":
        text = f"cannot reach {host}:{port}: no connection within {config.connect_timeout:g}s (timed out)"
    elif cause in ("dns", "refused"):
        text = f"cannot reach {host}:{port}: {_CAUSE_TEXT[cause]}"
    elif cause == "reset":
        text = f"the connection to {host}:{port} was closed or reset before an answer came"
    else:
        text = f"connection error with {host}:{port} ({type(err).__name__})"
    error = MaaSRetryableError(f"{what}: {text}")
    error.never_sent = sent is False  # type: ignore[attr-defined]  # read by the create call
    return error


# Job creation ----------------------------------------------------------------------------------
#
# A create call is never sent twice once it may have reached the service: the API has no list
# call, so a second job could not be told apart from the first, and both are paid for. What
# proves the service did NOT act: a connection that was never made (refused, DNS, connect
# timeout) and 429 (quota: refused before any work), which is retried with backoff and, when the
# retries are used up, raised as MaaSRateLimitError (nothing was created: the shard can wait).
# Everything else after sending is uncertain: 5xx (503 included: a gateway may answer it after
# the service behind it created the job), 408, a read timeout, a reset, and a 2xx whose body is
# not a JSON object with a string "name". It raises MaaSJobCreationUncertainError, which fails
# the task without Airflow retries. So does a 3xx (the POST may have been processed before the
# redirect, which is never followed: it would carry the key elsewhere) and a job name that cannot
# be used in a URL (the job may exist, but polling it would call another address).


#: Added to a 404 on upload and create: the usual cause is a wrong ENDPOINT.
UPLOAD_404_HINT = "check the connection's Endpoint field: the service does not know this ENDPOINT"
CREATE_404_HINT = (
    "check the connection's Endpoint field (the service may not know this ENDPOINT), "
    "and that the file was uploaded less than 7 days ago"
)


def uncertain_create(detail: str, *, file_name: str, display_name: str) -> MaaSJobCreationUncertainError:
    detail = (
        detail.removeprefix(f"Creating a job from {file_name!r}").removeprefix(":").removeprefix(" failed:").strip()
    )
    return MaaSJobCreationUncertainError(
        f"Creating a job from {file_name!r} (display name {display_name!r}) may or may not have worked: "
        f"{detail} The request had been sent, so it was not retried (a second job would be paid for too). "
        f"There is no list call to find it: look for a job named {display_name!r} in the vendor's console. "
        "To create the job anyway, clear the task."
    )


def job_name_problem(name: Any, *, api_key: str | None) -> str | None:
    """Why the ``name`` a create answered cannot be used to poll the job (redacted), or None."""
    if name is None or name == "":
        return "the answer has no job name."
    shown = repr(neutralise(redact(str(name), api_key), 1000))
    shown = f"{shown[:200]}{'...' if len(shown) > 200 else ''}"
    if not isinstance(name, str):
        kind = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(type(name), "value")
        return f"the answer's job name {shown} is a JSON {kind}, not a string: it cannot be polled."
    try:
        check_name(name, "job name")
    except MaaSInputError:
        return (
            f"the answer names the job {shown}, which cannot be polled: a job name that is blank, holds '/', "
            "'\\', '..' or a control character, or is over 1024 characters, would make the status URL point "
            "elsewhere."
        )
    if contains_key(name, api_key):
        return "the answer's job name holds the API key: it cannot be polled."
    return None


def proves_not_created(err: BaseException) -> bool:
    """Whether a create that raised ``err`` certainly created no job (so the marker can go).

    The hook's contract: every create whose outcome is unknown (lost answer, 5xx, timeout, reset,
    unreadable 2xx) raises :class:`MaaSJobCreationUncertainError`; its other errors (bad input, 4xx,
    429 after its retries, a connection never made) prove nothing was created. Anything that is
    not a provider error (a bug, the task being killed) leaves the outcome unknown.
    """

    return isinstance(err, MaaSError) and not isinstance(err, MaaSJobCreationUncertainError)
