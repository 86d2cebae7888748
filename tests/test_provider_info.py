"""Provider metadata: ``get_provider_info()``, the hook's connection form, and what Airflow discovers."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import types

import pytest

import airflow_provider_maas
from airflow_provider_maas import get_provider_info
from airflow_provider_maas.hooks.connection import DEFAULT_BASE_URL
from airflow_provider_maas.hooks.maas import MaaSHook

DIST = "airflow-provider-maas"


@pytest.fixture(scope="module")
def info():
    return get_provider_info()


@pytest.fixture(scope="module")
def connection_type(info):
    [entry] = info["connection-types"]
    return entry


def installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


NOT_INSTALLED = f"{DIST} is not installed: Airflow finds providers by entry point (pip install -e .)"


# get_provider_info ------------------------------------------------------------------------


def test_provider_info_is_valid_for_airflow(info):
    from airflow.providers_manager import _create_provider_info_schema_validator

    _create_provider_info_schema_validator().validate(info)
    assert info["package-name"] == DIST
    assert info["name"]
    assert info["description"]
    assert info["versions"] == [airflow_provider_maas.__version__]


def test_package_name_is_the_distribution_name(info):
    assert installed(), NOT_INSTALLED
    dist = importlib.metadata.distribution(DIST)
    assert dist.metadata["Name"] == info["package-name"]
    assert dist.version == airflow_provider_maas.__version__
    [entry_point] = [ep for ep in dist.entry_points if ep.group == "apache_airflow_provider"]
    assert entry_point.load() is get_provider_info


@pytest.mark.parametrize("kind", ["hooks", "operators", "sensors", "triggers"])
def test_declared_modules_import_and_name_a_declared_integration(info, kind):
    integrations = {i["integration-name"] for i in info["integrations"]}
    assert info[kind]
    for entry in info[kind]:
        assert entry["integration-name"] in integrations
        for module in entry["python-modules"]:
            importlib.import_module(module)


def test_connection_type_matches_the_hook(connection_type):
    assert connection_type["connection-type"] == MaaSHook.conn_type == "maas"
    module, _, name = connection_type["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is MaaSHook
    assert connection_type["hook-name"] == MaaSHook.hook_name
    assert MaaSHook.conn_name_attr == "maas_conn_id"
    assert MaaSHook.default_conn_name == "maas_default"


def test_ui_field_behaviour_equals_the_hooks(connection_type):
    from airflow.providers_manager import _create_customized_form_field_behaviours_schema_validator

    declared = connection_type["ui-field-behaviour"]
    from_hook = MaaSHook.get_ui_field_behaviour()
    assert {key.replace("-", "_"): value for key, value in declared.items()} == from_hook
    _create_customized_form_field_behaviours_schema_validator().validate(from_hook)
    assert from_hook["relabeling"] == {"password": "API Key", "host": "Base URL"}
    assert set(from_hook["hidden_fields"]) == {"login", "schema", "port"}
    assert from_hook["placeholders"]["host"] == DEFAULT_BASE_URL
    # the hook's copy can be changed by a caller without changing the provider's
    from_hook["hidden_fields"].append("extra")
    assert "extra" not in MaaSHook.get_ui_field_behaviour()["hidden_fields"]


def fake_form_modules(monkeypatch) -> None:
    """Stand-ins for flask_appbuilder, flask_babel and wtforms (not installed with Airflow 3)."""

    class Field:
        def __init__(self, label, validators=None, *, widget=None, default=None, **kwargs):
            self.label, self.widget, self.default = label, widget, default
            self.field_class = type(self)

    wtforms = types.ModuleType("wtforms")
    for name in ("StringField", "IntegerField", "PasswordField", "BooleanField", "FloatField", "DecimalField"):
        setattr(wtforms, name, type(name, (Field,), {}))
    fieldwidgets = types.ModuleType("flask_appbuilder.fieldwidgets")
    fieldwidgets.BS3TextFieldWidget = type("BS3TextFieldWidget", (), {})
    fieldwidgets.BS3PasswordFieldWidget = type("BS3PasswordFieldWidget", (), {})
    babel = types.ModuleType("flask_babel")
    babel.lazy_gettext = lambda text: text
    monkeypatch.setitem(sys.modules, "wtforms", wtforms)
    monkeypatch.setitem(sys.modules, "flask_appbuilder", types.ModuleType("flask_appbuilder"))
    monkeypatch.setitem(sys.modules, "flask_appbuilder.fieldwidgets", fieldwidgets)
    monkeypatch.setitem(sys.modules, "flask_babel", babel)


def test_form_widgets_match_conn_fields(connection_type, monkeypatch):
    fake_form_modules(monkeypatch)
    widgets = MaaSHook.get_connection_form_widgets()
    conn_fields = connection_type["conn-fields"]
    assert set(widgets) == set(conn_fields) == {"endpoint", "timeout", "verify"}
    for name, widget in widgets.items():
        assert widget.label == conn_fields[name]["label"]
        default = conn_fields[name]["schema"].get("default")
        assert (widget.default is None) == (default is None)
        if default is not None:
            assert str(widget.default) == str(default)
        # Airflow 3.0/3.1 drop a hook whose form uses any other field class
        assert widget.field_class.__name__ in {"StringField", "IntegerField", "PasswordField", "BooleanField"}


def test_conn_fields_are_what_the_hook_reads(connection_type, monkeypatch):
    for name, field in connection_type["conn-fields"].items():
        assert field["label"]
        assert field["description"]
        assert field["schema"]["type"]
        assert name not in MaaSHook.get_ui_field_behaviour()["hidden_fields"]
    extra = {"endpoint": "ep-from-form", "timeout": 7.5, "verify": False}
    value = {"conn_type": "maas", "host": DEFAULT_BASE_URL, "password": "form-key", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_MAAS_FORM", json.dumps(value))
    config = MaaSHook(maas_conn_id="maas_form").config
    assert (config.endpoint, config.timeout, config.verify) == ("ep-from-form", 7.5, False)
    defaults = {n: f["schema"].get("default") for n, f in connection_type["conn-fields"].items()}
    value["extra"] = {"endpoint": "ep"}
    monkeypatch.setenv("AIRFLOW_CONN_MAAS_FORM", json.dumps(value))
    config = MaaSHook(maas_conn_id="maas_form").config
    assert (config.timeout, config.verify) == (defaults["timeout"], defaults["verify"])


# What Airflow discovers -------------------------------------------------------------------


def test_providers_manager_registers_the_form():
    assert installed(), NOT_INSTALLED
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert DIST in manager.providers
    behaviour = manager.field_behaviours["maas"]
    assert behaviour["relabeling"] == MaaSHook.get_ui_field_behaviour()["relabeling"]
    widgets = {k: v for k, v in manager.connection_form_widgets.items() if k.startswith("extra__maas__")}
    assert {w.field_name for w in widgets.values()} == {"endpoint", "timeout", "verify"}
    assert {w.package_name for w in widgets.values()} == {DIST}


def airflow_cli(*args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args, "--output", "json"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout[result.stdout.index("[") :])


def test_airflow_providers_list_shows_the_provider():
    assert installed(), NOT_INSTALLED
    [entry] = [p for p in airflow_cli("providers", "list") if p["package_name"] == DIST]
    assert entry["version"] == airflow_provider_maas.__version__


def test_airflow_providers_hooks_shows_the_connection_type():
    assert installed(), NOT_INSTALLED
    [entry] = [h for h in airflow_cli("providers", "hooks") if h["connection_type"] == "maas"]
    assert entry["class"] == "airflow_provider_maas.hooks.maas.MaaSHook"
    assert entry["package_name"] == DIST
    assert entry["conn_id_attribute_name"] == "maas_conn_id"
    assert entry["hook_name"] == MaaSHook.hook_name
