"""HTTP plumbing of :class:`~airflow_provider_maas.hooks.maas.MaaSHook`: sessions, retries, streaming.

Imported lazily by the hook so that parsing a DAG never pays for ``requests``/``aiohttp``.
URLs, headers, error mapping and the backoff policy come from :mod:`airflow_provider_maas.api`,
shared by the sync and async paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from typing import IO, TYPE_CHECKING, Any

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from airflow_provider_maas import api
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSJobCreationUncertainError,
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


def _wait(base_delay: float) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return api.backoff_delay(state.attempt_number, retry_after=getattr(exc, "retry_after", None), base=base_delay)

    return wait


def _log_retry(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1fs",
            what,
            state.attempt_number,
            exc,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return before_sleep


def _retrying(what: str, max_attempts: int, base_delay: float) -> dict[str, Any]:
    return {
        "stop": tenacity.stop_after_attempt(max_attempts),
        "wait": _wait(base_delay),
        "retry": tenacity.retry_if_exception_type(MaaSRetryableError),
        "before_sleep": _log_retry(what),
        "reraise": True,
    }


# Sync -----------------------------------------------------------------------------------------


def _transport_error(err: requests.RequestException, *, what: str, idempotent: bool, timeout: float) -> Exception:
    """Map a ``requests`` transport error. For a non-idempotent call (job creation), only errors
    that prove the request never left (connect phase) are retryable."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    # NewConnectionError covers refused connections and (its subclass) failed DNS lookups.
    before_sending = isinstance(err, requests.ConnectTimeout) or (
        isinstance(err, requests.ConnectionError) and isinstance(reason, NewConnectionError)
    )
    if isinstance(err, requests.Timeout):
        detail = f"no answer within {timeout:g}s"
    else:
        detail = f"connection error ({type(err).__name__})"
    if not idempotent and not before_sending:
        return MaaSJobCreationUncertainError(
            f"{what}: {detail} after the request was sent. The service may or may not have created "
            "the job, so it was NOT retried automatically (a retry could pay for a second job). "
            "There is no list call to find it: check the vendor console, then clear the task to retry."
        )
    return MaaSRetryableError(f"{what}: {detail}")


def send(
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
    idempotent: bool = True,
    before_attempt: Callable[[], None] | None = None,
    max_attempts: int = api.DEFAULT_MAX_ATTEMPTS,
    base_delay: float = 1.0,
) -> requests.Response:
    """Send one API call with timeouts, bounded retries and error mapping; returns a 2xx response."""

    def attempt() -> requests.Response:
        if before_attempt is not None:
            before_attempt()
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
            )
        except requests.RequestException as err:
            raise _transport_error(err, what=what, idempotent=idempotent, timeout=config.timeout) from None
        if response.status_code >= 400:
            error = api.error_from_response(
                response.status_code,
                response.content,
                what=what,
                retry_after=response.headers.get("Retry-After"),
                api_key=config.api_key,
            )
            response.close()
            if (
                not idempotent
                and isinstance(error, MaaSRetryableError)
                and response.status_code not in api.NOT_PROCESSED_STATUS
            ):
                raise MaaSJobCreationUncertainError(
                    f"{error} The service may have created the job anyway, so it was NOT retried "
                    "automatically; check before clearing the task."
                )
            raise error
        if not stream:
            api.parse_json(response.content, what=what)  # a clear error, not a ValueError, on a non-JSON body
        return response

    return tenacity.Retrying(**_retrying(what, max_attempts, base_delay))(attempt)


def stream_to(hook: Any, url: str, *, job_name: str, path: ObjectStoragePath, metadata: dict[str, Any]) -> None:
    """One transfer of ``url`` (alt=media) into ``path``: streamed, CRC32C-checked, atomic."""
    from airflow_provider_maas.integrity import verify_download

    response = hook._call(
        "GET", url, what=f"Downloading results of job {job_name}", params={"alt": "media"}, stream=True
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


async def asend(
    config: api.ApiConfig,
    method: str,
    url: str,
    *,
    what: str,
    max_attempts: int = api.DEFAULT_MAX_ATTEMPTS,
    base_delay: float = 1.0,
) -> Any:
    """Async twin of :func:`send` for idempotent JSON calls (polling): returns the parsed JSON."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout)

    async def attempt() -> Any:
        session = shared_session(config)
        try:
            async with session.request(method, url, headers=config.headers(), timeout=timeout) as response:
                body = await response.read()
                if response.status >= 400:
                    raise api.error_from_response(
                        response.status,
                        body,
                        what=what,
                        retry_after=response.headers.get("Retry-After"),
                        api_key=config.api_key,
                    )
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise MaaSRetryableError(f"{what}: {type(err).__name__}") from None
        return api.parse_json(body, what=what)

    # The same policy as ``_retrying`` (attempts, backoff, Retry-After, log line), written out: a
    # tenacity.AsyncRetrying built per call cost ~60 us and ~100 short-lived objects per poll, which
    # with thousands of triggers showed up as CPU per poll and as more full GC passes.
    attempt_number = 0
    while True:
        attempt_number += 1
        try:
            return await attempt()
        except MaaSRetryableError as err:
            if attempt_number >= max_attempts:
                raise
            delay = api.backoff_delay(attempt_number, retry_after=getattr(err, "retry_after", None), base=base_delay)
            log.warning("%s: attempt %d failed (%s); retrying in %.1fs", what, attempt_number, err, delay)
            await asyncio.sleep(delay)
