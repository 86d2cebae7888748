"""The redaction and neutralisation of issue 20, alone: every form of the key, in any mix and
alignment, is taken out of a text; Airflow's own masker is given every literal form; the service's
text is escaped visibly, never dropped; names with such characters are refused."""

from __future__ import annotations

import base64

import pytest

from airflow_provider_maas.client.config import check_name
from airflow_provider_maas.client.errors import error_from_response, parse_json, response_text
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.redaction import contains_key, key_forms, mask_key, neutralise, redact
from tests.hostile_service import FORGED, KEY, RAW_CONTROLS
from tests.hostile_service import key_forms as echoed_forms


@pytest.mark.parametrize(("name", "form"), sorted(echoed_forms().items()))
def test_every_form_is_redacted_in_any_text(name, form):
    for text in (form, f"x{form}y", f"<p>{form}</p>", f'{{"k": "{form}"}}', f"{form}\n{form}"):
        out = redact(text, KEY)
        assert "***" in out
        assert form not in out and form.lower() not in out.lower(), (name, out)
        assert contains_key(text, KEY)


def test_base64_in_every_alignment_and_mixed_escapes():
    for prefix in (b"", b"a", b"ab", b"abc", b"Basic user:"):
        encoded = base64.b64encode(prefix + KEY.encode() + b"tail").decode()
        assert not contains_key(redact(encoded, KEY), KEY)
        assert "***" in redact(encoded, KEY)
    mixed = "sk-Ab%2fCd\\u002bEf&#61;=Gh+Ij&amp;KlmnOP42~~~?"  # four encodings in one echo
    assert redact(mixed, KEY) == "***"


def test_text_without_the_key_is_left_alone():
    assert redact("sk-Ab/Cd and base64 c2st and Ef==", KEY) == "sk-Ab/Cd and base64 c2st and Ef=="
    assert not contains_key("nothing here", KEY)


def test_the_error_and_success_paths_use_the_one_redaction():
    body = f'{{"error": {{"code": 400, "message": "{echoed_forms()["json-unicode"]}", "status": "X"}}}}'.encode()
    err = error_from_response(400, body, what="Upload", api_key=KEY)
    assert "***" in str(err) and not contains_key(str(err), KEY)
    job = parse_json(
        f'{{"name": "1", "displayName": "{echoed_forms()["json-slash"]}"}}'.encode(), what="x", api_key=KEY
    )
    assert job["displayName"] == "***"
    assert response_text(echoed_forms()["html-named"].encode(), KEY) == "***"


def test_airflow_masker_is_given_every_literal_form():
    from airflow.sdk.log import _secrets_masker

    mask_key(KEY)
    masker = _secrets_masker()
    for name, form in echoed_forms().items():
        if name in ("html-hex", "html-named", "base64-basic-auth", "bearer-percent"):
            continue  # an encoding the provider's own redaction covers (any mix); no literal form exists
        assert form not in masker.redact(f"echo {form} end"), name
    assert KEY in key_forms(KEY) and KEY.lower() in key_forms(KEY)


def test_neutralise_escapes_what_forges_or_hides_log_lines():
    out = neutralise(FORGED)
    assert not [c for c in RAW_CONTROLS if c in out]
    assert "\\x0a2026-12-06" in out and "\\x1b[2J" in out and "\\u202e" in out and "\\u2028" in out
    assert "\\x0d" in out and "\\u2029" in out and "\\x85" in out and "\\x00" in out
    assert neutralise("plain text, unicode é 字") == "plain text, unicode é 字"
    assert len(neutralise("\x1b" * 10_000, 100)) == 100
    assert neutralise("x" * 10, 5) == "xx..."


@pytest.mark.parametrize("name", ["a\u202eb.jsonl", "a\u2028b", "a\u200bb", "a\x1bb", "a\rb", "a\ufeffb"])
def test_names_with_hidden_or_control_characters_are_refused(name):
    with pytest.raises(MaaSInputError, match="control character"):
        check_name(name, "file name")


@pytest.mark.parametrize("key", ["abcdefGHIJ0123456789", "sk-Ab/Cd+Ef==Gh Ij&KlmnOP42~~~?", "_-_-_-_-_-_-_-_-"])
def test_the_quick_check_never_misses_a_form(key):
    """``contains_key`` first rules texts out cheaply (a poll parses a job's JSON thousands of times):
    it must never rule out a text that holds a form, for keys of letters and digits only, of mixed
    characters, or of no letter or digit at all."""
    for name, form in echoed_forms(key).items():
        assert contains_key(f"a {form} b", key), name
        assert "***" in redact(f"a {form} b", key), name
