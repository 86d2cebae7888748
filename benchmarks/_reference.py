"""The reference poller of the fan-in figure: how other providers wait in the triggerer.

A sync HTTP client (``requests``) called through ``asyncio.to_thread`` (the loop's default thread
pool), as e.g. the Anthropic provider's trigger does. Everything else is kept equal to
:class:`~airflow_provider_maas.triggers.maas.MaaSBatchJobTrigger`: the connection is looked up once
per trigger with the same hook, state changes are logged the same way, and all triggers share one
pooled ``requests.Session`` (the most favourable set-up for the reference).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import requests
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_maas.client.states import Outcome, classify_state
from airflow_provider_maas.hooks.maas import MaaSHook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

_SESSION = requests.Session()


def _get_json(url: str, headers: dict[str, str], timeout: tuple[float, float]) -> dict[str, Any]:
    response = _SESSION.get(url, headers=headers, timeout=timeout)
    response.raise_for_status()
    return response.json()


class ThreadPoolJobTrigger(BaseTrigger):
    """Wait for one job by calling a sync client in a thread every ``poll_interval`` seconds."""

    def __init__(self, job_name: str, poll_interval: float, stats: Any = None, maas_conn_id: str = "maas_default"):
        super().__init__()
        self.job_name = job_name
        self.poll_interval = poll_interval
        self.maas_conn_id = maas_conn_id
        self.stats = stats

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_name": self.job_name, "poll_interval": self.poll_interval, "maas_conn_id": self.maas_conn_id},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        config = await MaaSHook(self.maas_conn_id).aget_config()
        url, headers = config.job_url(self.job_name), config.headers()
        timeout = (config.connect_timeout, config.timeout)
        last_state = None
        while True:
            try:
                job = await asyncio.to_thread(_get_json, url, headers, timeout)
            except requests.RequestException as err:
                if self.stats is not None:
                    self.stats.errors += 1
                self.log.warning("Polling job %s failed: %s", self.job_name, err)
                await asyncio.sleep(self.poll_interval)
                continue
            if self.stats is not None:
                self.stats.poll_done()
            state = job.get("state")
            kind = classify_state(state)
            if state != last_state:
                self.log.info("Job %s is %s", self.job_name, state)
                last_state = state
            if kind in (Outcome.SUCCEEDED, Outcome.PARTIAL):
                yield TriggerEvent({"status": "success", "job_name": self.job_name, "state": state})
                return
            if kind is Outcome.FAILED:
                yield TriggerEvent({"status": "error", "job_name": self.job_name, "state": state})
                return
            await asyncio.sleep(self.poll_interval)


class BareAiohttpJobTrigger(BaseTrigger):
    """The floor: one GET per poll on a shared ``aiohttp`` session, no retries, no error mapping.

    Shows how much of the provider's CPU per poll is the HTTP client itself.
    """

    _session: Any = None

    def __init__(self, job_name: str, poll_interval: float, stats: Any = None, maas_conn_id: str = "maas_default"):
        super().__init__()
        self.job_name = job_name
        self.poll_interval = poll_interval
        self.maas_conn_id = maas_conn_id
        self.stats = stats

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_name": self.job_name, "poll_interval": self.poll_interval, "maas_conn_id": self.maas_conn_id},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import aiohttp

        config = await MaaSHook(self.maas_conn_id).aget_config()
        url, headers = config.job_url(self.job_name), config.headers()
        timeout = aiohttp.ClientTimeout(total=config.timeout, connect=config.connect_timeout)
        if BareAiohttpJobTrigger._session is None:
            BareAiohttpJobTrigger._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        session = BareAiohttpJobTrigger._session
        last_state = None
        while True:
            try:
                async with session.get(url, headers=headers, timeout=timeout) as response:
                    response.raise_for_status()
                    job = await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                if self.stats is not None:
                    self.stats.errors += 1
                self.log.warning("Polling job %s failed: %s", self.job_name, err)
                await asyncio.sleep(self.poll_interval)
                continue
            if self.stats is not None:
                self.stats.poll_done()
            state = job.get("state")
            kind = classify_state(state)
            if state != last_state:
                self.log.info("Job %s is %s", self.job_name, state)
                last_state = state
            if kind in (Outcome.SUCCEEDED, Outcome.PARTIAL):
                yield TriggerEvent({"status": "success", "job_name": self.job_name, "state": state})
                return
            if kind is Outcome.FAILED:
                yield TriggerEvent({"status": "error", "job_name": self.job_name, "state": state})
                return
            await asyncio.sleep(self.poll_interval)


async def close_bare_session() -> None:
    if BareAiohttpJobTrigger._session is not None:
        await BareAiohttpJobTrigger._session.close()
        BareAiohttpJobTrigger._session = None
