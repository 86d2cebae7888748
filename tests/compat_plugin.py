"""pytest plugin of ``make test-compat`` (``-p tests.compat_plugin``): environment quirks of old Airflow.

Airflow 3.0's ``dag.test()`` leaves structlog unconfigured, so every DEBUG line of its in-process
supervisor reaches stdout, among them ``Sending request msg=MaskSecret(value='<the secret>')``
each time Airflow itself fetches a connection (``airflow/sdk/execution_time/context.py``). That
prints the connection's password, whatever the provider does; Airflow >= 3.1 does not. The example
DAG tests assert that the API key never reaches the output, so on 3.0 the DEBUG lines are dropped
here, as a deployment's INFO logging does; everything at INFO and above is still checked.
"""

from __future__ import annotations

import logging

import pytest


def pytest_configure(config: pytest.Config) -> None:
    import structlog
    from airflow import __version__
    from packaging.version import Version

    if Version(__version__) < Version("3.1"):
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
