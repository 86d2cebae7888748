"""The one check of an integer setting (shard size, concurrency, retries, polls, token bounds...),
and the one table of the operators' integer settings and their bounds (:data:`LIMITS`).

Used where the DAG is parsed (the batch and split operators), when shards are planned
(``batch/inputs/shards.py``: the same bounds, so a setting the operator took is never refused at run time),
by the waiters of ``batch/polling.py`` and by the triggers: it imports nothing of the package but its
errors, so each of them may import it without a cycle. The service's limits per file are defined here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_maas.exceptions import MaaSInputError

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The service's limits on one uploaded file (``batch/inputs/request_lines.py`` checks request lines
#: against them; defined here so that the operators' checks need not import the line parser).
MAX_REQUESTS_PER_FILE = 100
MAX_BYTES_PER_FILE = 50 * 1024 * 1024

#: The operators' integer settings: ``name: (lowest, highest or None)``, checked in this order. A
#: shard of ``max_bytes_per_file`` bytes holds at least one request line and its newline: 2 bytes.
LIMITS: dict[str, tuple[int, int | None]] = {
    "max_active_jobs": (1, None),
    "shard_retries": (0, None),
    "max_requests_per_file": (1, MAX_REQUESTS_PER_FILE),
    "max_bytes_per_file": (2, MAX_BYTES_PER_FILE),
    "max_parallel_transfers": (1, None),
    "max_consecutive_poll_errors": (1, None),
    "request_retries": (0, None),
}


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` of setting ``name`` if it is an integer from ``low`` to ``high`` (None: no upper
    bound); else a :class:`MaaSInputError` naming the setting, what is allowed and the value.
    ``True`` and ``False`` are refused (a ``bool`` is an ``int`` in Python), as are ``2.0`` and ``"2"``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
        raise MaaSInputError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_seconds(name: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` of setting ``name`` if it is a number of seconds above 0 (None too when ``optional``:
    no limit); else a :class:`MaaSInputError` naming the setting, what is allowed and the value.
    ``True``, strings, NaN and infinity are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        allowed = "a number of seconds above 0" + (", or None for no limit" if optional else "")
        raise MaaSInputError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_limits(values: Mapping[str, Any]) -> None:
    """Refuse a setting of :data:`LIMITS` in ``values`` that is not an integer within its bounds."""
    for name, (low, high) in LIMITS.items():
        check_int(name, values.get(name, low), low, high)


def check_shard_limits(max_requests: Any, max_bytes: Any, *, upload: bool = True) -> None:
    """Refuse shard limits out of :data:`LIMITS`, named as the operators' parameters
    (``max_requests_per_file``, ``max_bytes_per_file``). ``upload``: a shard is an upload file, within
    the service's limits; else (a chunk of a split input) only the lowest bounds apply and
    ``max_bytes`` may be None (no limit)."""
    for name, value in (("max_requests_per_file", max_requests), ("max_bytes_per_file", max_bytes)):
        low, high = LIMITS[name]
        if upload or value is not None:
            check_int(name, value, low, high if upload else None)
