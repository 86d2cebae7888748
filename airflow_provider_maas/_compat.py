"""Names that moved into the Task SDK after Airflow 3.0, imported from where this Airflow has them.

On Airflow >= 3.1 every name comes from ``airflow.sdk`` (no deprecation warning); Airflow 3.0 has
them only at their core paths. Everything else the provider uses is in ``airflow.sdk`` since 3.0.
"""

from __future__ import annotations

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.0
    from airflow.configuration import conf  # type: ignore[no-redef,assignment]

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout
except ImportError:  # Airflow 3.0
    from airflow.exceptions import (  # type: ignore[no-redef,assignment]
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
    )

try:
    from airflow.exceptions import AirflowProviderDeprecationWarning
except ImportError:  # not in every Airflow: a plain DeprecationWarning then
    AirflowProviderDeprecationWarning = DeprecationWarning  # type: ignore[misc,assignment]

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowProviderDeprecationWarning",
    "AirflowSensorTimeout",
    "BaseHook",
    "conf",
]
