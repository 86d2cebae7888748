"""One reading of a yes/no setting (``airflow_provider_maas/flags.py``), for the connection's extras
and the operators' rendered flags: an unrecognised spelling is refused naming the setting, the value
and the spellings taken, never read as false (a typo in ``allow_insecure_http`` used to be)."""

from __future__ import annotations

import pytest

from airflow_provider_maas.client.config import build_config
from airflow_provider_maas.exceptions import MaaSConfigError, MaaSInputError
from airflow_provider_maas.flags import FALSE, TRUE, is_true
from airflow_provider_maas.hooks.maas import MaaSHook
from tests.conftest import API_KEY, connection_env

KEY = "sk-flag-test-secret-7"


@pytest.mark.parametrize("value", [True, *TRUE, "TRUE", " Yes ", 1])
def test_the_spellings_of_true(value):
    assert is_true(value, what="flag") is True


@pytest.mark.parametrize("value", [False, None, *FALSE, "False", " OFF ", 0])
def test_the_spellings_of_false(value):
    assert is_true(value, what="flag") is False


@pytest.mark.parametrize("value", ["ture", "flase", "2", "y", 2, 0.5])
def test_anything_else_is_refused_naming_the_setting_the_value_and_the_spellings(value):
    with pytest.raises(MaaSInputError) as info:
        is_true(value, what="start_over")
    message = str(info.value)
    assert message.startswith(f"start_over must be true or false, got {value!r}")
    assert all(spelling in message for spelling in ("true", "yes", "on", "false", "no", "off"))


def _config(**extra):
    return build_config(
        host="http://maas.lan:8089",
        password=KEY,
        extra={"endpoint": "ep", **extra},
        endpoint_override=None,
        conn_id="c1",
    )


@pytest.mark.parametrize("value", ["ture", "2", KEY])
def test_a_connection_extra_with_a_typo_is_refused_naming_the_field_never_the_key(value):
    with pytest.raises(MaaSConfigError) as info:
        _config(allow_insecure_http=value)
    message = str(info.value)
    assert message.startswith("Connection 'c1': extra.allow_insecure_http must be true or false, got '")
    assert KEY not in message  # a key pasted into the wrong field is taken out of the value shown
    assert (value == KEY) == ("***" in message)


@pytest.mark.parametrize(("value", "allowed"), [("true", True), ("on", True), ("false", False), (None, False)])
def test_a_connection_extra_is_read_as_the_operators_flags(value, allowed):
    if allowed:
        assert _config(allow_insecure_http=value).base_url == "http://maas.lan:8089"
    else:  # plain HTTP to a host that is not loopback stays refused
        with pytest.raises(MaaSConfigError, match="allow_insecure_http"):
            _config(allow_insecure_http=value)


def test_the_hook_refuses_a_connection_whose_flag_extra_is_misspelt(monkeypatch):
    monkeypatch.setenv(*connection_env("http://maas.example.com:8089", allow_insecure_http="ture"))
    with pytest.raises(MaaSConfigError, match=r"extra\.allow_insecure_http must be true or false, got 'ture'") as info:
        MaaSHook().get_batch_job("1")
    assert API_KEY not in str(info.value)


def test_the_operators_flags_use_the_same_reading(monkeypatch):
    from airflow_provider_maas import flags
    from airflow_provider_maas.operators import batch

    read: list[str] = []
    monkeypatch.setattr(flags, "is_true", lambda value, *, what: read.append(what) or True)
    assert batch.parameter_flag is flags.parameter_flag  # start_over, rendered, too: where the settings are built
    assert flags.parameter_flag("nein", what="deduplicate") is True and read == ["deduplicate"]
