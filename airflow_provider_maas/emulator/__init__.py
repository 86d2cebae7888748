"""A local emulator of the MaaS_Ge batch API (the 4 documented calls), built on ``aiohttp.web``.

It is the provider's embedded default for demos and tests::

    from airflow_provider_maas.emulator import EmulatorConfig, run_emulator

    with run_emulator(EmulatorConfig(job_duration=0.5)) as emu:
        os.environ["AIRFLOW_CONN_MAAS_DEFAULT"] = emu.connection_json()
        ...

or from a shell: ``python -m airflow_provider_maas.emulator --port 8089`` (``--help`` lists every
setting; ``--ready-file PATH`` gets the base URL once listening).

State for tests (``handle.emulator``, a :class:`MaaSEmulator`): ``jobs`` (name -> JobRecord, with a
live ``.state``), ``jobs_created``, ``files`` (name -> storage resource + ``path``/``request_count``),
``uploads_by_name``, ``access_log`` (method, path_qs, status, user_agent, fault: never a key),
``request_count`` (API requests, admin routes excluded), ``set_job_state(name, state, error=None)``,
``expire_results(name)``, ``jobs_by_file`` (file name -> jobs created from it), ``redirect_hits``,
``schedule("create:1:lost-500", ...)``; ``config`` may be changed while running.

Deterministic faults: "the next N calls of kind K answer with fault F", written ``KIND:N:FAULT``
or ``KIND:N:FAULT=ARG`` (N may be ``*``: every call). Kinds: ``upload``, ``create``, ``get``,
``content`` (``alt=media``), ``metadata`` (``alt=json``). Faults: ``429 500 503 reset 401 404
redirect-307 echo-headers[=STATUS] deep-json nonjson-200`` (answer instead of the call, which is
not carried out), ``slow[=S]`` (answer late; the call is dropped if the client gave up); on create only, ``lost-500 lost-503 lost-reset lost-timeout[=S] lost-nonjson``
(the job IS created, the answer is spoilt) and ``partial-missing[=K] duplicate-lines[=K]
fail-requests=text:SUBSTRING|index:1,3`` (shape the results of the job); on content/metadata
``results-gone`` (410). Set them with ``EmulatorConfig(faults=["create:1:lost-500"])``,
``handle.emulator.schedule(...)``, ``POST /_emulator/faults`` or ``maas-emulator --fault
create:1:lost-500``; ``schedule.py`` describes each one. An emulator in another process
is driven through its ``/_emulator/...`` admin routes (see ``admin.py``).

It never imports Airflow.
"""

from __future__ import annotations

from airflow_provider_maas.emulator.config import EmulatorConfig
from airflow_provider_maas.emulator.runner import EmulatorHandle, run_emulator
from airflow_provider_maas.emulator.server import MaaSEmulator

__all__ = ["EmulatorConfig", "EmulatorHandle", "MaaSEmulator", "run_emulator"]
