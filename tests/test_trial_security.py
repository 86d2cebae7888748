"""Adversarial trial of issue 20 ("leak nothing, forge nothing"): the ways around the redaction,
the neutralisation and the path checks that the first build left open. Each test failed before its fix."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from airflow_provider_maas import redaction
from airflow_provider_maas.batch.answers.results import ResultSummary, parse_result_line
from airflow_provider_maas.client.errors import error_from_response, parse_json
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.redaction import contains_key, mask_key, neutralise, redact
from airflow_provider_maas.storage.paths import shown_uri, to_path, uri_of
from tests.hostile_service import KEY

SECRET_PIECES = ("Ab", "Cd", "Gh", "KlmnOP42")


def _readable(text: str) -> list[str]:
    return [piece for piece in SECRET_PIECES if piece.lower() in text.lower()]


# Redaction: encodings the first build missed ------------------------------------------------


def test_double_percent_encoding_is_redacted():
    once = quote(KEY, safe="")
    for text in (quote(once, safe=""), quote(quote(once, safe=""), safe=""), quote(once, safe="").lower()):
        assert contains_key(text, KEY), text
        assert redact(text, KEY) == "***", text
    err = error_from_response(404, f"no route for /v1?key={quote(once, safe='')}".encode(), what="x", api_key=KEY)
    assert not _readable(str(err)), str(err)


def test_html_entities_without_semicolon_are_redacted():
    numeric = "".join(c if c.isalnum() else f"&#{ord(c)}" for c in KEY)
    hexa = "".join(c if c.isalnum() else f"&#x{ord(c):x}" for c in KEY)
    legacy = KEY.replace("&", "&amp")  # &amp without ';' is decoded by browsers and html.unescape
    for text in (numeric, hexa, legacy):
        assert redact(text, KEY) == "***", text
    # "sk&#x2dAb&#x2f..." decodes (strictly) to other characters, but a reader sees the key: redacted too
    assert redact("".join(f"&#x{ord(c):x}" for c in KEY), KEY) == "***"


def test_mime_base64_cut_by_a_line_break_is_redacted():
    for prefix in (b"", b"x" * 10, b"y" * 40, b"z" * 57):
        text = base64.encodebytes(
            prefix + KEY.encode() + b" and more after it, long enough for a second line of base64"
        ).decode()
        assert "\n" in text.strip()
        out = redact(text, KEY)
        assert contains_key(text, KEY), text
        # nothing of the key's base64 survives: no 12-character run of its core is left
        core = base64.b64encode(KEY.encode()).decode()
        assert not any(core[i : i + 12] in out.replace("\n", "") for i in range(len(core) - 11)), (prefix, out)


# Neutralisation: the key and characters the first build let through -------------------------


@pytest.fixture
def registered_key():
    saved = dict(redaction._KNOWN_KEYS)
    mask_key(KEY)
    yield KEY
    redaction._KNOWN_KEYS.clear()
    redaction._KNOWN_KEYS.update(saved)


def test_failure_samples_never_carry_the_key(registered_key):
    """A results line's ``status`` (service text, copied into the summary's failure samples, the
    task log and XCom) echoing the key is redacted like every other service text."""
    summary = ResultSummary()
    for number, status in enumerate((f"invalid credentials {KEY}", f"bad key {quote(KEY, safe='')}"), 1):
        line = json.dumps({"request": {"contents": []}, "status": status}).encode()
        summary.add(parse_result_line(line, number))
    assert summary.failed == 2
    for _, error in summary.failure_samples:
        assert not _readable(error), error
        assert "***" in error


def test_neutralise_redacts_a_registered_key_cut_at_its_limit(registered_key):
    text = "x" * 95 + KEY + "tail"
    out = neutralise(text, 100)
    assert not contains_key(out, KEY) and "Ab/Cd" not in out, out


def test_lone_surrogates_and_tag_characters_are_escaped():
    # a lone surrogate cannot be encoded as UTF-8: a log file handler drops the whole line
    # (UnicodeEncodeError); tag characters (U+E0000-E007F) hide text in plain sight; U+00AD too.
    payload = parse_json(b'{"error": {"message": "a\\ud800b\\udfffc"}}', what="x", api_key=KEY)
    message = payload["error"]["message"]
    message.encode("utf-8")
    out = neutralise("ok \ud83d x \U000e0041\U000e0042 soft\u00adhyphen")
    out.encode("utf-8")
    assert "\U000e0041" not in out and "\u00ad" not in out
    assert "\\U000e0041" in out and "\\xad" in out


# Credentials in paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@bucket/requests.jsonl",  # AWS secrets hold '/'
        "s3://AKIAEXAMPLE:wJalr#XUtnFEMI@bucket/requests.jsonl",
        "s3://AKIAEXAMPLE:wJalr?XUtnFEMI@bucket/requests.jsonl",
        "s3://AKIAEXAMPLE%3AwJalrXUtnFEMI@bucket/requests.jsonl",  # percent-encoded ':'
        "gs://user%3AwJalrXUtnFEMI@bucket/requests.jsonl",
    ],
)
def test_credentials_in_a_path_are_refused_and_never_shown(uri):
    with pytest.raises(MaaSInputError, match="conn_id") as err:
        to_path(uri)
    assert "wJalr" not in str(err.value) and "XUtnFEMI" not in str(err.value)
    assert "wJalr" not in shown_uri(uri) and "XUtnFEMI" not in shown_uri(uri)


def test_legitimate_connection_ids_and_ports_still_work():
    assert uri_of(to_path("s3://my_conn@bucket/a/requests.jsonl")) == "s3://my_conn@bucket/a/requests.jsonl"
    assert uri_of(to_path("s3://bucket/a@b/requests.jsonl")) == "s3://bucket/a@b/requests.jsonl"
    assert shown_uri("hdfs://host:8020/a@b") == "hdfs://host:8020/a@b"
    assert shown_uri("https://host:8443/a@b?sig=1") == "https://host:8443/a@b?..."


# Reuse: a results file copied without its origin record -----------------------------------------


def test_reused_answers_of_unknown_model_are_not_silent(emulator, tmp_path):
    """A results file copied without ``.<name>.origin.json`` (or from another tool) may hold another
    model's answers: the task stops before sending anything, naming it."""
    from airflow_provider_maas.batch.record.origin import origin_path
    from tests.helpers import batch_operator, make_context, write_requests

    source = write_requests(tmp_path / "r.jsonl", 3)
    first = tmp_path / "day1.jsonl"
    batch_operator(source, first).execute(make_context())
    origin_path(str(first)).unlink()
    jobs = emulator.emulator.jobs_created
    with pytest.raises(MaaSInputError, match=r"day1\.jsonl: no record of the ENDPOINT"):
        batch_operator(source, tmp_path / "day2.jsonl", reuse_results=str(first)).execute(make_context())
    assert emulator.emulator.jobs_created == jobs


# Credentials in the connection's Base URL --------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "https://user:s3cretPW@maas.example.com",
        "https://s3cretPW@maas.example.com",
        "https://maas.example.com/?token=s3cretPW",
        "https://maas.example.com/#s3cretPW",
        "ftp://user:s3cretPW@maas.example.com",
        "http://127.0.0.1@s3cretPW.example.com",  # a user part that looks like loopback: refused even with allow_insecure_http
    ],
)
def test_a_base_url_with_credentials_or_a_query_is_refused_without_repeating_them(host):
    from airflow_provider_maas.client.config import build_config
    from airflow_provider_maas.exceptions import MaaSConfigError

    with pytest.raises(MaaSConfigError) as err:
        build_config(
            host=host,
            password="k",
            extra={"endpoint": "e", "allow_insecure_http": True},
            endpoint_override=None,
            conn_id="c",
        )
    assert "s3cretPW" not in str(err.value)


# The service's values in an integrity message ----------------------------------------------------


@pytest.mark.parametrize("value", ["{", "{1}", "{0.__class__.__mro__}", "12}"])
def test_service_values_are_not_a_format_string(value):
    """An upload answer's ``size``/``md5Hash`` went into a text later ``.format()``-ed: braces from
    the service crashed the check (ValueError/IndexError, not an integrity error) or expanded."""
    from airflow_provider_maas.client.integrity import StreamHasher, verify_download, verify_upload
    from airflow_provider_maas.exceptions import MaaSIntegrityError

    hasher = StreamHasher(md5=True, crc32c=True)
    hasher.update(b"data")
    with pytest.raises(MaaSIntegrityError) as err:
        verify_upload({"name": "f\x1b[2J" + "x" * 5000, "size": value, "md5Hash": value}, hasher)
    assert value in str(err.value) and "<class" not in str(err.value)
    assert "\x1b" not in str(err.value) and len(str(err.value)) < 1000
    with pytest.raises(MaaSIntegrityError):
        verify_download({"size": value, "crc32c": value}, hasher, what="results of job 1")


# Part cleanup: a user's look-alike made only of hex digits ---------------------------------------


def test_cleanup_keeps_a_users_timestamped_lookalike(tmp_path):
    from airflow_provider_maas.storage import atomic_writer

    dest = tmp_path / "res.jsonl"
    users = [".res.jsonl.202601011230.part", f".res.jsonl.{'0' * 32}.part"]  # a timestamp; an md5 of a backup
    for name in users:
        (tmp_path / name).write_bytes(b"mine")
    with atomic_writer(to_path(str(dest))) as out:
        out.write(b"ok\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "res.jsonl"])


# The key split by markup in an error page ---------------------------------------------------------


@pytest.mark.parametrize("split", ["{a}<wbr>{b}", "{a}</b><i>{b}", "<b>{a}</b>{b}", "{a}<span class='x'>{b}</span>"])
def test_a_key_split_by_html_tags_is_redacted(split):
    import html as html_module

    escaped = html_module.escape(KEY)
    for cut in (3, 8, len(escaped) - 4):
        page = f"<html><p>Invalid token <code>{split.format(a=escaped[:cut], b=escaped[cut:])}</code></p></html>"
        err = error_from_response(401, page.encode(), what="Upload", api_key=KEY)
        assert not _readable(str(err).replace(" ", "")), str(err)


def test_a_key_wrapped_across_lines_of_an_error_body_is_not_shown():
    key = "sk-proj-4f9Kq2LmZx81PwR7tYb3NcVd0HsJ"
    body = f"Invalid API key:\n  {key[:14]}\n  {key[14:]}\nplease check it".encode()
    err = error_from_response(401, body, what="Upload", api_key=key)
    assert key[:14] not in str(err) and key[14:] not in str(err), str(err)
    assert "not shown" in str(err)
    fine = error_from_response(401, b"Invalid API key\nplease check it", what="Upload", api_key=key)
    assert "Invalid API key please check it" in str(fine)


# A presigned URL named in a results-format error ---------------------------------------------------


def test_a_damaged_reuse_file_is_named_without_its_signature(tmp_path):
    import contextlib
    import io

    from airflow_provider_maas.batch.answers.matching import AnswerStore
    from airflow_provider_maas.batch.answers.pay_once import _open_all
    from airflow_provider_maas.batch.answers.results import ResultsFormatError

    url = "https://bucket.example/day1.jsonl?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIAEXAMPLE"
    with contextlib.ExitStack() as stack, AnswerStore(str(tmp_path)) as store, pytest.raises(ResultsFormatError) as err:
        _open_all(stack, store, [url], [], lambda item: io.BytesIO(b"{not json\n"))
    assert "SECRETSIG" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value), str(err.value)
    assert "https://bucket.example/day1.jsonl?..." in str(err.value)


# Numbers from the service that no int holds ---------------------------------------------------------


def test_a_count_of_1e999_does_not_crash_the_job_outcome():
    """``1e999`` in a job's JSON is a float infinity: ``int()`` raised OverflowError, not a MaaSError,
    so the hook's wait, the sensor and the trigger crashed instead of reading the state."""
    from airflow_provider_maas.client.states import Outcome, job_outcome
    from airflow_provider_maas.client.transport import _int_or_none

    body = b'{"name": "1", "state": "JOB_STATE_SUCCEEDED", "completionStats": {"successfulCount": 1e999, "failedCount": -1e999}}'
    outcome = job_outcome(parse_json(body, what="x", api_key=KEY))
    assert outcome.outcome is Outcome.SUCCEEDED and outcome.successful is None and outcome.failed is None
    assert _int_or_none(float("inf")) is None


def test_airflows_masker_is_given_the_double_encoded_key():
    from airflow_provider_maas.redaction import key_forms

    once = quote(KEY, safe="")
    assert quote(once, safe="") in key_forms(KEY)


# A key pasted with a line break, or with a non-ASCII character ------------------------------------------


@pytest.mark.parametrize(
    "key", ["sk-SECRETKEY\n", "sk-SECRET\r\nX-Injected: 1", "sk-SECRET\u2019KEY", "\tsk-SECRETKEY"]
)
def test_a_key_that_cannot_be_sent_in_a_header_is_a_config_error_that_never_repeats_it(key):
    """Before: requests refused the header with an InvalidHeader quoting the key (kept as the
    context of a retryable "connection error", retried, and an uncertain create), or http.client
    raised a bare UnicodeEncodeError (not a MaaSError: the create's outcome counted as unknown)."""
    from airflow_provider_maas.client.config import build_config
    from airflow_provider_maas.exceptions import MaaSConfigError

    with pytest.raises(MaaSConfigError, match="API key") as err:
        build_config(host=None, password=key, extra={"endpoint": "e"}, endpoint_override=None, conn_id="c")
    assert "SECRET" not in str(err.value)
    assert (
        build_config(
            host=None,
            password="sk-Ab/Cd+Ef==Gh Ij&KlmnOP42~~~?",
            extra={"endpoint": "e"},
            endpoint_override=None,
            conn_id="c",
        ).api_key
        == KEY
    )


@pytest.mark.parametrize(
    "text", [" s3://my_conn@bucket/res.jsonl", " file:///tmp/res.jsonl", " /tmp/res.jsonl", "\u00a0/tmp/x"]
)
def test_a_path_starting_with_a_space_is_refused_not_changed(text):
    """Before: ``" s3://..."`` and ``" file:///tmp/x"`` lost the space (ObjectStoragePath strips it),
    while ``" /tmp/x"`` became the relative path ``<cwd>/ /tmp/x``: another file either way."""
    with pytest.raises(MaaSInputError, match="starts with a space"):
        to_path(text)
    assert str(to_path("/tmp/res.jsonl ").path) == "/tmp/res.jsonl "  # a trailing space is kept exactly


# Cost: an answer with text but no output token count --------------------------------------------------


def test_an_answer_with_text_but_no_candidates_count_makes_the_cost_unknown():
    """``{"promptTokenCount": 10}`` beside a long answer priced its output at zero: the cost read as
    lower than it was, with no warning."""
    from airflow_provider_maas.batch.cost.prices import cost_of

    answer = {"candidates": [{"content": {"parts": [{"text": "a long answer " * 200}]}}]}
    line = {"request": {"contents": []}, "response": {**answer, "usageMetadata": {"promptTokenCount": 10}}}
    summary = ResultSummary()
    summary.add(parse_result_line(json.dumps(line).encode(), 1))
    assert summary.usage_unknown == 1
    assert (
        cost_of(summary.tokens, {"prompt": 1.0, "candidates": 1.0, "thoughts": 1.0}, unknown=summary.usage_unknown)
        is None
    )
    # a blocked answer (no text) without a candidates count is still priced on its input
    blocked = {
        "request": {"contents": []},
        "response": {"candidates": [{"finishReason": "SAFETY"}], "usageMetadata": {"promptTokenCount": 10}},
    }
    other = ResultSummary()
    other.add(parse_result_line(json.dumps(blocked).encode(), 1))
    assert other.tokens["prompt_tokens"] == 10


def test_javascript_hex_escapes_of_the_key_are_redacted():
    js = "".join(c if c.isalnum() else f"\\x{ord(c):02X}" for c in KEY)  # a page's inline script: "sk\x2DAb\x2FCd..."
    assert redact(f'<script>var k = "{js}";</script>', KEY) == '<script>var k = "***";</script>'
    assert contains_key(js, KEY)
