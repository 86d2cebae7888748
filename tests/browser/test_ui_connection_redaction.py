"""The connection test the UI's Test button runs (``POST /api/v2/connections/test`` on a real
``airflow api-server``) against a service whose answers echo the API key in every form (issue 20):
the message the UI shows holds none of them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.hostile_service import KEY, hostile, key_forms

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("mode", ["errors", "echo"])
def test_the_ui_connection_test_shows_no_form_of_the_key(airflow_ui: Any, mode: str) -> None:
    with hostile(mode) as service:
        body = {
            "connection_id": "maas_hostile",
            "conn_type": "maas",
            "host": service.base_url,
            "password": KEY,
            "extra": json.dumps({"endpoint": "ep"}),
        }
        result = airflow_ui.test_connection(body)
        assert service.calls, "the api-server called the service"
    assert result["status"] is (mode == "echo"), result
    message = result["message"]
    found = [name for name, form in key_forms().items() if form in message or form.lower() in message.lower()]
    assert not found, (found, message)
    if mode == "errors":
        assert "HTTP 404 on upload" in message and "***" in message
