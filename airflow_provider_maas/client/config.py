"""Where and how to reach the service: base URL, name checks, TLS, timeouts, auth headers (no I/O)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_maas.client.service import API_PREFIX, DEFAULT_BASE_URL
from airflow_provider_maas.exceptions import (
    MaaSConfigError,
    MaaSInputError,
)
from airflow_provider_maas.flags import is_true
from airflow_provider_maas.redaction import UNSAFE, neutralise

DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
USER_AGENT = "airflow-provider-maas"

#: Slashes, and the characters :data:`~airflow_provider_maas.redaction.UNSAFE` escapes in logs
#: (C0 and C1 controls, line separators, bidirectional and zero-width controls): a name is logged as is.
_BAD_NAME = re.compile(f"[/\\\\]|{UNSAFE.pattern}")


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
    if "@" in url:  # a user part (credentials), or something no Base URL holds: never repeated
        raise MaaSConfigError(
            "The MaaS connection host holds a user part before an '@' (credentials): they would be sent with "
            "every call and written to logs and errors. Give the Base URL alone, e.g. "
            f"{DEFAULT_BASE_URL!r}; the API key goes in the connection's 'API Key' field."
        )
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise MaaSConfigError(
            f"The MaaS connection host {neutralise(url.split('?')[0], 200)!r} is not a URL; set it to e.g. "
            f"{DEFAULT_BASE_URL!r}."
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise MaaSConfigError(
            "The MaaS connection host has a query string or fragment ('?...' or '#...'): the API paths would "
            f"be appended to it. Give the Base URL alone, e.g. {DEFAULT_BASE_URL!r}."
        )
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
        allow_insecure_http=is_true(
            extra.get("allow_insecure_http"),
            what=f"Connection {conn_id!r}: extra.allow_insecure_http",
            error=MaaSConfigError,
            secret=password,
        ),
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
    bad = next((index for index, char in enumerate(password) if not " " <= char <= "~"), None)
    if bad is not None:  # never repeated: a key with a line break would otherwise fail every call as a
        # "connection error" (requests' InvalidHeader quotes it), a non-ASCII one as a UnicodeEncodeError
        raise MaaSConfigError(
            f"The API key in connection {conn_id!r} holds a line break, a control character or a non-ASCII "
            f"character (at position {bad + 1} of {len(password)}): put the key in the 'API Key' field again, "
            "without it (a key pasted with a trailing newline?)."
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
