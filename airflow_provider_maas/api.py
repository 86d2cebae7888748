"""The one place that knows the service's HTTP surface.

URL building, name checks, auth headers, error mapping and the retry policy live here and are
used by both the sync (``requests``) and async (``aiohttp``) paths of :class:`~airflow_provider_maas.hooks.maas.MaaSHook`.
Nothing here performs I/O.
"""

from __future__ import annotations

import html
import ipaddress
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_maas.connection import DEFAULT_BASE_URL
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSAuthError,
    MaaSConfigError,
    MaaSInputError,
    MaaSNotFoundError,
    MaaSRateLimitError,
    MaaSResultsGoneError,
    MaaSRetryableError,
)

API_PREFIX = "/v1/ai/batch/gemini"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
USER_AGENT = "airflow-provider-maas"

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: The one status taken to prove the service did NOT act on a create call, so creation may be
#: retried: 429 RESOURCE_EXHAUSTED is a refusal for quota before any work. 503 is not: a gateway
#: or load balancer may answer 503 after the service behind it created the job (see
#: ``hooks/_failures.py``, "Job creation").
NOT_PROCESSED_STATUS = frozenset({429})

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")  # C0 and C1 control characters, slashes


def check_name(name: Any, what: str) -> str:
    """Refuse a file or job name that could escape its place in the URL.

    :param name: The name to check.
    :param what: What the name is ("file name", "job name"), for the message.
    """
    if not isinstance(name, str) or not name.strip():
        raise MaaSInputError(f"The {what} must be a non-empty string, got {name!r}.")
    if _BAD_NAME.search(name) or name in {".", ".."} or ".." in name:
        raise MaaSInputError(
            f"The {what} {name!r} contains '/', '\\', '..' or a control character; "
            "use a plain name such as 'requests-2026-01-01.jsonl'."
        )
    if len(name) > 1024:
        raise MaaSInputError(f"The {what} is {len(name)} characters long; at most 1024 are allowed.")
    return name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_insecure_http: bool = False) -> str:
    """Validate the base URL: ``https://``, or ``http://`` only on loopback unless explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise MaaSConfigError(f"The MaaS connection host {url!r} is not a URL; set it to e.g. {DEFAULT_BASE_URL!r}.")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise MaaSConfigError(
            f"Refusing to send the API key over plain http to {parts.hostname!r}: use https, or set "
            '"allow_insecure_http": true in the connection extra if this is really intended.'
        )
    return url.rstrip("/")


@dataclass(frozen=True)
class ApiConfig:
    """Everything needed to talk to one ENDPOINT of the service. ``api_key`` never shows in ``repr``."""

    base_url: str
    endpoint: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    verify: bool | str = True

    @property
    def prefix(self) -> str:
        return f"{self.base_url}{API_PREFIX}/{quote(self.endpoint, safe='')}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT}

    # URLs of the four documented calls -------------------------------------------------
    def upload_url(self, name: str) -> tuple[str, dict[str, str]]:
        return f"{self.prefix}/files", {"uploadType": "media", "name": check_name(name, "file name")}

    def jobs_url(self) -> str:
        return f"{self.prefix}/batchPredictionJobs"

    def job_url(self, job_name: str) -> str:
        return f"{self.prefix}/batchPredictionJobs/{quote(check_name(job_name, 'job name'), safe='')}"

    def content_url(self, job_name: str) -> str:
        return f"{self.job_url(job_name)}/content"


def build_config(
    *,
    host: str | None,
    password: str | None,
    extra: dict[str, Any],
    endpoint_override: str | None,
    conn_id: str,
) -> ApiConfig:
    """Build an :class:`ApiConfig` from an Airflow connection's fields, with clear errors."""
    base_url = check_base_url(
        (host or "").strip() or DEFAULT_BASE_URL,
        allow_insecure_http=_as_bool(extra.get("allow_insecure_http", False)),
    )
    endpoint = (endpoint_override or extra.get("endpoint") or "").strip()
    if not endpoint:
        raise MaaSConfigError(
            f"No ENDPOINT for connection {conn_id!r}: set the connection's 'Endpoint' field "
            "(extra.endpoint) or pass endpoint= to the hook or operator."
        )
    check_name(endpoint, "endpoint")
    if not password:
        raise MaaSConfigError(
            f"No API key in connection {conn_id!r}: put the key in the connection's 'API Key' (password) field."
        )
    try:
        timeout = float(extra.get("timeout") or DEFAULT_TIMEOUT)
    except (TypeError, ValueError):
        timeout = math.nan
    if not 0 < timeout < math.inf:
        raise MaaSConfigError(
            f"Connection {conn_id!r}: extra.timeout must be a positive number of seconds, not {extra.get('timeout')!r}."
        )
    verify = parse_verify(extra.get("verify", True), conn_id=conn_id)
    return ApiConfig(
        base_url=base_url,
        endpoint=endpoint,
        api_key=password,
        timeout=timeout,
        connect_timeout=min(DEFAULT_CONNECT_TIMEOUT, timeout),
        verify=verify,
    )


def parse_verify(value: Any, *, conn_id: str) -> bool | str:
    """The connection's ``verify`` extra, strictly: ``True``/``False`` (or the strings "true"/"false",
    any case), or the path of an existing CA bundle file. Anything else is a :class:`MaaSConfigError`:
    a loose reading once turned checking off for ``0`` or ``""`` on one path and not the other."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in {"true", "false"}:
            return text.lower() == "true"
        if text and os.path.isfile(text):
            return text
        if text and os.path.exists(text):
            problem = f"{text!r} is not a file"
        elif text:
            problem = f"no file {text!r} exists"
        else:
            problem = "it is empty"
    else:
        problem = f"{value!r} is not true, false or a path"
    raise MaaSConfigError(
        f"Connection {conn_id!r}: extra.verify must be true, false or the path of a CA bundle file (PEM), "
        f"but {problem}. Leave it unset (true) to check the server's certificate against the system CAs."
    )


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


# Errors ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


#: ``Authorization: <anything>`` (a header echoed by a proxy) and ``Bearer <token>``.
_AUTH_VALUE = re.compile(r"(authorization[\s\"'<>/]*[:=][\s\"']*)[^\s\"'<>,;]+(\s+[^\s\"'<>,;]+)?", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[^\s\"'<>,;]+", re.IGNORECASE)
#: Longest text of a response kept in an error message.
MAX_SHOWN = 300


def redact(text: str, api_key: str | None) -> str:
    """``text`` without the API key nor any ``Authorization:`` / ``Bearer`` value.

    Every text taken from a response goes through here BEFORE it is cut or stored (a key cut in
    half by a length limit would still leak its first half).
    """
    if api_key:
        text = text.replace(api_key, "***")
    text = _AUTH_VALUE.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


def response_text(body: bytes, api_key: str | None, *, limit: int = MAX_SHOWN) -> str:
    """Readable, redacted and shortened text of a response body (HTML tags and spacing removed)."""
    text = redact(body.decode("utf-8", errors="replace"), api_key)
    if "<" in text:
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
        text = redact(text, api_key)  # an entity (&#66;earer) may have hidden a pattern
    text = " ".join(text.split())
    return (text[:limit] + "...") if len(text) > limit else text


def _load_json(body: bytes) -> Any:
    """``json.loads`` that never raises anything but ``ValueError`` (deep nesting included)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def error_from_response(
    status: int, body: bytes, *, what: str, retry_after: str | None = None, api_key: str | None = None
) -> MaaSApiError:
    """Map an HTTP error answer to the matching exception, with a readable, redacted message.

    Works for the documented Google-style body ``{"error": {"code", "message", "status"}}`` and
    for any other body (HTML from a proxy, plain text, nothing).
    """
    error_status: str | None = None
    error_message: str | None = None
    try:
        payload = _load_json(body)
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            error_status = err.get("status") if isinstance(err.get("status"), str) else None
            if err.get("message") is not None:
                error_message = response_text(str(err["message"]).encode(), api_key, limit=MAX_SHOWN * 4)
            error_status = redact(error_status, api_key)[:100] if error_status else None
        elif isinstance(err, str):
            error_message = response_text(err.encode(), api_key)
    except (ValueError, AttributeError):
        pass
    if error_message is None:  # not the Google shape: show what came, shortened
        error_message = response_text(body, api_key) or None
    detail = f"HTTP {status}" + (f" {error_status}" if error_status else "")
    message = f"{what} failed: {detail}: {error_message or 'no error message in the answer'}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "error_status": error_status,
        "error_message": error_message,
        "retry_after": parse_retry_after(retry_after),
    }
    if status in (401, 403):
        hint = (
            "check the API key in the connection's 'API Key' field"
            if status == 401
            else "check that this key may use the ENDPOINT set in the connection"
        )
        return MaaSAuthError(f"{message} ({hint})", **kwargs)
    if status == 410:
        return MaaSResultsGoneError(message, **kwargs)
    if status == 404:
        return MaaSNotFoundError(message, **kwargs)
    if status == 429:
        return MaaSRateLimitError(message, **kwargs)
    if status in RETRYABLE_STATUS:
        return MaaSRetryableError(message, **kwargs)
    return MaaSApiError(message, **kwargs)


def parse_json(body: bytes, *, what: str, api_key: str | None = None) -> dict[str, Any]:
    """Parse a success body; anything but a JSON object (deep nesting included) is a clear
    :class:`MaaSApiError` quoting the redacted start of the body. The key is taken out of the
    body first, so no value of the result (a job's error message...) can carry it on."""
    if api_key and api_key.encode() in body:
        body = body.replace(api_key.encode(), b"***")
    try:
        payload = _load_json(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        snippet = response_text(body, api_key, limit=200)
        raise MaaSApiError(
            f"{what}: the service answered with success but the body is not a usable JSON object: {snippet!r}; "
            "check the connection's Base URL points at the MaaS API."
        )
    return payload


def redirect_error(status: int, location: str | None, *, what: str, api_key: str | None) -> MaaSConfigError:
    """A 3xx answer: never followed (a redirect would carry the API key to another address)."""
    target = redact(location or "", api_key)[:200] or "no Location given"
    return MaaSConfigError(
        f"{what}: the server answered HTTP {status}, a redirect to {target}. Redirects are not followed "
        "(they would send the API key elsewhere): set the connection's Base URL to the address the "
        "service really answers on."
    )


def backoff_delay(attempt: int, *, retry_after: float | None, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter; never shorter than the service's ``Retry-After``."""
    delay = random.uniform(0, min(cap, base * (2 ** (attempt - 1))))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap * 5))
    return delay


DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy of every call, sync (tenacity) and async (a loop): how many attempts,
    the backoff (exponential, full jitter, at least ``Retry-After``) and what is retried
    (:class:`MaaSRetryableError`: 429, 408, 5xx, connection errors, timeouts; never a 4xx, a TLS
    failure or an uncertain job creation)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = 1.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise MaaSConfigError(f"max_attempts must be at least 1, not {self.max_attempts!r}.")

    @staticmethod
    def retryable(error: BaseException) -> bool:
        return isinstance(error, MaaSRetryableError)

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        retry_after = getattr(error, "retry_after", None)
        return backoff_delay(attempt, retry_after=retry_after, base=self.base_delay, cap=self.cap)

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        return attempt < self.max_attempts and self.retryable(error)
