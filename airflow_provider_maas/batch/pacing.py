"""When the batch operator wakes up, and when it gives up waiting.

A deferred batch resumes when :func:`fire_after` of its running jobs ended: often enough to keep
``max_active_jobs`` busy, seldom enough that resumes stay about 2 x shards / max_active_jobs.
:func:`check_deadline` enforces the absolute ``timeout`` deadline stored in the batch state.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.exceptions import MaaSTimeoutError

if TYPE_CHECKING:
    from airflow_provider_maas.batch.record.state import BatchState

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


def past_deadline(state: BatchState) -> bool:
    """Whether the state's absolute ``timeout`` deadline passed."""
    return bool(state.deadline) and time.time() > (state.deadline or 0)


def check_deadline(state: BatchState, running: list[str], *, timeout: float | None) -> None:
    """Raise :class:`MaaSTimeoutError` once the state's deadline passed, naming the running jobs.

    The deadline is the one stored when the wait started (a retry keeps it; a clear restarts it):
    the message shows it, and the ``timeout`` of this try if it is set.
    """
    if past_deadline(state):
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.deadline or 0))
        setting = f"timeout={timeout:g}s" if timeout else "timeout is not set now"
        raise MaaSTimeoutError(
            f"Jobs still running at the batch's deadline {at} (stored when the wait started; {setting}): "
            f"{', '.join(running[:MAX_NAMED_JOBS])}{' ...' if len(running) > MAX_NAMED_JOBS else ''}; they keep "
            "running on the service (no cancel call). A retry polls them again; clear the task to wait a new "
            "timeout."
        )
