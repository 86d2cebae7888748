"""The shared ``aiohttp`` sessions of the async path: one per event loop, base URL and TLS setting.

Thousands of triggers in one triggerer poll through one session (its connector bounds the
sockets); a trigger holds it with :func:`session_lease`, and the last holder closes it. Imported
lazily, like :mod:`~airflow_provider_maas.client.transport`, so that parsing a DAG never loads ``aiohttp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import aiohttp

    from airflow_provider_maas.client.config import ApiConfig

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


def shared_session(config: ApiConfig) -> aiohttp.ClientSession:
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
async def session_lease(config: ApiConfig) -> AsyncIterator[None]:
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
