"""What an error answer means: the matching exception, with a readable message that never holds a secret.

Every text taken from a response is redacted (:func:`~airflow_provider_maas.redaction.redact`,
every form of the key) before it is cut, and neutralised (no control character) before it is shown.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from airflow_provider_maas.client.retry import RETRYABLE_STATUS, parse_retry_after
from airflow_provider_maas.exceptions import (
    MaaSApiError,
    MaaSAuthError,
    MaaSConfigError,
    MaaSNotFoundError,
    MaaSRateLimitError,
    MaaSResultsGoneError,
    MaaSRetryableError,
)
from airflow_provider_maas.redaction import contains_key, escape_unsafe, neutralise, redact, redact_key

#: Longest text of a response kept in an error message.
MAX_SHOWN = 300
#: Most bytes of an error answer read and looked at (a gateway's page is a few KiB): a huge or
#: endless body must not cost the worker or the triggerer its memory.
MAX_ERROR_BODY = 64 * 1024


def error_body_head(body: bytes, api_key: str | None) -> bytes:
    """The first :data:`MAX_ERROR_BODY` bytes of an error answer; when cut, never ending with the
    start of the key in any form (redaction could not recognise half a key): the last bytes that
    could hold an encoded key's start are dropped too."""
    if len(body) <= MAX_ERROR_BODY:
        return body
    head = body[:MAX_ERROR_BODY]
    key = api_key.encode() if api_key else b""
    for size in range(min(len(key) - 1, len(head)), 0, -1):
        if head.endswith(key[:size]):
            return head[:-size]
    return head[: -_LONGEST_FORM * len(key)] if key else head


#: The most characters one character of the key takes in an encoded form (``&#x0000002f;``...).
_LONGEST_FORM = 16


def response_text(body: bytes, api_key: str | None, *, limit: int = MAX_SHOWN) -> str:
    """Readable, redacted, neutralised and shortened text of a response body (HTML tags and spacing
    removed, control characters escaped)."""
    text = redact(body.decode("utf-8", errors="replace"), api_key)
    if "<" in text:
        # Tags become spaces (readable), unless the key is found once they are taken out: a page may
        # split it with markup (<wbr>, a highlighted <span>), and a space would hide it from redaction.
        joined = html.unescape(re.sub(r"<[^>]*>", "", text))
        spaced = html.unescape(re.sub(r"<[^>]*>", " ", text))
        text = redact(joined if contains_key(joined, api_key) else spaced, api_key)  # an entity may hide a pattern
    text = " ".join(text.split())
    if api_key and not any(char.isspace() for char in api_key) and contains_key(re.sub(r"\s+", "", text), api_key):
        # the key cut by line breaks or spaces (a wrapped page): its pieces cannot be told apart
        return "[the answer quotes the API key, cut by line breaks or spaces: not shown]"
    return neutralise(text, limit)


def _load_json(body: bytes) -> Any:
    """``json.loads`` that never raises anything but ``ValueError`` (deep nesting included)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def error_from_response(
    status: int, body: bytes, *, what: str, retry_after: str | None = None, api_key: str | None = None
) -> MaaSApiError:
    """Map an HTTP error answer to the matching exception, with a readable, redacted message.

    Works for the documented Google-style body ``{"error": {"code", "message", "status"}}`` and
    for any other body (HTML from a proxy, plain text, nothing).
    """
    error_status: str | None = None
    error_message: str | None = None
    body = error_body_head(body, api_key)
    try:
        payload = _load_json(body)
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            error_status = err.get("status") if isinstance(err.get("status"), str) else None
            if err.get("message") is not None:
                error_message = response_text(str(err["message"]).encode(), api_key, limit=MAX_SHOWN * 4)
            error_status = neutralise(redact(error_status, api_key), 100) if error_status else None
        elif isinstance(err, str):
            error_message = response_text(err.encode(), api_key)
    except (ValueError, AttributeError):
        pass
    if error_message is None:  # not the Google shape: show what came, shortened
        error_message = response_text(body, api_key) or None
    detail = f"HTTP {status}" + (f" {error_status}" if error_status else "")
    message = f"{what} failed: {detail}: {error_message or 'no error message in the answer'}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "error_status": error_status,
        "error_message": error_message,
        "retry_after": parse_retry_after(retry_after),
    }
    if status in (401, 403):
        hint = (
            "check the API key in the connection's 'API Key' field"
            if status == 401
            else "check that this key may use the ENDPOINT set in the connection"
        )
        return MaaSAuthError(f"{message} ({hint})", **kwargs)
    if status == 410:
        return MaaSResultsGoneError(message, **kwargs)
    if status == 404:
        return MaaSNotFoundError(message, **kwargs)
    if status == 429:
        return MaaSRateLimitError(message, **kwargs)
    if status in RETRYABLE_STATUS:
        return MaaSRetryableError(message, **kwargs)
    return MaaSApiError(message, **kwargs)


def parse_json(body: bytes, *, what: str, api_key: str | None = None) -> dict[str, Any]:
    """Parse a success body; anything but a JSON object (deep nesting included) is a clear
    :class:`MaaSApiError` quoting the redacted start of the body. The key, in any form, is taken out
    of the body first, so no value of the result (a job's error message...) can carry it on, and
    control characters in its strings are escaped (:func:`_clean_strings`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("utf-8", errors="replace")
    if api_key and contains_key(text, api_key):
        text = redact_key(text, api_key)
        body = text.encode("utf-8")
    try:
        payload = _load_json(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        snippet = response_text(error_body_head(body, api_key), api_key, limit=200)
        raise MaaSApiError(
            f"{what}: the service answered with success but the body is not a usable JSON object: {snippet!r}; "
            "check the connection's Base URL points at the MaaS API."
        )
    # A decoded string may hold an unsafe character only if the JSON text has one, an escape
    # (\n, \u001b...) or a non-ASCII character; a job's JSON usually has none (a poll stays cheap).
    if (api_key and contains_key(text, api_key)) or not text.isascii() or "\\" in text or not text.isprintable():
        _clean_strings(payload, api_key)
    return payload


def _clean(text: str, api_key: str | None) -> str:
    return escape_unsafe(redact_key(text, api_key))


def _clean_strings(payload: dict[str, Any], api_key: str | None) -> None:
    """Redact (a form escaped for JSON in the body, ``\\/``, is plain once decoded) and escape the
    unsafe characters of, in place, every string of a decoded JSON object (keys too), at any depth:
    no value the hook returns can carry the key or a control character into a log, error or XCom."""
    stack: list[Any] = [payload]
    while stack:
        item = stack.pop()
        pairs = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
        for key, value in pairs:
            if isinstance(value, str):
                item[key] = _clean(value, api_key)
            elif isinstance(value, (dict, list)):
                stack.append(value)
            if isinstance(key, str) and _clean(key, api_key) != key:
                item[_clean(key, api_key)] = item.pop(key)


def redirect_error(status: int, location: str | None, *, what: str, api_key: str | None) -> MaaSConfigError:
    """A 3xx answer: never followed (a redirect would carry the API key to another address)."""
    target = neutralise(redact(location or "", api_key), 200) or "no Location given"
    return MaaSConfigError(
        f"{what}: the server answered HTTP {status}, a redirect to {target}. Redirects are not followed "
        "(they would send the API key elsewhere): set the connection's Base URL to the address the "
        "service really answers on."
    )
