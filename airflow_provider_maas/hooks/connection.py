"""The ``maas`` connection form: one definition for Airflow >= 3.2 (``conn-fields`` in the provider
info) and for Airflow 3.0/3.1 (the hook's ``get_connection_form_widgets``/``get_ui_field_behaviour``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_maas.client.service import DEFAULT_BASE_URL

__all__ = ["CONN_FIELDS", "DEFAULT_BASE_URL", "DEFAULT_CONN_ID", "UI_FIELD_BEHAVIOUR", "form_widgets"]

#: The connection id every hook, operator, sensor and trigger uses unless given another.
DEFAULT_CONN_ID = "maas_default"

#: Fields of the connection form, shared by ``get_provider_info`` (Airflow >= 3.2) and the
#: hook's form methods (Airflow 3.0/3.1).
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "endpoint": {
        "label": "Endpoint",
        "description": "The ENDPOINT id the vendor gave for the model deployment.",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Timeout of each HTTP request, in seconds (default 60).",
        "schema": {"type": ["number", "null"], "default": 60},
    },
    "verify": {
        "label": "Verify TLS",
        "description": (
            "Verify the server's TLS certificate (default true). For a private CA, set extra "
            '"verify" to the path of its CA bundle file instead.'
        ),
        "schema": {"type": ["boolean", "null"], "default": True},
    },
}
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["login", "schema", "port"],
    "relabeling": {"password": "API Key", "host": "Base URL"},
    "placeholders": {"host": DEFAULT_BASE_URL, "endpoint": "the ENDPOINT id from the vendor"},
}


def form_widgets() -> dict[str, Any]:
    """Extra fields of the connection form, for the hook's ``get_connection_form_widgets`` (Airflow
    3.0/3.1; 3.2+ reads ``conn-fields``).

    Only ``StringField``, ``IntegerField``, ``PasswordField`` and ``BooleanField`` are accepted:
    Airflow drops a hook using any other field class. The timeout is a string field (it may be
    fractional) that the hook parses.

    Needs ``wtforms`` only: the Airflow 3.0/3.1 UI builds the form from these fields without
    Flask, but skips ``get_connection_form_widgets``, and ``get_ui_field_behaviour`` with it, when
    an import here fails. ``flask_appbuilder`` widgets and ``flask_babel`` (not installed with Airflow 3) are
    therefore not used.
    """
    from wtforms import BooleanField, StringField

    def text(name: str, **kwargs: Any) -> Any:
        field = CONN_FIELDS[name]
        return StringField(field["label"], description=field["description"], **kwargs)

    verify = CONN_FIELDS["verify"]
    return {
        "endpoint": text("endpoint"),
        "timeout": text("timeout", default="60"),
        "verify": BooleanField(verify["label"], description=verify["description"], default=True),
    }
