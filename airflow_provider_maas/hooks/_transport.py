"""HTTP plumbing of :class:`~airflow_provider_maas.hooks.maas.MaaSHook`: sessions, retries, streaming.

Imported lazily by the hook so that parsing a DAG never pays for ``requests``/``aiohttp``.
URLs, headers, error mapping and the backoff policy come from :mod:`airflow_provider_maas.api`,
shared by the sync and async paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import weakref
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from airflow_provider_maas import api
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSConfigError,
    MaaSError,
    MaaSJobCreationUncertainError,
    MaaSNotFoundError,
    MaaSRateLimitError,
    MaaSRetryableError,
)
from airflow_provider_maas.integrity import StreamHasher
from airflow_provider_maas.storage import CHUNK_SIZE, EarlyWriteback, atomic_writer, source_size

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    import aiohttp
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger("airflow_provider_maas.hooks.maas")


class _Adapter(HTTPAdapter):
    """Pooled adapter that sends request bodies in large blocks (fast 50 MB uploads)."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs.setdefault("blocksize", CHUNK_SIZE)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


def make_session() -> requests.Session:
    session = requests.Session()
    adapter = _Adapter(pool_connections=4, pool_maxsize=64, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class Progress:
    """Logs ``<verb> N of M bytes (P%)`` about every 10% of a large transfer (>= 10 MB); quiet otherwise."""

    MIN_SIZE = 10 * CHUNK_SIZE

    def __init__(self, verb: str, total: int | None) -> None:
        self.verb = verb
        self.total = total if total and total >= self.MIN_SIZE else None
        self.next_mark = 0.1

    def update(self, done: int) -> None:
        if self.total is None or done < self.total * self.next_mark:
            return
        log.info("%s %d of %d bytes (%.0f%%)", self.verb, done, self.total, 100.0 * done / self.total)
        while self.next_mark <= done / self.total:
            self.next_mark += 0.1


class HashingReader:
    """Wraps a binary file object: hashes what is read (md5 + crc32c) so the upload is verified
    without a second pass over the bytes. ``len()`` gives the Content-Length."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.rewindable = handle.seekable()
        self._start = handle.tell() if self.rewindable else 0
        self._size = source_size(handle)
        self.hasher = StreamHasher(md5=True, crc32c=False)
        self._progress = Progress("Uploaded", self._size)

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk:
            self.hasher.update(chunk)
            self._progress.update(self.hasher.size)
        return chunk

    def __len__(self) -> int:
        if self._size is None:
            raise TypeError("size unknown")
        return self._size

    def payload(self) -> Any:
        """The request body: this reader (sent with Content-Length) when the size is known, else
        an iterator of chunks (sent with chunked transfer encoding; a non-seekable source)."""
        return self if self._size is not None else self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk

    def rewind(self) -> None:
        """Start over before an attempt (the first included)."""
        if self.hasher.size:
            if not self.rewindable:
                raise MaaSApiError("The upload failed midway and its source cannot be re-read; retry the task.")
            self._handle.seek(self._start)
            self.hasher = StreamHasher(md5=True, crc32c=False)
            self._progress = Progress("Uploaded", self._size)


# Retry policy ---------------------------------------------------------------------------------


def log_retry(what: str, attempt: int, error: BaseException, delay: float) -> None:
    log.warning("%s: attempt %d failed (%s); retrying in %.1fs", what, attempt, error, delay)


def _retrying(what: str, policy: api.RetryPolicy) -> tenacity.Retrying:
    """``policy`` as tenacity's retry loop (the async path runs the same policy as a plain loop)."""

    def wait(state: tenacity.RetryCallState) -> float:
        return policy.delay(state.attempt_number, state.outcome.exception() if state.outcome else None)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log_retry(what, state.attempt_number, error or Exception(), state.next_action.sleep if state.next_action else 0)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(policy.retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


# Transport errors (both libraries) --------------------------------------------------------------


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
    """What went wrong under an HTTP library's error: ``tls``, ``dns``, ``refused``, ``timeout``,
    ``reset`` or ``other`` (found by type, never by message text)."""
    causes = list(_causes(err))
    if any(isinstance(c, ssl.SSLError) or type(c).__name__ in _TLS_ERRORS for c in causes):
        return "tls"
    if any(isinstance(c, socket.gaierror) or type(c).__name__ in _DNS_ERRORS for c in causes):
        return "dns"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "refused"
    if any(isinstance(c, (TimeoutError, socket.timeout, asyncio.TimeoutError, requests.Timeout)) for c in causes):
        return "timeout"
    if any(isinstance(c, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) for c in causes):
        return "reset"
    return "other" if not any(type(c).__name__ in _RESET_ERRORS for c in causes) else "reset"


_TLS_ERRORS = frozenset({"SSLError", "ClientSSLError", "ClientConnectorCertificateError", "ClientConnectorSSLError"})
_DNS_ERRORS = frozenset({"NameResolutionError", "ClientConnectorDNSError"})
_RESET_ERRORS = frozenset({"RemoteDisconnected", "ProtocolError", "ServerDisconnectedError", "ClientOSError"})
_CAUSE_TEXT = {
    "dns": "the host name could not be resolved (DNS failure); check the connection's Base URL",
    "refused": "the connection was refused (nothing listens on that port); check the Base URL and that the "
    "service is up",
}


def transport_error(
    err: BaseException, *, what: str, url: str, config: api.ApiConfig, sent: bool | None = None
) -> Exception:
    """Map an HTTP library's error (``requests`` or ``aiohttp``) to a message naming host, port and
    cause. TLS failures are a :class:`MaaSConfigError` (never retried); the rest are retryable."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cause = transport_cause(err)
    if cause == "tls":
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
# the task without Airflow retries.


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


# Sync -----------------------------------------------------------------------------------------


def send(
    session: requests.Session,
    config: api.ApiConfig,
    method: str,
    url: str,
    *,
    what: str,
    policy: api.RetryPolicy,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    stream: bool = False,
    before_attempt: Callable[[], None] | None = None,
    not_found_hint: str | None = None,
) -> requests.Response:
    """Send one idempotent API call with timeouts, ``policy``'s retries and error mapping; returns a
    2xx response (its body checked to be a JSON object unless ``stream``)."""

    def attempt() -> requests.Response:
        if before_attempt is not None:
            before_attempt()
        response = send_once(
            session,
            config,
            method,
            url,
            what=what,
            params=params,
            json_body=json_body,
            data=data,
            stream=stream,
            not_found_hint=not_found_hint,
        )
        if not stream:
            api.parse_json(response.content, what=what, api_key=config.api_key)
        return response

    return _retrying(what, policy)(attempt)


def send_once(
    session: requests.Session,
    config: api.ApiConfig,
    method: str,
    url: str,
    *,
    what: str,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    stream: bool = False,
    not_found_hint: str | None = None,
) -> requests.Response:
    """One attempt: a 2xx response, or a mapped error (redirects are never followed)."""
    headers = config.headers()
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    try:
        response = session.request(
            method,
            url,
            params=params,
            json=json_body,
            data=data,
            headers=headers,
            stream=stream,
            timeout=(config.connect_timeout, config.timeout),
            verify=config.verify,
            allow_redirects=False,
        )
    except requests.RequestException as err:
        raise transport_error(err, what=what, url=url, config=config, sent=not _before_sending(err)) from None
    if response.status_code >= 300:
        status, retry_after, location = (
            response.status_code,
            response.headers.get("Retry-After"),
            response.headers.get("Location"),
        )
        body = response.content if status >= 400 else b""
        response.close()
        if status < 400:
            raise api.redirect_error(status, location, what=what, api_key=config.api_key)
        error = api.error_from_response(status, body, what=what, retry_after=retry_after, api_key=config.api_key)
        if not_found_hint and isinstance(error, MaaSNotFoundError):
            error.args = (f"{error} ({not_found_hint})",)
        raise error
    return response


def _before_sending(err: requests.RequestException) -> bool:
    """True when the error proves the request never left: no connection was made."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    # NewConnectionError covers refused connections and (its subclass) failed DNS lookups.
    return isinstance(err, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def create_job(
    session: requests.Session,
    config: api.ApiConfig,
    body: dict[str, Any],
    *,
    file_name: str,
    display_name: str,
    policy: api.RetryPolicy,
) -> dict[str, Any]:
    """The create call, under the rules of "Job creation" above; returns the job JSON."""
    what = f"Creating a job from {file_name!r}"

    def attempt() -> dict[str, Any]:
        try:
            response = send_once(
                session, config, "POST", config.jobs_url(), what=what, json_body=body, not_found_hint=CREATE_404_HINT
            )
        except MaaSRetryableError as err:
            if isinstance(err, MaaSRateLimitError) or _never_sent(err):
                raise
            raise uncertain_create(str(err), file_name=file_name, display_name=display_name) from None
        try:
            job = api.parse_json(response.content, what=what, api_key=config.api_key)
        except MaaSApiError as err:
            raise uncertain_create(str(err), file_name=file_name, display_name=display_name) from None
        if not isinstance(job.get("name"), str) or not job["name"]:
            raise uncertain_create("the answer has no job name.", file_name=file_name, display_name=display_name)
        return job

    return _retrying(what, policy)(attempt)  # type: ignore[no-any-return]


def _never_sent(err: MaaSRetryableError) -> bool:
    return getattr(err, "never_sent", False) is True


def stream_to(
    session: requests.Session,
    config: api.ApiConfig,
    policy: api.RetryPolicy,
    *,
    job_name: str,
    path: ObjectStoragePath,
    metadata: dict[str, Any],
) -> None:
    """One transfer of the job's results (``alt=media``) into ``path``: streamed, CRC32C-checked, atomic."""
    from airflow_provider_maas.integrity import verify_download

    response = send(
        session,
        config,
        "GET",
        config.content_url(job_name),
        what=f"Downloading results of job {job_name}",
        policy=policy,
        params={"alt": "media"},
        stream=True,
    )
    hasher = StreamHasher(md5=False, crc32c=True)
    expected = _int_or_none(metadata.get("size"))
    progress = Progress("Downloaded", expected)
    try:
        with atomic_writer(path) as out:
            writeback = EarlyWriteback(out)  # disk writes overlap the transfer, not follow it
            try:
                for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                    hasher.update(chunk)
                    out.write(chunk)
                    writeback.wrote(len(chunk))
                    progress.update(hasher.size)
                writeback.finish()
            except requests.RequestException as err:
                raise MaaSRetryableError(
                    f"Download of job {job_name} results broke off after {hasher.size} bytes ({type(err).__name__})"
                ) from None
            finally:
                writeback.close()
            verify_download(metadata, hasher, what=f"results of job {job_name}")
    finally:
        response.close()
    log.info("Downloaded results of job %s: %d bytes, crc32c verified", job_name, hasher.size)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# Async ----------------------------------------------------------------------------------------

#: Most sockets the shared aiohttp session opens at once (per loop and base URL). Thousands of
#: triggers polling every few seconds need far fewer; it keeps a busy triggerer under fd limits.
ASYNC_CONNECTION_LIMIT = 256

_SSL_CONTEXTS: dict[str, ssl.SSLContext] = {}
_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary()
)


def _ssl_for(verify: bool | str) -> ssl.SSLContext | bool:
    if verify is False:
        return False
    key = verify if isinstance(verify, str) else ""
    if key not in _SSL_CONTEXTS:
        _SSL_CONTEXTS[key] = ssl.create_default_context(cafile=key or None)
    return _SSL_CONTEXTS[key]


def shared_session(config: api.ApiConfig) -> aiohttp.ClientSession:
    """The one ``aiohttp.ClientSession`` of the running loop for this base URL and TLS setting."""
    import aiohttp

    loop = asyncio.get_running_loop()
    sessions = _SESSIONS.setdefault(loop, {})
    key = (config.base_url, repr(config.verify))
    session = sessions.get(key)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=ASYNC_CONNECTION_LIMIT, ssl=_ssl_for(config.verify) if config.base_url.startswith("https") else False
        )
        session = aiohttp.ClientSession(connector=connector)
        sessions[key] = session
    return session


_LEASES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], int]] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def session_lease(config: api.ApiConfig) -> AsyncIterator[None]:
    """Hold the loop's shared session open while a trigger runs; the last holder closes it.

    Thousands of triggers in one triggerer share one session; a loop that ends (``dag.test()``
    runs each trigger in its own loop) does not leave an unclosed session behind.
    """
    loop = asyncio.get_running_loop()
    key = (config.base_url, repr(config.verify))
    leases = _LEASES.setdefault(loop, {})
    leases[key] = leases.get(key, 0) + 1
    try:
        yield
    finally:
        leases[key] -= 1
        if leases[key] == 0:
            del leases[key]
            session = _SESSIONS.get(loop, {}).pop(key, None)
            if session is not None:
                await session.close()


async def close_shared_sessions() -> None:
    """Close the shared sessions of the running loop (tests, shutdown)."""
    sessions = _SESSIONS.pop(asyncio.get_running_loop(), {})
    for session in sessions.values():
        await session.close()


async def asend(config: api.ApiConfig, method: str, url: str, *, what: str, policy: api.RetryPolicy) -> Any:
    """Async twin of :func:`send` for idempotent JSON calls (polling): returns the parsed JSON."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout)

    async def attempt() -> Any:
        session = shared_session(config)
        try:
            async with session.request(
                method, url, headers=config.headers(), timeout=timeout, allow_redirects=False
            ) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise transport_error(err, what=what, url=url, config=config) from None
        if 300 <= status < 400:
            raise api.redirect_error(status, headers.get("Location"), what=what, api_key=config.api_key)
        if status >= 400:
            raise api.error_from_response(
                status, body, what=what, retry_after=headers.get("Retry-After"), api_key=config.api_key
            )
        return api.parse_json(body, what=what, api_key=config.api_key)

    # The same RetryPolicy as the sync path's tenacity loop, run as a plain loop: a
    # tenacity.AsyncRetrying built per call cost ~60 us and ~100 short-lived objects per poll, which
    # with thousands of triggers showed up as CPU per poll and as more full GC passes.
    attempt_number = 0
    while True:
        attempt_number += 1
        try:
            return await attempt()
        except MaaSError as err:
            if not policy.should_retry(attempt_number, err):
                raise
            delay = policy.delay(attempt_number, err)
            log_retry(what, attempt_number, err, delay)
            await asyncio.sleep(delay)
