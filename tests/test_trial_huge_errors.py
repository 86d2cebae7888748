"""Trial: an error answer whose body is huge or never ends (a broken gateway) is read only as far
as the message needs, on the worker (``requests``) and in the triggerer (``aiohttp``); the key in
it is never shown, even cut in half at the point where reading stops."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from airflow_provider_maas.client.errors import MAX_ERROR_BODY, error_body_head, error_from_response
from airflow_provider_maas.exceptions import MaaSApiError, MaaSRetryableError
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.conftest import API_KEY, connection_env


@contextmanager
def endless_503(prefix: bytes = b"") -> Iterator[str]:
    """Answers every request 503 with a body announced as 1 GB: 1 MiB of it, then silence (the
    connection stays open) until the client hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                head = (
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: 1000000000\r\n\r\n"
                )
                try:
                    conn.sendall(head + prefix + b"<p>" + b"x" * (1024 * 1024))
                    while not done.is_set() and conn.recv(1):  # hold it open until the client closes
                        pass
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        server.close()


def _check(err: BaseException) -> None:
    assert isinstance(err, MaaSRetryableError), repr(err)
    assert "HTTP 503" in str(err) and "timed out" not in str(err), str(err)[:300]
    assert API_KEY not in str(err)


def test_the_worker_reads_only_the_start_of_an_endless_error_body(monkeypatch):
    with endless_503(f"Authorization: Bearer {API_KEY} ".encode()) as url:
        monkeypatch.setenv(*connection_env(url, timeout=3))
        with pytest.raises(MaaSApiError) as info:
            MaaSHook(max_attempts=1).get_batch_job("1")
    _check(info.value)


def test_the_triggerer_reads_only_the_start_of_an_endless_error_body(monkeypatch):
    with endless_503() as url:
        monkeypatch.setenv(*connection_env(url, timeout=3))
        hook = MaaSHook(max_attempts=1)

        async def poll() -> None:
            async with hook.async_session_scope():
                await hook.aget_batch_job("1")

        with pytest.raises(MaaSApiError) as info:
            asyncio.run(poll())
    _check(info.value)


@pytest.mark.parametrize("cut", [1, 5, len(API_KEY) - 1])
def test_a_key_cut_where_reading_stops_is_not_shown(cut):
    body = b"x" * (MAX_ERROR_BODY - cut) + API_KEY.encode() + b" and more"
    head = error_body_head(body, API_KEY)
    assert not head.endswith(API_KEY.encode()[:cut]) and len(head) == MAX_ERROR_BODY - cut
    err = error_from_response(
        502, b"<pre>" + b" " * (MAX_ERROR_BODY - 5 - cut) + API_KEY.encode(), what="Get", api_key=API_KEY
    )
    assert API_KEY[: max(cut, 8)] not in str(err)
