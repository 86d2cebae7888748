"""Pure tests of ``airflow_provider_maas.client.config``: names, base URLs, configuration, error mapping, backoff."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from airflow_provider_maas.client import retry
from airflow_provider_maas.client.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    build_config,
    check_base_url,
    check_name,
)
from airflow_provider_maas.client.errors import error_from_response, parse_json, redact, response_text
from airflow_provider_maas.client.retry import RetryPolicy, backoff_delay, parse_retry_after
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSAuthError,
    MaaSConfigError,
    MaaSInputError,
    MaaSNotFoundError,
    MaaSRateLimitError,
    MaaSResultsGoneError,
    MaaSRetryableError,
)
from airflow_provider_maas.hooks.connection import DEFAULT_BASE_URL

KEY = "sk-unit-test-secret-42"


def make_config(**overrides):
    kwargs = {
        "host": "https://maas.example.com",
        "password": KEY,
        "extra": {"endpoint": "ep-1"},
        "endpoint_override": None,
        "conn_id": "maas_test",
    }
    kwargs.update(overrides)
    return build_config(**kwargs)


# check_name -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["requests.jsonl", "903523130369114112", "a-b_c.d e", "ünïcode.jsonl", "x" * 1024])
def test_check_name_accepts_plain_names(name):
    assert check_name(name, "file name") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        None,
        123,
        "a/b",
        "/abs",
        "..",
        ".",
        "../etc/passwd",
        "a..b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\rb",
        "a\tb",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",
        "x" * 1025,
    ],
)
def test_check_name_refuses_unsafe_names(name):
    with pytest.raises(MaaSInputError) as info:
        check_name(name, "job name")
    assert "job name" in str(info.value)


# check_base_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://genaiapi.cloudsway.net/", "https://genaiapi.cloudsway.net"),
        ("https://proxy.internal:8443/maas", "https://proxy.internal:8443/maas"),
        ("http://127.0.0.1:8089", "http://127.0.0.1:8089"),
        ("http://localhost:8089/", "http://localhost:8089"),
        ("http://[::1]:8089", "http://[::1]:8089"),
        ("http://127.5.6.7", "http://127.5.6.7"),
    ],
)
def test_check_base_url_accepts_https_and_loopback_http(url, expected):
    assert check_base_url(url) == expected


@pytest.mark.parametrize("url", ["http://genaiapi.cloudsway.net", "http://10.0.0.5:8089", "http://0.0.0.0:80"])
def test_check_base_url_refuses_plain_http_off_loopback(url):
    with pytest.raises(MaaSConfigError, match="allow_insecure_http"):
        check_base_url(url)
    assert check_base_url(url, allow_insecure_http=True) == url


@pytest.mark.parametrize("url", ["genaiapi.cloudsway.net", "ftp://host/x", "https://", "", "file:///etc/passwd"])
def test_check_base_url_refuses_non_urls(url):
    with pytest.raises(MaaSConfigError, match="not a URL"):
        check_base_url(url)


# build_config / ApiConfig -----------------------------------------------------------------


def test_build_config_defaults_and_repr_hides_key():
    config = make_config(host=None, extra={"endpoint": " ep-1 "})
    assert config.base_url == DEFAULT_BASE_URL
    assert config.endpoint == "ep-1"
    assert config.api_key == KEY
    assert config.timeout == DEFAULT_TIMEOUT
    assert config.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert config.verify is True
    assert KEY not in repr(config)
    assert KEY not in str(config)
    assert config.headers()["Authorization"] == f"Bearer {KEY}"


def test_build_config_endpoint_override_wins():
    assert make_config(endpoint_override="ep-2").endpoint == "ep-2"


def test_build_config_reads_timeout_verify_and_insecure_http():
    config = make_config(
        host="http://maas.lan:8089",
        extra={"endpoint": "ep", "timeout": "2.5", "verify": "false", "allow_insecure_http": "true"},
    )
    assert config.base_url == "http://maas.lan:8089"
    assert config.timeout == 2.5
    assert config.connect_timeout == 2.5  # never longer than the whole timeout
    assert config.verify is False


def test_build_config_verify_path_must_be_an_existing_file(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert make_config(extra={"endpoint": "ep", "verify": str(bundle)}).verify == str(bundle)
    with pytest.raises(MaaSConfigError, match=r"no file .*missing\.pem"):
        make_config(extra={"endpoint": "ep", "verify": str(tmp_path / "missing.pem")})
    with pytest.raises(MaaSConfigError, match="is not a file"):
        make_config(extra={"endpoint": "ep", "verify": str(tmp_path)})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("FALSE", False), (" True ", True), (None, True)],
)
def test_build_config_verify_booleans(value, expected):
    assert make_config(extra={"endpoint": "ep", "verify": value}).verify is expected
    assert make_config(extra={"endpoint": "ep"}).verify is True


@pytest.mark.parametrize("value", [0, 1, "", "no", "0", "yes", 0.0, [], {}])
def test_build_config_verify_anything_else_is_refused(value):
    with pytest.raises(MaaSConfigError, match=r"extra\.verify must be true, false or the path of a CA bundle"):
        make_config(extra={"endpoint": "ep", "verify": value})


def test_build_config_missing_endpoint():
    with pytest.raises(MaaSConfigError, match=r"No ENDPOINT for connection 'maas_test'"):
        make_config(extra={})


def test_build_config_missing_key():
    with pytest.raises(MaaSConfigError, match=r"No API key in connection 'maas_test'"):
        make_config(password=None)
    with pytest.raises(MaaSConfigError, match="API Key"):
        make_config(password="")


def test_build_config_unsafe_endpoint_refused():
    with pytest.raises(MaaSInputError, match="endpoint"):
        make_config(extra={"endpoint": "../other"})


@pytest.mark.parametrize("timeout", [-1, "abc", "nan", "inf", [1]])
def test_build_config_bad_timeout(timeout):
    with pytest.raises(MaaSConfigError, match=r"extra\.timeout must be a positive number"):
        make_config(extra={"endpoint": "ep", "timeout": timeout})


def test_build_config_insecure_http_refused_without_flag():
    with pytest.raises(MaaSConfigError, match="plain http"):
        make_config(host="http://maas.lan:8089")


def test_urls_are_built_and_quoted():
    config = make_config(extra={"endpoint": "my ep"})
    prefix = "https://maas.example.com/v1/ai/batch/gemini/my%20ep"
    assert config.prefix == prefix
    assert config.upload_url("in put.jsonl") == (f"{prefix}/files", {"uploadType": "media", "name": "in put.jsonl"})
    assert config.jobs_url() == f"{prefix}/batchPredictionJobs"
    assert config.job_url("903523130369114112") == f"{prefix}/batchPredictionJobs/903523130369114112"
    assert config.job_url("a?b#c") == f"{prefix}/batchPredictionJobs/a%3Fb%23c"
    assert config.content_url("42") == f"{prefix}/batchPredictionJobs/42/content"


@pytest.mark.parametrize("bad", ["", "../1", "1/content", "1\n"])
def test_urls_refuse_bad_names(bad):
    config = make_config()
    with pytest.raises(MaaSInputError):
        config.job_url(bad)
    with pytest.raises(MaaSInputError):
        config.upload_url(bad)


# error_from_response ---------------------------------------------------------------------


def google_error(code: int, status: str, message: str) -> bytes:
    import json

    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, MaaSApiError),
        (401, MaaSAuthError),
        (403, MaaSAuthError),
        (404, MaaSNotFoundError),
        (410, MaaSResultsGoneError),
        (408, MaaSRetryableError),
        (429, MaaSRateLimitError),
        (500, MaaSRetryableError),
        (502, MaaSRetryableError),
        (503, MaaSRetryableError),
        (504, MaaSRetryableError),
        (501, MaaSRetryableError),
        (524, MaaSRetryableError),
        (409, MaaSApiError),
    ],
)
def test_error_from_response_maps_status_to_type(status, cls):
    err = error_from_response(status, google_error(status, "SOME_STATUS", "went wrong"), what="Getting job 1")
    assert type(err) is cls
    assert err.status_code == status
    assert err.error_status == "SOME_STATUS"
    assert err.error_message == "went wrong"
    assert str(err).startswith(f"Getting job 1 failed: HTTP {status} SOME_STATUS: went wrong")


def test_error_from_response_auth_hints():
    assert "API Key" in str(error_from_response(401, b"", what="x"))
    assert "ENDPOINT" in str(error_from_response(403, b"", what="x"))


def test_error_from_response_retry_after():
    err = error_from_response(429, google_error(429, "RESOURCE_EXHAUSTED", "slow down"), what="x", retry_after="7")
    assert err.retry_after == 7.0
    assert error_from_response(503, b"", what="x").retry_after is None


def test_error_from_response_html_body_is_readable():
    body = b"<!DOCTYPE html><html><title>Error 502 (Server Error)!!1</title><p><b>502.</b> That&#39;s an error.</html>"
    err = error_from_response(502, body, what="Upload of 'a'")
    assert isinstance(err, MaaSRetryableError)
    assert err.error_status is None
    assert "<" not in str(err)
    assert "Error 502 (Server Error)!!1 502. That's an error." in str(err)


def test_error_from_response_plain_text_and_empty_body():
    err = error_from_response(503, b"upstream connect error", what="Getting job 9")
    assert str(err) == "Getting job 9 failed: HTTP 503: upstream connect error"
    err = error_from_response(500, b"", what="Getting job 9")
    assert str(err) == "Getting job 9 failed: HTTP 500: no error message in the answer"


def test_error_from_response_other_json_shapes_keep_the_text():
    err = error_from_response(400, b'{"detail": "bad uploadType"}', what="Upload of 'a'")
    assert "bad uploadType" in str(err)
    err = error_from_response(400, b'{"error": "invalid_request"}', what="Upload of 'a'")
    assert err.error_message == "invalid_request"
    err = error_from_response(400, b"[1, 2]", what="x")
    assert "[1, 2]" in str(err)


def test_error_from_response_truncates_long_bodies():
    err = error_from_response(500, b"x" * 5000, what="x")
    assert err.error_message is not None
    assert err.error_message.endswith("...")
    assert len(err.error_message) == 300  # the cut text and its '...'


def test_error_from_response_never_echoes_the_key():
    body = google_error(401, "UNAUTHENTICATED", f"API key {KEY} is invalid")
    err = error_from_response(401, body, what="x", api_key=KEY)
    assert KEY not in str(err)
    assert KEY not in repr(err)
    assert err.error_message is not None and KEY not in err.error_message
    assert "***" in str(err)
    err = error_from_response(500, f"<p>token={KEY}</p>".encode(), what="x", api_key=KEY)
    assert KEY not in str(err)


@pytest.mark.parametrize("offset", [0, 150, 290, 299, 305])
def test_error_bodies_are_redacted_before_they_are_cut(offset):
    """A key across the 300-character cut must not leak its first characters."""
    body = ("x" * offset + KEY + "y" * 400).encode()
    err = error_from_response(502, body, what="x", api_key=KEY)
    for size in range(6, len(KEY) + 1):
        assert KEY[:size] not in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer some-other-token-123",
        '{"headers": {"Authorization": "Bearer some-other-token-123"}}',
        "authorization=Basic some-other-token-123",
        "sent bearer some-other-token-123 upstream",
        "<td>Authorization</td><td>: Bearer some-other-token-123</td>",
    ],
)
def test_redact_removes_any_authorization_or_bearer_value(text):
    assert "some-other-token-123" not in response_text(text.encode(), KEY)
    assert "some-other-token-123" not in redact(text, KEY)


def test_parse_json_redacts_and_survives_deep_nesting():
    with pytest.raises(MaaSApiError) as info:
        parse_json(f"<pre>Authorization: Bearer {KEY}</pre>".encode(), what="Getting job 1", api_key=KEY)
    assert KEY not in str(info.value)
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(MaaSApiError, match="not a usable JSON object"):
        parse_json(deep, what="Getting job 1")
    err = error_from_response(500, deep, what="Getting job 1")
    assert isinstance(err, MaaSRetryableError) and len(str(err)) < 400


def test_retry_policy_retries_only_retryable_errors_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=3, base_delay=0.01)
    limited = error_from_response(429, b"", what="x", retry_after="4")
    assert policy.should_retry(1, limited) and policy.should_retry(2, limited)
    assert not policy.should_retry(3, limited)
    assert not policy.should_retry(1, error_from_response(400, b"", what="x"))
    assert not policy.should_retry(1, MaaSConfigError("TLS"))
    assert policy.delay(1, limited) >= 4.0
    assert RetryPolicy().max_attempts == 5
    with pytest.raises(MaaSConfigError):
        RetryPolicy(max_attempts=0)


# Retry-After and backoff -----------------------------------------------------------------


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 <= parse_retry_after(in_a_minute) <= 61
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_backoff_delay_is_bounded_exponential_with_jitter(monkeypatch):
    monkeypatch.setattr(retry, "random", random.Random(1234))
    for attempt in range(1, 12):
        ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, retry_after=None, base=0.5) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    # full jitter: the delays of one attempt are spread, not constant
    assert len({backoff_delay(5, retry_after=None) for _ in range(10)}) > 1


def test_backoff_delay_honours_retry_after_with_a_cap():
    assert backoff_delay(1, retry_after=7.0, base=0.01) >= 7.0
    assert backoff_delay(1, retry_after=10_000.0, base=0.01, cap=60.0) == 300.0
