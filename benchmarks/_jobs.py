"""Creating emulator jobs with the provider's own hook (in the parent process, before a measurement)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def tiny_requests_file(path: Path, count: int = 1) -> Path:
    with path.open("w") as fh:
        for i in range(count):
            fh.write(json.dumps({"request": {"contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}]}}) + "\n")
    return path


def create_jobs(workdir: Path, count: int, *, threads: int = 32, source: Path | None = None) -> list[str]:
    """Upload one file and create ``count`` jobs from it with ``MaaSHook`` (``maas_default`` must be set)."""
    import logging

    from airflow_provider_maas.hooks.maas import MaaSHook

    logging.getLogger("airflow_provider_maas").setLevel(logging.WARNING)  # not one line per job
    hook = MaaSHook()
    upload = source or tiny_requests_file(workdir / "tiny.jsonl")
    name = hook.upload_file(upload, upload.name)["name"]

    def create(i: int) -> str:
        return str(hook.create_batch_job(name, f"bench-{i}")["name"])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(create, range(count)))


def hook() -> Any:
    from airflow_provider_maas.hooks.maas import MaaSHook

    return MaaSHook()
