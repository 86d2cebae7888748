"""HTTP plumbing of :class:`~airflow_provider_maas.hooks.maas.MaaSHook`: sessions, retries, streaming.

Imported lazily by the hook so that parsing a DAG never pays for ``requests``/``aiohttp``.
URLs and headers come from :mod:`airflow_provider_maas.client.config`, error mapping from
:mod:`airflow_provider_maas.client.errors` and the retry policy from :mod:`airflow_provider_maas.client.retry`,
shared by the sync and async paths.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from airflow_provider_maas.client.errors import MAX_ERROR_BODY, error_from_response, parse_json, redirect_error
from airflow_provider_maas.client.failures import CREATE_404_HINT, job_name_problem, transport_error, uncertain_create
from airflow_provider_maas.client.integrity import StreamHasher, verify_download
from airflow_provider_maas.client.sessions import shared_session
from airflow_provider_maas.client.streams import Progress, aread_head, read_head
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSError,
    MaaSJobCreationUncertainError,
    MaaSNotFoundError,
    MaaSRateLimitError,
    MaaSRetryableError,
    MaaSUnknownEndpointError,
)
from airflow_provider_maas.redaction import HIDDEN, contains_key
from airflow_provider_maas.storage import CHUNK_SIZE, EarlyWriteback, atomic_writer

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.client.config import ApiConfig
    from airflow_provider_maas.client.retry import RetryPolicy

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


# Retry policy ---------------------------------------------------------------------------------


def log_retry(what: str, attempt: int, error: BaseException, delay: float) -> None:
    log.warning("%s: attempt %d failed (%s); retrying in %.1fs", what, attempt, error, delay)


def _retrying(what: str, policy: RetryPolicy) -> tenacity.Retrying:
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


# Sync -----------------------------------------------------------------------------------------


def send(
    session: requests.Session,
    config: ApiConfig,
    method: str,
    url: str,
    *,
    what: str,
    policy: RetryPolicy,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    stream: bool = False,
    before_attempt: Callable[[], None] | None = None,
    not_found_hint: str | None = None,
) -> requests.Response:
    """Send one idempotent API call with timeouts, ``policy``'s retries and error mapping; returns a
    2xx response (parse its body with :func:`parse_json`)."""

    def attempt() -> requests.Response:
        if before_attempt is not None:
            before_attempt()
        return send_once(
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

    return _retrying(what, policy)(attempt)


def send_once(
    session: requests.Session,
    config: ApiConfig,
    method: str,
    url: str,
    *,
    what: str,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    data: Any = None,
    stream: bool = False,
    not_found_hint: str | None = None,
    uncertain: Callable[[str], Exception] | None = None,
) -> requests.Response:
    """One attempt: a 2xx response, or a mapped error (redirects are never followed).

    :param uncertain: Makes a 3xx (a :func:`redirect_error` text) an uncertain create: the POST
        may have been processed before the redirect. Without it a 3xx is a ``MaaSConfigError``.
    """
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
            stream=True,  # an error's body is read only as far as its message needs
            timeout=(config.connect_timeout, config.timeout),
            verify=config.verify,
            allow_redirects=False,
        )
        status = response.status_code
        body = read_head(response.iter_content(MAX_ERROR_BODY + 1)) if status >= 400 else b""
        if status < 300 and not stream:
            response.content  # noqa: B018  # read now: its errors are the call's
    except requests.RequestException as err:
        raise transport_error(err, what=what, url=url, config=config, sent=not _before_sending(err)) from None
    if status >= 300:
        retry_after, location = response.headers.get("Retry-After"), response.headers.get("Location")
        response.close()
        if status < 400:
            redirect = redirect_error(status, location, what=what, api_key=config.api_key)
            raise uncertain(str(redirect)) if uncertain is not None else redirect
        error = error_from_response(status, body, what=what, retry_after=retry_after, api_key=config.api_key)
        if not_found_hint and type(error) is MaaSNotFoundError:  # the ENDPOINT's own path: fail fast
            error = MaaSUnknownEndpointError(
                f"{error} ({not_found_hint})",
                status_code=error.status_code,
                error_status=error.error_status,
                error_message=error.error_message,
            )
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
    config: ApiConfig,
    body: dict[str, Any],
    *,
    file_name: str,
    display_name: str,
    policy: RetryPolicy,
) -> dict[str, Any]:
    """The create call, under the rules of "Job creation" above; returns the job JSON."""
    what = f"Creating a job from {file_name!r}"

    def uncertain(detail: str) -> MaaSJobCreationUncertainError:
        return uncertain_create(detail, file_name=file_name, display_name=display_name)

    options: Any = {"what": what, "json_body": body, "not_found_hint": CREATE_404_HINT, "uncertain": uncertain}

    def attempt() -> dict[str, Any]:
        try:
            response = send_once(session, config, "POST", config.jobs_url(), **options)
        except MaaSApiError as err:
            if isinstance(err, MaaSRateLimitError) or _never_sent(err):
                raise
            # Every retryable answer (any 5xx: 524, 520, 501... a gateway may answer it after the
            # service acted; 408; client/retry.py's RETRYABLE_STATUS) is uncertain here; only a 4xx
            # refusal proves nothing was created.
            if isinstance(err, MaaSRetryableError):
                raise uncertain(str(err)) from None
            raise
        try:
            job = parse_json(response.content, what=what, api_key=config.api_key)
        except MaaSApiError as err:
            raise uncertain(str(err)) from None
        name = job.get("name")
        problem = job_name_problem(name, api_key=config.api_key)
        if problem is None and isinstance(name, str) and HIDDEN in name and contains_key(response.text, config.api_key):
            problem = "the answer's job name holds the API key: it cannot be polled."  # parse_json redacted it
        if problem is not None:
            raise uncertain(problem)  # the job may exist: never dropped, never polled at a bad URL
        return job

    return _retrying(what, policy)(attempt)  # type: ignore[no-any-return]


def _never_sent(err: MaaSApiError) -> bool:
    return getattr(err, "never_sent", False) is True


def stream_to(
    session: requests.Session,
    config: ApiConfig,
    policy: RetryPolicy,
    *,
    job_name: str,
    path: ObjectStoragePath,
    metadata: dict[str, Any],
) -> None:
    """One transfer of the job's results (``alt=media``) into ``path``: streamed, CRC32C-checked, atomic."""

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
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999 in the JSON is infinity
        return None


# Async ----------------------------------------------------------------------------------------


async def asend(config: ApiConfig, method: str, url: str, *, what: str, policy: RetryPolicy) -> Any:
    """Async twin of :func:`send` for idempotent JSON calls (polling): returns the parsed JSON."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout)

    async def attempt() -> Any:
        session = shared_session(config)
        try:
            async with session.request(
                method, url, headers=config.headers(), timeout=timeout, allow_redirects=False
            ) as response:
                status, headers = response.status, response.headers
                body = await aread_head(response.content) if status >= 300 else await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            never_connected = (
                isinstance(err, aiohttp.ClientConnectorError) or type(err).__name__ == "ConnectionTimeoutError"
            )
            raise transport_error(err, what=what, url=url, config=config, sent=not never_connected) from None
        if 300 <= status < 400:
            raise redirect_error(status, headers.get("Location"), what=what, api_key=config.api_key)
        if status >= 400:
            raise error_from_response(
                status, body, what=what, retry_after=headers.get("Retry-After"), api_key=config.api_key
            )
        return parse_json(body, what=what, api_key=config.api_key)

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
