"""The batch operator's parameters where the DAG is parsed: their defaults (:data:`DEFAULTS`) and their
checks (:func:`check_parameters`, :func:`retry_rule_and_prices`, :func:`check_limits`), which refuse a
bad setting with :class:`~airflow_provider_maas.exceptions.MaaSInputError` naming it and what is
allowed, before anything is uploaded or paid for.

Imported with the operator's module: it holds no dataclass (each costs about 1 ms to build at import).
What one try carries to the batch's modules (:class:`~airflow_provider_maas.batch.settings.BatchSettings`)
is imported by the first execute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.retry_failures import retry_predicate
from airflow_provider_maas.batch.cost.prices import DEFAULT_MAX_OUTPUT_TOKENS, check_prices
from airflow_provider_maas.batch.int_settings import (
    LIMITS,
    MAX_BYTES_PER_FILE,
    MAX_REQUESTS_PER_FILE,
    check_limits,
    check_seconds,
)
from airflow_provider_maas.batch.polling import DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS, DEFAULT_MAX_PARALLEL_TRANSFERS

if TYPE_CHECKING:
    from collections.abc import Callable


class OperatorDefaults:
    """The batch operator's defaults that other modules define: the service's limits on one file
    (``int_settings``), the polls failed in a row a wait tolerates (``polling``, as for the sensor),
    the calls in flight at once (``polling``, as for the batch trigger's polls), the output a request
    counts for at most when it does not say (``budget_checks``, for ``estimates``). Read-only (no instance attributes)."""

    __slots__ = ()

    max_requests_per_file: int = MAX_REQUESTS_PER_FILE
    max_bytes_per_file: int = MAX_BYTES_PER_FILE
    max_consecutive_poll_errors: int = DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS
    max_parallel_transfers: int = DEFAULT_MAX_PARALLEL_TRANSFERS
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS


DEFAULTS = OperatorDefaults()


def retry_rule_and_prices(retry_failures: Any, prices: Any) -> tuple[Callable[[str], bool], dict[str, float] | None]:
    """``retry_failures`` as a predicate over a result's status, and ``prices`` checked (each raises
    :class:`MaaSInputError` saying what to give instead)."""
    return retry_predicate(retry_failures), check_prices(prices)


def check_parameters(
    task: Any, retry_failures: Any, prices: Any
) -> tuple[Callable[[str], bool], dict[str, float] | None]:
    """Check the batch operator's parameters: :func:`retry_rule_and_prices`, then the settings of
    :data:`LIMITS` (``task``'s attributes of those names), ``poll_interval`` and ``timeout`` (seconds above
    0; ``timeout`` None: no limit); returns the retry rule and the prices."""
    checked = retry_rule_and_prices(retry_failures, prices)
    check_limits({name: getattr(task, name) for name in LIMITS})
    check_seconds("poll_interval", task.poll_interval)
    check_seconds("timeout", task.timeout, optional=True)
    return checked
