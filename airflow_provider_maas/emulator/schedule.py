"""Deterministic fault schedule of the emulator: "the next N calls of kind K answer with fault F".

A schedule entry is written ``KIND:N:FAULT`` or ``KIND:N:FAULT=ARG`` (``N`` may be ``*``: every
call from now on). Entries of one kind are used in the order they were added: a call of kind K
takes the first entry for K that has calls left. A call refused for a wrong key or an unknown
endpoint takes none. Scheduled faults come before the rate-based ones (``rate_*``), which apply
only to calls no entry took.

Kinds: ``upload``, ``create``, ``get`` (a job), ``content`` (results, ``alt=media``),
``metadata`` (results, ``alt=json``).

Faults that answer instead of the call, which is NOT carried out (any kind):

    429              429 RESOURCE_EXHAUSTED with Retry-After (``retry_after`` seconds)
    500, 503         Google-style JSON error (503 with Retry-After); ``503=html`` or
                     ``500=text`` answer a gateway's HTML or plain-text page instead
    reset            the connection is closed without an answer
    401, 404         Google-style UNAUTHENTICATED / NOT_FOUND
    redirect-307     307 to another URL of the emulator (``/_emulator/redirect-target``)
    echo-headers     200 text/html page echoing every request header (Authorization included),
                     as a misconfigured proxy does; ``echo-headers=502`` answers that status
    deep-json        200 application/json nested 100,000 levels deep
    nonjson-200      200 text/html page

A fault that delays the call (any kind):

    slow[=SECONDS]   the answer starts after ``slow_seconds`` (or SECONDS), e.g. past the
                     client's timeout; the call is carried out only if the client still waits

Faults of job creation that DO create the job (``create`` only):

    lost-500, lost-503   the job is created, the answer is a 500 / 503
    lost-reset           the job is created, the connection is dropped
    lost-timeout         the job is created, the answer comes after ``slow_seconds``
                         (``lost-timeout=SECONDS`` to choose), past the client's timeout
    lost-nonjson         the job is created, the answer is 200 with an HTML body

Faults of the job's results (``create``: they shape the job this call creates):

    partial-missing[=K]  the job ends PARTIALLY_SUCCEEDED; completionStats counts K failed
                         requests (default a third, at least 1: the last K in input order) that
                         the results file does not hold at all
    duplicate-lines[=K]  the results file repeats its first K lines (default 2) at its end
    fail-requests=SEL    the selected requests fail (non-empty ``status``) the first time the
                         emulator runs them, and succeed in any later job; SEL is
                         ``text:SUBSTRING`` (requests whose JSON line contains it) or
                         ``index:1,3`` (1-based lines of the uploaded file)

and ``results-gone`` (``content``/``metadata``): 410, as after the retention period.

Faults of transfers (the call is carried out): ``wrong-md5`` (``upload``: acknowledged with a
wrong md5Hash), ``truncate`` and ``corrupt`` (``content``: the download is cut short, or has a
few bytes flipped).

Set it with ``EmulatorConfig(faults=["create:1:lost-500"])``, ``emulator.schedule(...)`` on a
running emulator, ``POST /_emulator/faults`` (``{"faults": ["create:1:lost-500"]}``), or the CLI
(``maas-emulator --fault create:1:lost-500``, repeatable).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

KINDS = ("upload", "create", "get", "content", "metadata")

#: Faults that answer instead of the call (any kind).
PLAIN_FAULTS = frozenset(
    {"429", "500", "503", "reset", "401", "404", "redirect-307", "echo-headers", "deep-json", "nonjson-200"}
)
#: Faults of job creation that create the job and then spoil the answer.
LOST_FAULTS = frozenset({"lost-500", "lost-503", "lost-reset", "lost-timeout", "lost-nonjson"})
#: Faults that shape the results of the job a create call makes.
JOB_FAULTS = frozenset({"partial-missing", "duplicate-lines", "fail-requests"})
RESULTS_GONE = "results-gone"
#: The fault that delays a call (any kind), carried out only if the client still waits.
SLOW = "slow"

_ALLOWED: dict[str, frozenset[str]] = {
    "upload": PLAIN_FAULTS | {SLOW, "wrong-md5"},
    "create": PLAIN_FAULTS | {SLOW} | LOST_FAULTS | JOB_FAULTS,
    "get": PLAIN_FAULTS | {SLOW},
    "content": PLAIN_FAULTS | {SLOW, RESULTS_GONE, "truncate", "corrupt"},
    "metadata": PLAIN_FAULTS | {SLOW, RESULTS_GONE},
}
ERROR_BODIES = ("json", "html", "text")
_NEEDS_ARG = frozenset({"fail-requests"})
_INT_ARG = frozenset({"partial-missing", "duplicate-lines", "echo-headers"})
_FLOAT_ARG = frozenset({"lost-timeout", SLOW})
UNLIMITED = -1


@dataclass(frozen=True)
class ScheduledFault:
    """One entry: the next ``count`` calls of ``kind`` answer with ``fault`` (``count`` -1: all)."""

    kind: str
    count: int
    fault: str
    arg: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown call kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.fault not in _ALLOWED[self.kind]:
            raise ValueError(
                f"fault {self.fault!r} does not apply to {self.kind!r} calls; "
                f"use one of {', '.join(sorted(_ALLOWED[self.kind]))}"
            )
        if not isinstance(self.count, int) or (self.count < 1 and self.count != UNLIMITED):
            raise ValueError(f"the number of calls must be a positive integer or '*', not {self.count!r}")
        if self.fault in _NEEDS_ARG and not self.arg:
            raise ValueError(f"fault {self.fault!r} needs an argument, e.g. {self.fault}=text:SUBSTRING")
        if self.arg is not None:
            if self.fault == "echo-headers":
                if not (self.arg.isdigit() and 200 <= int(self.arg) <= 599):
                    raise ValueError(f"the argument of 'echo-headers' must be an HTTP status 200-599, not {self.arg!r}")
            elif self.fault in _INT_ARG:
                if not self.arg.isdigit() or int(self.arg) < 1:
                    raise ValueError(f"the argument of {self.fault!r} must be a positive integer, not {self.arg!r}")
            elif self.fault in _FLOAT_ARG:
                try:
                    ok = 0 <= float(self.arg) < math.inf
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(f"the argument of {self.fault!r} must be seconds (finite, >= 0), not {self.arg!r}")
            elif self.fault == "fail-requests":
                request_selector(self.arg)  # validates
            elif self.fault in ("500", "503"):
                if self.arg not in ERROR_BODIES:
                    raise ValueError(
                        f"the body of {self.fault!r} is one of {', '.join(ERROR_BODIES)}, not {self.arg!r}"
                    )
            else:
                raise ValueError(f"fault {self.fault!r} takes no argument")

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | ScheduledFault) -> ScheduledFault:
        """From ``KIND:N:FAULT[=ARG]``, a dict ``{"kind", "count", "fault", "arg"}`` or an entry."""
        if isinstance(spec, ScheduledFault):
            return spec
        if isinstance(spec, dict):
            count = spec.get("count", 1)
            return cls(
                kind=str(spec.get("kind")),
                count=UNLIMITED if count == "*" else count,
                fault=str(spec.get("fault")),
                arg=None if spec.get("arg") is None else str(spec["arg"]),
            )
        if not isinstance(spec, str):
            raise ValueError(f"a fault must be written KIND:N:FAULT, not {spec!r}")
        parts = spec.strip().split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"a fault must be written KIND:N:FAULT[=ARG] (e.g. create:1:lost-500), not {spec!r}")
        kind, count_text, fault = parts
        if count_text == "*":
            count = UNLIMITED
        elif count_text.isdigit():
            count = int(count_text)
        else:
            raise ValueError(f"in {spec!r}: N must be a positive integer or '*', not {count_text!r}")
        name, sep, arg = fault.partition("=")
        return cls(kind=kind, count=count, fault=name, arg=arg if sep else None)

    def __str__(self) -> str:
        count = "*" if self.count == UNLIMITED else str(self.count)
        return f"{self.kind}:{count}:{self.fault}" + (f"={self.arg}" if self.arg is not None else "")


def request_selector(arg: str) -> tuple[str, Any]:
    """``text:SUBSTRING`` -> ("text", str); ``index:1,3`` -> ("index", frozenset of 0-based lines)."""
    how, _, value = arg.partition(":")
    if how == "text" and value:
        return "text", value
    if how == "index":
        try:
            positions = frozenset(int(v) - 1 for v in value.split(",") if v.strip())
        except ValueError:
            positions = frozenset({-1})
        if positions and min(positions) >= 0:
            return "index", positions
    raise ValueError(f"select requests with text:SUBSTRING or index:1,3 (1-based lines), not {arg!r}")


def request_digests(path: str) -> Iterator[tuple[str, str]]:
    """(digest of the request, raw line) for each line of an uploaded file, in order."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                request = json.loads(line).get("request")
                canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
                yield hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest(), line


class FaultSchedule:
    """The live schedule (thread-safe: tests add entries while the server thread takes them)."""

    def __init__(self, entries: tuple[ScheduledFault, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._entries: list[list[Any]] = []  # [entry, calls left]
        self.add(*entries)

    def add(self, *specs: str | dict[str, Any] | ScheduledFault) -> list[ScheduledFault]:
        parsed = [ScheduledFault.parse(spec) for spec in specs]
        with self._lock:
            self._entries.extend([entry, entry.count] for entry in parsed)
        return parsed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def take(self, kind: str) -> ScheduledFault | None:
        """The fault for this call of ``kind`` (one call used up), or None."""
        with self._lock:
            for slot in self._entries:
                entry, left = slot
                if entry.kind != kind:
                    continue
                if left != UNLIMITED:
                    slot[1] = left - 1
                    if slot[1] == 0:
                        self._entries.remove(slot)
                return entry  # type: ignore[no-any-return]
        return None

    def pending(self) -> list[str]:
        """What is left, e.g. ``["create:1:lost-500"]``."""
        with self._lock:
            return [str(ScheduledFault(e.kind, left, e.fault, e.arg)) for e, left in self._entries]
