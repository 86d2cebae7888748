"""A local emulator of the MaaS_Ge batch API (the 4 documented calls), built on ``aiohttp.web``.

It is the provider's embedded default for demos and tests::

    from airflow_provider_maas.emulator import EmulatorConfig, run_emulator

    with run_emulator(EmulatorConfig(job_duration=0.5)) as emu:
        os.environ["AIRFLOW_CONN_MAAS_DEFAULT"] = emu.connection_json()
        ...

or from a shell: ``python -m airflow_provider_maas.emulator --port 8089``.
It never imports Airflow.
"""

from __future__ import annotations

from airflow_provider_maas.emulator.config import EmulatorConfig
from airflow_provider_maas.emulator.runner import EmulatorHandle, run_emulator
from airflow_provider_maas.emulator.server import MaaSEmulator

__all__ = ["EmulatorConfig", "EmulatorHandle", "MaaSEmulator", "run_emulator"]
