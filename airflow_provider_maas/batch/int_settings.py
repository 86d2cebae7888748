"""The one check of an integer setting (shard size, concurrency, retries, polls, token bounds...).

Used where the DAG is parsed (the batch and split operators), by the waiters of
``batch/polling.py`` and by the triggers: it imports nothing of the package but its errors, so
each of them may import it without a cycle.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_maas.exceptions import MaaSInputError


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` of setting ``name`` if it is an integer from ``low`` to ``high`` (None: no upper
    bound); else a :class:`MaaSInputError` naming the setting, what is allowed and the value.
    ``True`` and ``False`` are refused (a ``bool`` is an ``int`` in Python), as are ``2.0`` and ``"2"``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
        raise MaaSInputError(f"{name} must be {allowed}, got {value!r}")
    return value
