"""Test-only auth manager: Airflow's simple auth manager, except that user ``outsider`` may read
no DAG whose id starts with ``maas_`` (the simple auth manager alone gives every role every DAG).
Used by tests/browser/test_ui_progress.py's API server (``[core] auth_manager``)."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

RESTRICTED_USER = "outsider"


class RestrictedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if user.get_name() == RESTRICTED_USER and (details is None or str(details.id or "").startswith("maas_")):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
