"""When the batch operator wakes up, and when it gives up waiting.

A deferred batch resumes when :func:`fire_after` of its running jobs ended: often enough to keep
``max_active_jobs`` busy, seldom enough that resumes stay about 2 x shards / max_active_jobs.
:func:`check_deadline` enforces the absolute ``wait_timeout`` deadline stored in the batch state.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from airflow_provider_maas.batch.state import ShardStatus
from airflow_provider_maas.exceptions import MaaSTimeoutError

if TYPE_CHECKING:
    from airflow_provider_maas.batch.state import BatchState

#: Running jobs named in a timeout's message.
MAX_NAMED_JOBS = 10


def fire_after(state: BatchState, running: list[str], *, max_active_jobs: int, rate_limited: bool) -> int | None:
    """How many jobs must end before a resume is worth it; None: all of them.

    With shards pending, that is when half of ``max_active_jobs`` slots are free (half of the
    running jobs if the service refused creates); otherwise when every job ended. Resumes are
    thus about 2 x shards / max_active_jobs.
    """
    if not state.count(ShardStatus.PENDING):
        return None
    free = max_active_jobs - len(running)
    wanted = math.ceil(len(running) / 2) if rate_limited else math.ceil(max_active_jobs / 2) - free
    return min(len(running), max(1, wanted))


def check_deadline(state: BatchState, running: list[str], *, wait_timeout: float | None) -> None:
    """Raise :class:`MaaSTimeoutError` once the state's deadline passed, naming the running jobs."""
    if state.deadline and time.time() > state.deadline:
        raise MaaSTimeoutError(
            f"Jobs still running after wait_timeout={wait_timeout}s: {', '.join(running[:MAX_NAMED_JOBS])}"
            f"{' ...' if len(running) > MAX_NAMED_JOBS else ''}; they keep running on the service (no cancel call)."
        )
