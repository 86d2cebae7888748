"""Run the emulator in a background thread (``run_emulator``) and describe an Airflow connection for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode, urlsplit

from airflow_provider_maas.emulator.config import EmulatorConfig
from airflow_provider_maas.emulator.server import MaaSEmulator

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterator


def connection_dict(base_url: str, config: EmulatorConfig) -> dict[str, object]:
    return {
        "conn_type": "maas",
        "host": base_url,
        "password": config.api_key,
        "extra": {"endpoint": config.endpoint},
    }


def connection_json(base_url: str, config: EmulatorConfig) -> str:
    """The Airflow connection (JSON form, e.g. for ``AIRFLOW_CONN_MAAS_DEFAULT``)."""
    return json.dumps(connection_dict(base_url, config), separators=(",", ":"))


def connection_uri(base_url: str, config: EmulatorConfig) -> str:
    """The Airflow connection in URI form, as ``Connection.get_uri()`` writes it.

    ``maas://http://:KEY@127.0.0.1%3A8089/?endpoint=...`` (Airflow keeps the ``http://`` of the host).
    """
    parts = urlsplit(base_url)
    return f"maas://{parts.scheme}://:{quote(config.api_key, safe='')}@{quote(parts.netloc, safe='')}/?" + urlencode(
        {"endpoint": config.endpoint}
    )


@dataclass
class EmulatorHandle:
    """A running emulator: its URL, settings, state, and the Airflow connection pointing at it."""

    base_url: str
    config: EmulatorConfig
    emulator: MaaSEmulator = field(repr=False)

    def connection_json(self) -> str:
        return connection_json(self.base_url, self.config)

    def connection_uri(self) -> str:
        return connection_uri(self.base_url, self.config)

    def schedule(self, *faults: str) -> None:
        """Add fault schedule entries, e.g. ``handle.schedule("create:1:lost-500")`` (see ``schedule.py``)."""
        self.emulator.schedule(*faults)


@contextlib.contextmanager
def run_emulator(
    config: EmulatorConfig | None = None, *, ssl_context: ssl.SSLContext | None = None
) -> Iterator[EmulatorHandle]:
    """Serve an emulator from a background thread (own event loop) for the ``with`` block
    (over https when ``ssl_context`` is given)."""
    config = config or EmulatorConfig()
    emulator = MaaSEmulator(config, ssl_context=ssl_context)
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop
        try:
            state["base_url"] = await emulator.start()
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            return
        ready.set()
        try:
            await stop.wait()
        finally:
            await emulator.stop()

    def target() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # pragma: no cover - reported to the caller below
            state.setdefault("error", exc)
            ready.set()

    thread = threading.Thread(target=target, name="maas-emulator", daemon=True)
    thread.start()
    ready.wait()
    error = state.get("error")
    if isinstance(error, BaseException):
        thread.join()
        emulator.close()
        raise error
    try:
        yield EmulatorHandle(base_url=str(state["base_url"]), config=config, emulator=emulator)
    finally:
        loop = state["loop"]
        stop_event = state["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop_event, asyncio.Event)
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stop_event.set)
        thread.join()
        emulator.close()
