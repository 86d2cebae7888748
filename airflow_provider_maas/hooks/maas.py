"""MaaSHook: credentials and the four calls of the MaaS_Ge batch API, sync and async."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_maas._compat import BaseHook
from airflow_provider_maas.batch.polling import (
    DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
    MAX_TRANSFERS,
    OneJobWait,
    poll_job,
    transfer_again,
)
from airflow_provider_maas.client.config import ApiConfig, build_config, check_name
from airflow_provider_maas.client.errors import parse_json
from airflow_provider_maas.client.failures import UPLOAD_404_HINT
from airflow_provider_maas.client.retry import DEFAULT_MAX_ATTEMPTS, RetryPolicy
from airflow_provider_maas.client.states import Outcome, job_outcome, log_state_change, neutral_job
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSError,
    MaaSIntegrityError,
    MaaSJobCreationUncertainError,
    MaaSJobFailedError,
    MaaSRetryableError,
    MaaSTimeoutError,
)
from airflow_provider_maas.hooks.connection import DEFAULT_CONN_ID, UI_FIELD_BEHAVIOUR, form_widgets
from airflow_provider_maas.hooks.probe import PROBE_FILE_BODY, PROBE_FILE_NAME, probe_accepted, probe_refused
from airflow_provider_maas.redaction import mask_key
from airflow_provider_maas.storage import open_source, to_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import requests

log = logging.getLogger(__name__)

_SESSION_LOCK = threading.Lock()


class MaaSHook(BaseHook):
    """Talks to the MaaS_Ge batch API with the credentials of an Airflow connection of type ``maas``.

    :param maas_conn_id: The Airflow connection: host = base URL, password = API key,
        extra ``endpoint`` = ENDPOINT id, optional extras ``timeout`` (seconds) and ``verify``.
    :param endpoint: ENDPOINT id overriding the connection's.
    :param max_attempts: Attempts per HTTP call on 429, 408, any 5xx, timeouts and connection errors
        (sync and async alike: one :class:`~airflow_provider_maas.client.retry.RetryPolicy`). Job creation is
        retried only when the service cannot have acted: see :meth:`create_batch_job`.
    :param retry_base_delay: First backoff delay in seconds (doubles each attempt, with jitter).
    """

    conn_name_attr = "maas_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "maas"
    hook_name = "MaaS Gemini Batch"

    def __init__(
        self,
        maas_conn_id: str = default_conn_name,
        endpoint: str | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_base_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint
        self.max_attempts = max_attempts
        self.retry_base_delay = retry_base_delay
        self._async_config: ApiConfig | None = None

    # Connection form -------------------------------------------------------------------
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form (Airflow 3.0/3.1; 3.2+ reads ``conn-fields``): see
        :func:`~airflow_provider_maas.hooks.connection.form_widgets`."""
        return form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden and relabelled fields of the connection form."""
        return {key: (list(v) if isinstance(v, list) else dict(v)) for key, v in UI_FIELD_BEHAVIOUR.items()}

    # Configuration ---------------------------------------------------------------------
    def _config_from(self, conn: Any) -> ApiConfig:
        config = build_config(
            host=conn.host,
            password=conn.password,
            extra=conn.extra_dejson or {},
            endpoint_override=self.endpoint,
            conn_id=self.maas_conn_id,
        )
        self._mask(config.api_key)
        return config

    @staticmethod
    def _mask(secret: str) -> None:
        """Register ``secret`` with Airflow's secrets masker in every form a response may
        echo (the one place the hook masks the key).

        Synchronous: in a triggerer it may message Airflow's supervisor, which on Airflow 3.0 fails
        inside the event loop. Async callers reach it through :meth:`aget_config` only, which runs it
        in a worker thread.
        """
        mask_key(secret)

    @cached_property
    def config(self) -> ApiConfig:
        """The resolved connection settings (looked up once per hook)."""
        return self._sync_config()

    def get_conn(self) -> ApiConfig:
        return self.config

    async def aget_config(self) -> ApiConfig:
        """The connection settings, looked up without blocking the event loop (cached per hook).

        The one way into the connection for every async caller (both triggers, through
        :meth:`async_session_scope` and :meth:`aget_batch_job`). Reading a connection's extra and
        masking the key are synchronous Airflow calls that may message the triggerer's supervisor:
        Airflow 3.0's ``Connection.extra_dejson`` calls ``mask_secret``, whose message to the
        supervisor raises ``RuntimeError: You cannot use AsyncToSync in the same thread as an async
        event loop`` when made in the event loop's thread (3.1 swallows that error, so the supervisor
        never learns the key; 3.2+ bridges it). So :meth:`_config_from` runs in a worker thread of
        ``asgiref``'s ``sync_to_async``, from which Airflow's comms reach the supervisor through the
        running loop on every version. The connection itself comes from ``aget_connection`` (3.1+)
        or, on 3.0, from ``get_connection`` in that same thread.
        """
        if self._async_config is None:
            from asgiref.sync import sync_to_async

            if hasattr(BaseHook, "aget_connection"):
                conn = await BaseHook.aget_connection(self.maas_conn_id)
                config = await sync_to_async(self._config_from)(conn)
            else:  # Airflow 3.0
                config = await sync_to_async(self._sync_config)()
            self._async_config = config
        return self._async_config

    def _sync_config(self) -> ApiConfig:
        return self._config_from(self.get_connection(self.maas_conn_id))

    @property
    def session(self) -> requests.Session:
        """One ``requests.Session`` per hook (thread-safe for our use, pooled connections).

        Created under a lock: ``cached_property`` has none on Python >= 3.12, so threads sharing a
        fresh hook could each build (and leak) a session.
        """
        session = self.__dict__.get("_session")
        if session is None:
            from airflow_provider_maas.client.transport import make_session

            with _SESSION_LOCK:
                session = self.__dict__.get("_session")
                if session is None:
                    session = self.__dict__["_session"] = make_session()
        return session

    # Sync HTTP -------------------------------------------------------------------------
    @property
    def retry_policy(self) -> RetryPolicy:
        """Attempts and backoff of every call of this hook, sync and async."""
        return RetryPolicy(max_attempts=self.max_attempts, base_delay=self.retry_base_delay)

    def _get_json(self, url: str, *, what: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        from airflow_provider_maas.client.transport import send

        response = send(self.session, self.config, "GET", url, what=what, policy=self.retry_policy, params=params)
        return parse_json(response.content, what=what, api_key=self.config.api_key)

    def upload_file(self, source: Any, name: str, *, max_transfers: int = MAX_TRANSFERS) -> dict[str, Any]:
        """Upload a JSONL file of requests; returns the storage-object JSON.

        :param source: A local path, URI, ``ObjectStoragePath`` or binary file object. The bytes are
            streamed (never held in memory), and the returned ``size`` and ``md5Hash`` are checked
            against what was sent; a mismatch sends the file again (at most ``max_transfers`` times,
            a rewindable source only) and then raises :class:`MaaSIntegrityError`.
        :param name: The file's name in the service's bucket (the same name replaces the object).
        """
        return self._upload(source, name, self.retry_policy, max_transfers)

    def _upload(
        self, source: Any, name: str, policy: RetryPolicy, max_transfers: int = MAX_TRANSFERS
    ) -> dict[str, Any]:
        from airflow_provider_maas.client.integrity import verify_upload
        from airflow_provider_maas.client.streams import HashingReader
        from airflow_provider_maas.client.transport import send

        url, params = self.config.upload_url(name)
        what = f"Upload of {name!r}"
        attempts = 0
        with open_source(source) as handle:
            # One reader for every attempt: each (re)send rewinds it to the start of the source.
            body = HashingReader(handle)
            while True:
                attempts += 1
                response = send(
                    self.session,
                    self.config,
                    "POST",
                    url,
                    what=what,
                    policy=policy,
                    params=params,
                    data=body.payload(),
                    before_attempt=body.rewind,
                    not_found_hint=UPLOAD_404_HINT,
                )
                result = parse_json(response.content, what=what, api_key=self.config.api_key)
                try:
                    verify_upload(result, body.hasher)
                except MaaSIntegrityError as err:
                    if body.rewindable and transfer_again(what, attempts, max_transfers, err):
                        continue
                    raise
                log.info("Uploaded %r: %s bytes, md5 verified", result.get("name", name), result.get("size"))
                return result

    def create_batch_job(self, file_name: str, display_name: str) -> dict[str, Any]:
        """Create a batch job from an uploaded file; returns the job JSON.

        Never sent twice once the request may have reached the service: only a connection never
        made and 429 (quota: refused before any work) are retried, with backoff; after the retries a
        429 raises :class:`MaaSRateLimitError` (nothing was created). A 5xx (503 included), a 3xx
        (never followed: the POST may have been processed), a read timeout, a reset after sending,
        or a 2xx whose body is not a JSON object with a usable string ``name`` (one that can be put
        in a URL) raise :class:`MaaSJobCreationUncertainError` (naming the file and the display name
        to look for), which fails the task without Airflow retries.
        """
        from airflow_provider_maas.client.transport import create_job

        check_name(file_name, "file name")
        body = {
            "displayName": display_name,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": file_name}},
            "outputConfig": {"predictionsFormat": "jsonl"},
        }
        job = neutral_job(
            create_job(
                self.session,
                self.config,
                body,
                file_name=file_name,
                display_name=display_name,
                policy=self.retry_policy,
            )
        )
        log.info("Created batch job %s (%s) from %r", job.get("name"), job.get("state"), file_name)
        return job

    def get_batch_job(self, job_name: str) -> dict[str, Any]:
        """The job JSON (state, completionStats, error...), its texts neutralised (no control character)."""
        return neutral_job(self._get_json(self.config.job_url(job_name), what=f"Getting job {job_name}"))

    def get_results_metadata(self, job_name: str) -> dict[str, Any]:
        """Metadata of the job's results (``alt=json``): size and crc32c."""
        return self._get_json(
            self.config.content_url(job_name),
            what=f"Getting results metadata of job {job_name}",
            params={"alt": "json"},
        )

    def download_results(
        self, job_name: str, destination: Any, *, max_transfers: int = MAX_TRANSFERS
    ) -> dict[str, Any]:
        """Stream the job's results (``alt=media``) to ``destination``, atomically and verified.

        Size and CRC32C are checked against the ``alt=json`` metadata; a mismatch transfers again
        (at most ``max_transfers`` times) and then raises :class:`MaaSIntegrityError`. The
        destination only ever holds a complete, verified file. Returns the metadata.
        """
        from airflow_provider_maas.client.transport import stream_to

        path = to_path(destination, what="destination")
        metadata = self.get_results_metadata(job_name)
        transfer = 0
        while True:
            transfer += 1
            try:
                stream_to(self.session, self.config, self.retry_policy, job_name=job_name, path=path, metadata=metadata)
                return metadata
            except (MaaSIntegrityError, MaaSRetryableError) as err:
                if not transfer_again(f"Download of job {job_name} results", transfer, max_transfers, err):
                    raise

    def wait_for_batch_job(
        self,
        job_name: str,
        poll_interval: float = 30.0,
        timeout: float | None = None,
        max_consecutive_poll_errors: int = DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
    ) -> dict[str, Any]:
        """Poll until the job ends; return the final job JSON.

        Raises :class:`MaaSJobFailedError` on FAILED/CANCELLED/EXPIRED and :class:`MaaSTimeoutError`
        after ``timeout`` seconds. Unknown states are logged and polled until the deadline. Failed
        polls and 404s follow the wait policy, as in the sensor (``batch.polling.poll_job``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        started = time.monotonic()
        last_state = None
        rule = OneJobWait(max_consecutive_poll_errors)
        while True:
            job = poll_job(self.get_batch_job, job_name, rule)
            if job is None:
                time.sleep(poll_interval)
                continue
            outcome = job_outcome(job, job_name)
            state = outcome.state
            if state != last_state:
                log_state_change(log, job_name, state, time.monotonic() - started)
                last_state = state
            if outcome.has_results:
                return job
            if outcome.outcome is Outcome.FAILED:
                raise MaaSJobFailedError(outcome.message, job_name=job_name, state=state, job=job)
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise MaaSTimeoutError(
                    f"Job {job_name} still {state} after {timeout:g}s; it keeps running on the service "
                    "(there is no cancel call). Wait again with its job name, or raise the timeout."
                )
            time.sleep(poll_interval)

    # Async -----------------------------------------------------------------------------
    async def aget_batch_job(self, job_name: str) -> dict[str, Any]:
        """Async twin of :meth:`get_batch_job` on the shared aiohttp session of the running loop."""
        from airflow_provider_maas.client.transport import asend

        config = await self.aget_config()
        job = await asend(
            config, "GET", config.job_url(job_name), what=f"Getting job {job_name}", policy=self.retry_policy
        )
        return neutral_job(job)

    @contextlib.asynccontextmanager
    async def async_session_scope(self) -> AsyncIterator[None]:
        """Keep the loop's shared aiohttp session open for the duration (used by triggers)."""
        from airflow_provider_maas.client.sessions import session_lease

        async with session_lease(await self.aget_config()):
            yield

    def test_connection(self) -> tuple[bool, str]:
        """Prove the key AND the endpoint work, creating no job.

        Uploads a tiny fixed-name probe file, ``maas-connection-test.jsonl`` (one valid request,
        replaced on every test; no job is ever created from it). An upload names the ENDPOINT, so an
        unknown endpoint answers 404 where a known one stores the file; a wrong key answers 401, a
        key that may not use the endpoint 403. One attempt, no retries: a button should answer fast.
        """
        try:
            config = self.config
            self._upload(io.BytesIO(PROBE_FILE_BODY), PROBE_FILE_NAME, RetryPolicy(max_attempts=1))
        except MaaSApiError as err:
            return False, probe_refused(err, config)
        except MaaSError as err:
            return False, str(err)
        return True, probe_accepted(config)


__all__ = ["MaaSHook", "MaaSJobCreationUncertainError"]
