"""The one retry policy of every call, sync and async: what is retried, how often, how long to wait."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from airflow_provider_maas.exceptions import (
    MaaSConfigError,
    MaaSRetryableError,
)

#: HTTP statuses that are transient on reads and polls (get, metadata, content, upload): 408, 429
#: and EVERY 5xx, the ones a gateway or CDN invents included (520, 522, 524, 529...). The one
#: definition: :func:`~airflow_provider_maas.client.errors.error_from_response` maps them to
#: :class:`MaaSRetryableError`, which :class:`RetryPolicy` retries on the sync and async paths and
#: the sensor, the triggers and the batch driver count as a failed poll. A create keeps its own
#: rule (``client/failures.py``, "Job creation"): after sending, any of these is uncertain.
RETRYABLE_STATUS = frozenset({408, 429, *range(500, 600)})


# Errors ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, *, retry_after: float | None, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter; never shorter than the service's ``Retry-After``."""
    delay = random.uniform(0, min(cap, base * (2 ** (attempt - 1))))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap * 5))
    return delay


DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class RetryPolicy:
    """The one retry policy of every call, sync (tenacity) and async (a loop): how many attempts,
    the backoff (exponential, full jitter, at least ``Retry-After``) and what is retried
    (:class:`MaaSRetryableError`: :data:`RETRYABLE_STATUS`, i.e. 408, 429 and every 5xx, connection
    errors, timeouts; never another 4xx, a TLS failure or an uncertain job creation)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = 1.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise MaaSConfigError(f"max_attempts must be at least 1, not {self.max_attempts!r}.")

    @staticmethod
    def retryable(error: BaseException) -> bool:
        return isinstance(error, MaaSRetryableError)

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        retry_after = getattr(error, "retry_after", None)
        return backoff_delay(attempt, retry_after=retry_after, base=self.base_delay, cap=self.cap)

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        return attempt < self.max_attempts and self.retryable(error)
