"""Test-side names that moved into the Task SDK after Airflow 3.0 (the provider's own are in
``airflow_provider_maas._compat``): import them from here so the suite runs on 3.0 too."""

from __future__ import annotations

from airflow_provider_maas._compat import AirflowException, AirflowSensorTimeout

try:
    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowSkipException, TaskDeferred  # type: ignore[no-redef,assignment]

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 3.0
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

__all__ = ["AirflowException", "AirflowSensorTimeout", "AirflowSkipException", "DagBag", "TaskDeferred"]
