"""The ``maas`` connection form in the real Airflow UI, in headless Chromium.

Admin -> Connections -> Add Connection, type "MaaS Gemini Batch": the form shows Base URL, API Key
and the Endpoint/Timeout/Verify TLS extras and hides login, schema and port; the saved connection
passes the UI's Test button against the emulator, and fails it, with the hook's message, once its
API key is wrong.
"""

from __future__ import annotations

import base64
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.version import Version

from airflow_provider_maas.hooks.connection import CONN_FIELDS, DEFAULT_BASE_URL, UI_FIELD_BEHAVIOUR
from tests.browser.support import DOCS_SCREENSHOT, UI_API_KEY, UI_ENDPOINT, UPDATE_DOCS_ENV, AirflowUI

pytestmark = pytest.mark.browser

CONN_ID = "maas_from_the_ui"
TYPE_LABEL = "MaaS Gemini Batch"
WRONG_KEY = "wrong-key-9876543210"
TEST_URL = "**/api/v2/connections/test"
#: Airflow 3.3.2's list-row Test button posts ``port: Number(null)`` = 0 for a connection without
#: a port, and the API then answers 400 with this text (apache/airflow#73298, fixed after 3.3.2).
PORT_ZERO_BUG = "host or port to test differs from the stored connection"


def test_hook_meta_describes_the_form(airflow_ui: AirflowUI) -> None:
    """What the UI builds the form from: relabelled and hidden standard fields, the extra fields."""
    meta = airflow_ui.hook_meta("maas")
    assert meta["hook_name"] == TYPE_LABEL
    standard = meta["standard_fields"]
    assert standard["host"] == {"hidden": False, "title": "Base URL", "placeholder": DEFAULT_BASE_URL}
    assert standard["password"]["title"] == "API Key"
    assert not standard["password"]["hidden"]
    for hidden in UI_FIELD_BEHAVIOUR["hidden_fields"]:
        assert standard["url_schema" if hidden == "schema" else hidden]["hidden"] is True, hidden
    extras = meta["extra_fields"]
    assert set(extras) == set(CONN_FIELDS)
    for key, field in CONN_FIELDS.items():
        assert extras[key]["schema"]["title"] == field["label"]
        assert extras[key]["description"] == field["description"]


def _open_add_connection_form(page: Any, airflow_ui: AirflowUI) -> Any:
    from playwright.sync_api import expect

    page.goto(airflow_ui.url("/"))
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    expect(page).to_have_url(re.compile(r"/connections$"))
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Add Connection")).to_be_visible()
    return dialog


def _pick_connection_type(page: Any, dialog: Any) -> None:
    dialog.get_by_role("combobox", name="Connection Type").click()
    page.keyboard.type("MaaS")
    page.get_by_role("option", name=TYPE_LABEL, exact=True).click()


def _field_group(dialog: Any, label: str) -> Any:
    """The form row (label, input, description) of a field, found by its visible label."""
    return dialog.get_by_role("group").filter(has=dialog.page.get_by_text(label, exact=True))


def _click_test(page: Any, row: Any) -> Any:
    with page.expect_response(
        lambda r: urlsplit(r.url).path.endswith("/api/v2/connections/test") and r.request.method == "POST"
    ) as info:
        row.get_by_role("button", name="Test Connection").click()
    return info.value


def _drop_port_zero(route: Any) -> None:
    """What apache/airflow#73298 does on the server: a port of 0 means "no port"."""
    body = json.loads(route.request.post_data or "{}")
    if body.get("port") == 0:
        del body["port"]
    route.continue_(post_data=json.dumps(body))


def _press_test(page: Any, row: Any) -> dict[str, Any]:
    """Press the row's Test button; returns the API's ``{status, message}`` answer."""
    response = _click_test(page, row)
    if response.status == 400 and PORT_ZERO_BUG in response.text():
        warnings.warn(
            "This Airflow's Test button fails every connection without a port (HTTP 400 "
            f"{PORT_ZERO_BUG!r}, apache/airflow#73298); pressing it again with the port-0 fix "
            "applied to the request.",
            stacklevel=2,
        )
        page.route(TEST_URL, _drop_port_zero)
        response = _click_test(page, row)
    assert response.status == 200, response.text()
    return response.json()


def _side_by_side(context: Any, images: list[bytes], path: Path) -> None:
    """Write the panels of the form next to each other as one PNG (rendered by Chromium itself)."""
    tags = "".join(
        f'<img style="display:block" src="data:image/png;base64,{base64.b64encode(image).decode()}">'
        for image in images
    )
    tab = context.new_page()
    try:
        tab.set_viewport_size({"width": 2000, "height": 1200})
        tab.set_content(
            '<body style="margin:0;background:#e2e8f0">'
            f'<div id="shot" style="display:inline-flex;gap:16px;padding:16px;align-items:flex-start">{tags}</div>'
            "</body>"
        )
        tab.locator("#shot").screenshot(path=str(path))
    finally:
        tab.close()


def test_connection_form_save_and_test(
    page: Any, airflow_ui: AirflowUI, emulator_url: str, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    dialog = _open_add_connection_form(page, airflow_ui)
    dialog.get_by_role("textbox", name="Connection ID").fill(CONN_ID)
    _pick_connection_type(page, dialog)

    # Standard fields: Base URL and API Key only (login, schema, port hidden; password relabelled).
    standard = dialog.get_by_role("region", name="Standard Fields")
    expect(standard).to_be_visible()
    labels = [text.strip() for text in standard.locator("label").all_inner_texts()]
    assert labels == ["Description", "Base URL", "API Key"]
    base_url = standard.get_by_role("textbox", name="Base URL")
    expect(base_url).to_have_attribute("placeholder", DEFAULT_BASE_URL)
    base_url.fill(emulator_url)
    standard.get_by_role("textbox", name="API Key").fill(UI_API_KEY)
    expect(standard.get_by_role("textbox", name="API Key")).to_have_attribute("type", "password")
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring in the shot
    standard_shot = dialog.screenshot()

    # Extra fields: Endpoint (with its description), Timeout (default 60), Verify TLS (default on).
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    endpoint = _field_group(dialog, CONN_FIELDS["endpoint"]["label"])
    expect(endpoint).to_contain_text(CONN_FIELDS["endpoint"]["description"])
    endpoint.get_by_role("textbox").fill(UI_ENDPOINT)
    # A number field on Airflow >= 3.2 (conn-fields), a text field from the hook's widgets on 3.0/3.1.
    expect(_field_group(dialog, CONN_FIELDS["timeout"]["label"]).locator("input")).to_have_value("60")
    expect(dialog.get_by_role("checkbox", name=CONN_FIELDS["verify"]["label"])).to_be_checked()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    extras_shot = dialog.screenshot()

    shot = artifacts_dir / "connection-form.png"
    _side_by_side(page.context, [standard_shot, extras_shot], shot)
    if os.environ.get(UPDATE_DOCS_ENV) == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        DOCS_SCREENSHOT.write_bytes(shot.read_bytes())

    with page.expect_response(
        lambda r: urlsplit(r.url).path.endswith("/api/v2/connections") and r.request.method == "POST"
    ) as created:
        dialog.get_by_role("button", name="Save").click()
    assert created.value.status == 201, created.value.text()
    expect(dialog).to_be_hidden()

    stored = airflow_ui.connection(CONN_ID)
    assert stored["conn_type"] == "maas"
    assert stored["host"] == emulator_url
    assert (stored["login"], stored["schema"], stored["port"]) == (None, None, None)
    extra = json.loads(stored["extra"])
    assert extra == {"endpoint": UI_ENDPOINT, "timeout": extra["timeout"], "verify": True}
    assert float(extra["timeout"]) == 60  # 60 from conn-fields (3.2+), "60" from the widgets (3.0/3.1)

    # Test: the hook's test_connection runs in the api-server against the emulator.
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=CONN_ID, exact=True))
    has_test_button = Version(airflow_ui.airflow_version) >= Version("3.1")

    def test_saved_connection(key: str) -> dict[str, Any]:
        if has_test_button:
            return _press_test(page, row)
        # Airflow 3.0's UI has no Test button: the API call behind it, with the fields as saved.
        saved = airflow_ui.connection(CONN_ID)
        body = {name: saved[name] for name in ("connection_id", "conn_type", "host", "extra")}
        return airflow_ui.test_connection({**body, "password": key})

    result = test_saved_connection(UI_API_KEY)
    assert result["status"] is True
    assert result["message"].startswith(f"Connection works: the key is accepted for endpoint {UI_ENDPOINT!r}")
    if has_test_button:
        success = page.get_by_role("status").filter(has_text=result["message"])
        expect(success).to_be_visible()
        expect(success).to_contain_text(re.compile("success", re.IGNORECASE))

    def edit_and_save(key: str, endpoint: str | None = None) -> None:
        """Set the API key (and the Endpoint) through the row's Edit dialog and save."""
        row.get_by_role("button", name="Edit Connection").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("textbox", name="API Key").fill(key)
        if endpoint is not None:
            dialog.get_by_role("button", name="Extra Fields", exact=True).click()
            _field_group(dialog, CONN_FIELDS["endpoint"]["label"]).get_by_role("textbox").fill(endpoint)
        with page.expect_response(
            lambda r: urlsplit(r.url).path.endswith(f"/api/v2/connections/{CONN_ID}") and r.request.method == "PATCH"
        ) as updated:
            dialog.get_by_role("button", name="Save").click()
        assert updated.value.status == 200, updated.value.text()
        expect(dialog).to_be_hidden()

    # A wrong key, set through the Edit dialog: Test shows the hook's failure message.
    edit_and_save(WRONG_KEY)

    result = test_saved_connection(WRONG_KEY)
    assert result["status"] is False
    assert "HTTP 401" in result["message"]
    assert "API Key" in result["message"]
    assert WRONG_KEY not in result["message"]
    if has_test_button:
        failure = page.get_by_role("status").filter(has_text="HTTP 401")
        expect(failure).to_be_visible()
        expect(failure).to_contain_text(re.compile("fail", re.IGNORECASE))
        expect(failure).to_contain_text(result["message"])
        page.screenshot(path=str(artifacts_dir / "connection-test-failed.png"))

    # The right key but a wrong ENDPOINT: the test names the Endpoint field (an unknown endpoint and
    # an unknown job both answer 404, so the probe is an upload, which a known endpoint accepts).
    edit_and_save(UI_API_KEY, endpoint="wrong-ep")

    result = test_saved_connection(UI_API_KEY)
    assert result["status"] is False
    assert "Endpoint 'wrong-ep' is unknown" in result["message"]
    assert UI_API_KEY not in result["message"]
    if has_test_button:
        expect(page.get_by_role("status").filter(has_text="Endpoint 'wrong-ep' is unknown")).to_be_visible()
