"""Deterministic names for uploaded files and jobs, unique per DAG run and task instance.

A retry of the same task instance gets the same names (so it replaces rather than duplicates);
two DAG runs, backfills or mapped instances never share one.
"""

from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_PART = 60


def _clean(value: Any) -> str:
    text = _UNSAFE.sub("-", str(value)).strip("-")
    return text[:MAX_PART] or "x"


def task_identity(context: Any) -> list[str]:
    """``[dag_id, task_id, run_id, map_index]`` of the running task instance, made URL-safe."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    if map_index is None:
        map_index = -1
    return [_clean(ti.dag_id), _clean(ti.task_id), _clean(context.get("run_id") or ti.run_id), f"m{map_index}"]


def upload_name(context: Any, content_sha256: str, *, shard: int | None = None) -> str:
    """File name for an upload: dag, task, run, map index, shard and a content hash."""
    parts = task_identity(context)
    if shard is not None:
        parts.append(f"s{shard:05d}")
    parts.append(content_sha256[:16])
    return ".".join(parts) + ".jsonl"


def display_name(context: Any, *, shard: int | None = None) -> str:
    """Default job display name: identifies the dag, task and run (and shard)."""
    ti = context["ti"]
    name = f"{ti.dag_id}/{ti.task_id}/{context.get('run_id') or ti.run_id}"
    if getattr(ti, "map_index", -1) not in (-1, None):
        name += f"[{ti.map_index}]"
    if shard is not None:
        name += f"#{shard}"
    return name
