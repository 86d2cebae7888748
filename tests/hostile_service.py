"""A service that echoes the API key in every form a front may use, or writes forged log lines
(issue 20): the independent stub of ``service_stub`` with its answers replaced.

:data:`KEY` holds letters, ``/``, ``+``, ``=``, a space and ``&``, so that each encoding differs
from the key. :func:`key_forms` lists the forms the tests search for; :func:`hostile` serves a
:class:`Hostile` whose ``mode`` says what every call answers.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

from tests.service_stub import Answer, StubService, json_answer, stub_service

KEY = "sk-Ab/Cd+Ef==Gh Ij&KlmnOP42~~~?"
#: A job error message that forges a log line, clears a terminal, flips text and splits lines.
FORGED = (
    "quota exhausted\n2026-12-06T03:00:00.000000Z [info     ] FAKE: all 10 requests succeeded"
    "\x1b[2J\x1b[31mred\x1b[0m \u202egnp.exe\u202c line\u2028separator\rCARRIAGE\u2029para\x85nel\x00nul"
)
#: What no log line, exception text or XCom may hold once :data:`FORGED` went through the provider.
RAW_CONTROLS = ("\x1b", "\u202e", "\u202c", "\u2028", "\u2029", "\r", "\x85", "\x00")


def key_forms(key: str = KEY) -> dict[str, str]:
    """Every form of ``key`` the provider must redact, by name."""
    percent = quote(key, safe="")
    return {
        "exact": key,
        "lowercase": key.lower(),
        "uppercase": key.upper(),
        "percent": percent,
        "percent-lower-hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), percent),
        "percent-plus": quote_plus(key, safe=""),
        "percent-mixed": quote(key, safe="/"),
        "json-slash": key.replace("/", "\\/"),
        "json-unicode": "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in key),
        "html-decimal": "".join(c if c.isalnum() else f"&#{ord(c)};" for c in key),
        "html-hex": "".join(f"&#x{ord(c):x};" for c in key),
        "html-named": key.replace("&", "&amp;").replace("/", "&sol;").replace("+", "&plus;"),
        "base64": base64.b64encode(key.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(key.encode()).decode(),
        "base64-basic-auth": base64.b64encode(f"user:{key}".encode()).decode(),
        "bearer-percent": "Bearer%20" + percent,
    }


def echo_text(key: str = KEY) -> str:
    """Every form, one after the other (what a misconfigured front echoes)."""
    return " | ".join(f"{name}={form}" for name, form in key_forms(key).items())


@dataclass
class Hostile(StubService):
    """:class:`StubService` whose answers echo the key or forge log lines.

    ``mode``: ``"working"`` (the stub's own answers), ``"errors"`` (each call fails: upload 404,
    create 400, a job 200 that is not JSON, results metadata 401, results 500), ``"echo"`` (success
    bodies that carry every form of the key: in a job's display name, state and error message),
    ``"forged"`` (jobs end FAILED with :data:`FORGED` as message, state text and display name; an
    upload answers it as its size and name).
    """

    mode: str = "working"
    calls: list[str] = field(default_factory=list)

    def answer(self, method: str, target: str, body: bytes) -> Answer:
        self.calls.append(f"{method} {target}")
        if self.mode == "errors":
            return self._error(method, target)
        answer = super().answer(method, target, body)
        is_job = "/batchPredictionJobs/" in target and not target.split("?")[0].endswith("/content")
        if self.mode in ("echo", "forged") and method == "GET" and is_job:
            return self._job(target)
        if self.mode == "forged" and method == "POST" and target.split("?")[0].endswith("/files"):
            return json_answer({**json.loads(answer[2]), "size": FORGED, "name": FORGED})  # quoted in the mismatch
        if self.mode == "echo" and answer[0] == 200 and answer[2].startswith(b"{"):
            payload = json.loads(answer[2])
            payload["echo"] = echo_text()
            return json_answer(payload)
        return answer

    def _job(self, target: str) -> Answer:
        name = target.split("?")[0].rsplit("/", 1)[-1]
        text = echo_text() if self.mode == "echo" else FORGED
        return json_answer(
            {
                "name": name,
                "displayName": text,
                "state": "JOB_STATE_FAILED",
                "error": {"code": 8, "message": text, "status": text},
                "model": text,
            }
        )

    def _error(self, method: str, target: str) -> Answer:
        text = echo_text()
        google = json.dumps({"error": {"code": 0, "message": f"key {text}", "status": f"BAD {text}"}}).encode()
        path = target.split("?")[0]
        if method == "POST" and path.endswith("/files"):
            return 404, {"Content-Type": "application/json"}, google
        if method == "POST":
            return 400, {"Content-Type": "application/json"}, google
        if path.endswith("/content") and "alt=media" in target:
            return 500, {"Content-Type": "text/plain"}, f"upstream said {text}".encode()
        if path.endswith("/content"):
            return 401, {"Content-Type": "text/html"}, f"<p>bad key {text}</p>".encode()
        return 200, {"Content-Type": "text/plain"}, f"not json {text}".encode()


@contextmanager
def hostile(mode: str = "working", **kwargs: Any) -> Iterator[Hostile]:
    """Serve a :class:`Hostile` on loopback (``.base_url``); its ``mode`` may change while it runs."""
    with stub_service(**kwargs) as stub:
        service = Hostile(mode=mode, base_url=stub.base_url, **kwargs)
        stub.answer = service.answer  # type: ignore[method-assign]
        yield service
