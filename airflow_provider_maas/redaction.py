"""Leak nothing, forge nothing: the API key taken out of every text, in every form a response may
echo it, and the service's text made safe to log (no control character reaches a log line).

:func:`redact` is THE redaction: the sync and async paths and the connection test all reach it
through :mod:`airflow_provider_maas.client.errors`. :func:`mask_key` registers the literal forms of
:func:`key_forms` with Airflow's secrets masker (task logs written by Airflow itself).
:func:`neutralise` escapes what could forge a log line or hide text. No Airflow import at module level.
"""

from __future__ import annotations

import base64
import html.entities
import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

#: ``Authorization: <anything>`` (a header echoed by a proxy) and ``Bearer <token>``.
_AUTH_VALUE = re.compile(r"(authorization[\s\"'<>/]*[:=][\s\"']*)[^\s\"'<>,;]+(\s+[^\s\"'<>,;]+)?", re.IGNORECASE)
_BEARER = re.compile(r"(bearer(?:\s|%20|\+)+)[^\s\"'<>,;&]+", re.IGNORECASE)
#: What replaces a secret.
HIDDEN = "***"

# Names of HTML entities by the character they stand for (``&sol;`` for ``/``, ``&amp;`` for ``&``).
_ENTITY_NAMES: dict[str, list[str]] = {}
# Legacy names without ``;`` (``&amp``, ``&lt``) are decoded by browsers and ``html.unescape`` too.
for _name, _char in html.entities.html5.items():
    if len(_char) == 1:
        _ENTITY_NAMES.setdefault(_char, []).append(_name)


def _char_forms(char: str) -> str:
    """A regular expression matching ``char`` in any of its encodings: itself (any case), percent
    encoding (either hex case, encoded again any number of times: ``%252F``; ``+`` for a space), a
    JSON escape (``\\uXXXX``, ``\\/``, ``\\"``...), an HTML entity (``&#47;``, ``&#x2F;``, ``&sol;``,
    with or without its ``;``)."""
    code = ord(char)
    forms = [re.escape(char)]
    forms.append("".join(f"%(?:25)*{byte:02x}" for byte in char.encode("utf-8")))
    if char == " ":
        forms.append(r"\+")
    if code < 0x10000:
        forms.append(rf"\\u{code:04x}")
    if code < 0x100:  # JavaScript and Python string escapes (``\x2F``), common in a page's inline script
        forms.append(rf"\\x{code:02x}")
    if char in '/"\\':
        forms.append(re.escape("\\" + char))
    forms.append(rf"&#0*{code};?")
    forms.append(rf"&#x0*{code:x};?")
    forms.extend(re.escape(f"&{name}") for name in _ENTITY_NAMES.get(char, ()))
    return "(?:" + "|".join(forms) + ")"


def _base64_cores(key: bytes) -> list[str]:
    """The parts of base64 and base64url that encode ``key`` whatever bytes come before and after it
    (three alignments; the characters that also encode a neighbour are left out)."""
    cores = []
    for shift, skip in ((0, 0), (1, 2), (2, 3)):
        data = b"\0" * shift + key
        encoded = base64.b64encode(data).decode()[: 4 * (len(data) // 3)][skip:]
        if len(encoded) >= 8:
            cores.append(encoded)
            urlsafe = encoded.replace("+", "-").replace("/", "_")
            if urlsafe != encoded:
                cores.append(urlsafe)
    return cores


_LINE_BREAK = r"(?:\r?\n)?"


@lru_cache(maxsize=32)
def key_pattern(api_key: str) -> re.Pattern[str]:
    """The key in any of the forms :func:`redact` covers (see its docstring)."""
    encoded = "".join(_char_forms(char) for char in api_key)
    # MIME base64 (an e-mail, a PEM-like dump) breaks its lines every 76 characters: a core may be cut by one.
    cores = "|".join(_LINE_BREAK.join(map(re.escape, core)) for core in _base64_cores(api_key.encode("utf-8")))
    return re.compile(f"{encoded}|(?-i:{cores})" if cores else encoded, re.IGNORECASE)


def key_forms(api_key: str) -> list[str]:
    """Literal forms of the key a response may echo, for a masker that matches exact strings
    (Airflow's): the key, lower/upper case, percent-encoded (upper and lower hex, ``+`` or ``%20``
    for spaces, ``/`` kept or encoded, encoded twice), JSON-escaped (``\\/``, ``\\uXXXX``), HTML entities, and
    the base64 and base64url cores of :func:`key_pattern`."""
    forms = [api_key, api_key.lower(), api_key.upper()]
    once = quote(api_key, safe="")
    for encoded in (once, quote(api_key), quote_plus(api_key, safe=""), quote(once, safe="")):  # last: %252F
        forms += [encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)]
    forms.append(api_key.replace("\\", "\\\\").replace('"', '\\"').replace("/", "\\/"))
    forms.append("".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in api_key))
    forms.append("".join(c if c.isalnum() else f"&#{ord(c)};" for c in api_key))
    forms.append(html.escape(api_key))
    forms += _base64_cores(api_key.encode("utf-8"))
    return list(dict.fromkeys(forms))


def redact(text: str, api_key: str | None) -> str:
    """``text`` without the API key in any form, nor any ``Authorization:`` / ``Bearer`` value.

    Forms covered: the exact key and its case variants; percent-encodings (upper and lower hex,
    ``+`` and ``%20`` for spaces, mixed with plain characters); JSON escapes (``\\/``, ``\\uXXXX``);
    HTML entities (numeric and named); base64 and base64url (in any alignment within a longer
    encoded text). Every text taken from a response goes through here BEFORE it is cut or stored
    (a key cut in half by a length limit would still leak its first half).
    """
    if api_key:
        text = key_pattern(api_key).sub(HIDDEN, text)
    text = _AUTH_VALUE.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


def redact_key(text: str, api_key: str | None) -> str:
    """``text`` without the API key in any form (but ``Bearer`` words kept: a success body's values)."""
    return key_pattern(api_key).sub(HIDDEN, text) if api_key and _may_hold(text, api_key) else text


def contains_key(text: str, api_key: str | None) -> bool:
    """Whether ``text`` holds the API key in any form :func:`redact` covers."""
    return bool(api_key) and _may_hold(text, api_key) and key_pattern(api_key).search(text) is not None  # type: ignore[arg-type]


@lru_cache(maxsize=32)
def _clues(api_key: str) -> tuple[str, tuple[str, ...]]:
    """The longest run of letters and digits of the key (lower case) and its base64 cores."""
    runs = re.findall(r"[^\W_]+", api_key.lower())
    return max(runs, key=len, default=""), tuple(_base64_cores(api_key.encode("utf-8")))


def _may_hold(text: str, api_key: str) -> bool:
    """False when ``text`` cannot hold any form of the key: it has no ``%``, ``\\``, ``&`` (every
    encoded form of a key with other characters than letters and digits has one), nor the key's
    longest alphanumeric run in any case, nor a base64 core. A job's JSON is polled thousands of
    times: this costs about a microsecond, the full pattern about fifty."""
    if "%" in text or "\\" in text or "&" in text:
        return True
    run, cores = _clues(api_key)
    if run in text.lower() or any(core in text for core in cores):
        return True
    # a base64 core cut by a line break: one of its pieces holds one of its 8-character windows
    return ("\n" in text) and any(core[i : i + 8] in text for core in cores for i in range(0, len(core) - 7, 8))


#: The keys :func:`mask_key` registered in this process (most recent last): :func:`neutralise`
#: redacts them from every text it makes safe, so a text that reaches a log, an exception or an XCom
#: without passing the hook's redaction (a results line's ``status`` copied into failure samples...)
#: cannot carry a key either.
_KNOWN_KEYS: dict[str, None] = {}
_MAX_KNOWN_KEYS = 16
#: Shorter keys (a test's "k") are not registered: every neutralised text would lose those letters.
_MIN_KNOWN_KEY = 5


def redact_known(text: str) -> str:
    """``text`` without any form of the keys :func:`mask_key` registered in this process."""
    for api_key in list(_KNOWN_KEYS):
        text = redact_key(text, api_key)
    return text


def mask_key(api_key: str) -> None:
    """Register every literal form of the key (:func:`key_forms`) with Airflow's secrets masker, in
    one ``mask_secret`` call (an iterable is masked item by item, on Airflow 3.0 to 3.3 alike), and
    with :func:`neutralise` (:func:`redact_known`)."""
    if len(api_key) >= _MIN_KNOWN_KEY:
        _KNOWN_KEYS.pop(api_key, None)
        _KNOWN_KEYS[api_key] = None
    while len(_KNOWN_KEYS) > _MAX_KNOWN_KEYS:
        del _KNOWN_KEYS[next(iter(_KNOWN_KEYS))]
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older Airflow
        return
    forms: Any = key_forms(api_key)
    mask_secret(forms)


# Neutralising the service's text ------------------------------------------------------------

#: Characters never written raw into a log line, an exception text or an XCom summary: C0 and C1
#: controls (newline, carriage return, tab, ESC: ANSI sequences), DEL, the line and paragraph
#: separators, bidirectional controls (U+202E...), zero-width and invisible characters (soft hyphen, tag
#: characters U+E0000-E007F), the byte order mark and lone surrogates (no log file can encode them).
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ud800-\udfff\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)
#: Longest neutralised text (escapes included).
MAX_NEUTRAL = 1000


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_unsafe(text: str) -> str:
    """``text`` with every :data:`UNSAFE` character escaped visibly, not cut."""
    return UNSAFE.sub(_escape, text) if UNSAFE.search(text) else text


def neutralise(text: str, limit: int = MAX_NEUTRAL) -> str:
    """``text`` with every :data:`UNSAFE` character escaped visibly (ESC as ``\\x1b``, U+202E as
    ``\\u202e``, a newline as ``\\x0a``), at most ``limit`` characters (``...`` ends a cut text).

    For logs, exception texts and XCom summaries; data files keep the service's bytes exactly.
    """
    if not isinstance(text, str):
        text = str(text)
    if _KNOWN_KEYS:  # redacted before the cut (half a key would stay readable); 16: longest encoded character
        text = redact_known(text[: limit * 2 + 16 * max(map(len, list(_KNOWN_KEYS)), default=0)])
    text = UNSAFE.sub(_escape, text[: limit * 2])
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."
