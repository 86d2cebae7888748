"""Read, summarise and re-order MaaS batch results (JSONL). Pure Python: no Airflow import.

A results line looks like ``{"request": {...}, "response": {...}, "processed_time": "...",
"status": ""}``. ``status`` is ``""`` for a request that succeeded; otherwise it describes the
failure and ``response`` is usually absent. Result lines come back in any order, so they are
matched to input lines by their ``request`` (see :func:`normalise_request`).

Everything here streams through the one line reader (:mod:`~airflow_provider_maas.batch.inputs.lines`):
one line is held in memory at a time (a 13 MB line of inline images is normal).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_maas.batch.inputs.lines import ResultsFormatError, _input_error, iter_lines
from airflow_provider_maas.redaction import neutralise

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from airflow_provider_maas.batch.answers.summary_types import TokenKey, Totals

MISSING_STATUS = "MISSING: the results contain no line for this request"
"""``status`` of a request the service returned no results line for: of the :class:`ResultRecord`
that :func:`missing_record` makes for it, and of the line (:func:`status_line`) that keeps its place
in an output written in input order."""

#: The token counts of a summary, each the total of one ``usageMetadata`` field (``_USAGE_FIELDS``).
TOKEN_KEYS: tuple[TokenKey, ...] = ("prompt_tokens", "candidates_tokens", "thoughts_tokens", "total_tokens")
_USAGE_FIELDS: dict[str, str] = dict(
    zip(TOKEN_KEYS, ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount"), strict=True)
)
_IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}
_IMAGE_EXTENSIONS["image/gif"] = "gif"


def status_line(request: Any, status: str) -> bytes:
    """The results line of a request that has no answer: ``{"request": ..., "status": status}``
    and a newline (a shard whose every job failed: the job's error; no result line: :data:`MISSING_STATUS`)."""
    return json.dumps({"request": request, "status": status}, ensure_ascii=False).encode() + b"\n"


# --------------------------------------------------------------------------- request matching


def normalise_request(request: Any) -> Any:
    """Return the canonical form of a request, used to match a result line to its input line.

    The service echoes each request with null-valued fields added (every part gets both
    ``file_data`` and ``text``, the unused one null) and may reorder keys. So: keys whose value is
    None are dropped, recursively (lists keep their length), and integral floats become ints
    (``1.0`` -> ``1``, in case numbers are echoed as floats). Key order does not matter to
    :func:`request_key`, which sorts keys.
    """
    kind = type(request)
    if kind is dict:
        return {k: v if type(v) in _LEAVES else normalise_request(v) for k, v in request.items() if v is not None}
    if kind is list:
        return [v if type(v) in _LEAVES else normalise_request(v) for v in request]
    if kind is float and request.is_integer():
        return int(request)
    return request


_LEAVES = frozenset((str, int, bool, type(None)))
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # ensure_ascii: no lone-surrogate trouble


def request_digest(request: Any) -> bytes:
    """The 16-byte digest behind :func:`request_key` (what indexes match results to requests by)."""
    canonical = _CANONICAL.encode(normalise_request(request))
    return hashlib.blake2b(canonical.encode("ascii"), digest_size=16).digest()


def request_key(request: Any) -> str:
    """Stable key (32 hex characters) of a request: equal for an input request and its echo.

    A BLAKE2b-128 digest of the canonical JSON of :func:`normalise_request` (sorted keys, no
    spaces, ASCII escapes). Pass the ``request`` object (the value of the line's ``"request"``).
    """
    return request_digest(request).hex()


# --------------------------------------------------------------------------- parsing results


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One parsed results line.

    :param line_number: 1-based line number (in the results file for :func:`iter_results`; in the
        INPUT file once matched to its request).
    :param text: Text parts of the first candidate, concatenated (thought parts excluded).
    :param usage: The integer fields of ``usageMetadata`` (``promptTokenCount``...).
    """

    line_number: int
    request: dict[str, Any] | None
    response: dict[str, Any] | None
    status: str
    text: str | None
    finish_reason: str | None
    usage: dict[str, int]
    processed_time: str | None

    @property
    def succeeded(self) -> bool:
        """True if the service answered this request without error."""
        return _succeeded(self.status, self.response)

    @property
    def error(self) -> str | None:
        """Why the request failed (its ``status``, or ``"no response"``), or None if it succeeded."""
        if self.status:
            return self.status
        return None if self.response is not None else "no response"


def _succeeded(status: str, response: dict[str, Any] | None) -> bool:
    """The one rule of success: no ``status`` (its text, :func:`_status_text`) and a ``response`` object."""
    return status == "" and response is not None


def request_and_success(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """A loaded results line's ``request`` object (None if it has none) and whether it succeeded, as
    its :class:`ResultRecord` says, without building the rest of the record (text, usage)."""
    request, response = obj.get("request"), obj.get("response")
    succeeded = _succeeded(_status_text(obj.get("status")), response if isinstance(response, dict) else None)
    return request if isinstance(request, dict) else None, succeeded


def _status_text(status: Any) -> str:
    if status is None or isinstance(status, str):
        return status or ""
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) and message else json.dumps(status, sort_keys=True)


def _first_candidate(response: dict[str, Any] | None) -> dict[str, Any] | None:
    candidates = response.get("candidates") if response else None
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def _candidate_text(candidate: dict[str, Any] | None) -> str | None:
    content = candidate.get("content") if candidate else None
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return None
    texts = [
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str) and part.get("thought") is not True
    ]
    return "".join(texts) if texts else None


#: Largest token count of one answer taken as true; a larger, negative or non-integer count (a
#: string, a float) makes the answer's usage unknown.
MAX_TOKEN_COUNT = 10**9


def _usable_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT


def _usage(response: dict[str, Any] | None) -> dict[str, int]:
    """The integer fields of ``usageMetadata``; none at all (unknown usage) when a token count
    there is negative, too large or not an integer, or ``promptTokenCount`` is missing."""
    metadata = response.get("usageMetadata", response.get("usage_metadata")) if response else None
    if not isinstance(metadata, dict) or not _usable_count(metadata.get("promptTokenCount")):
        return {}
    if any(field in metadata and not _usable_count(metadata[field]) for field in _USAGE_FIELDS.values()):
        return {}
    return {k: v for k, v in metadata.items() if isinstance(v, int) and not isinstance(v, bool)}


def load_result_object(line: bytes, label: str, line_number: int) -> dict[str, Any]:
    """One results line as a JSON object; :class:`ResultsFormatError` naming ``label`` if it is not one."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ResultsFormatError(
            f"{label}: not valid JSON ({exc}); the results file is damaged or incomplete: download it again",
            line_number=line_number,
        ) from None
    if not isinstance(obj, dict):
        raise ResultsFormatError(
            f"{label}: a JSON {type(obj).__name__}, not an object; this is not a MaaS results file",
            line_number=line_number,
        )
    return obj


def result_record(obj: dict[str, Any], line_number: int) -> ResultRecord:
    """The :class:`ResultRecord` of a results line already loaded (see :func:`load_result_object`)."""
    request = obj.get("request")
    response = obj.get("response")
    if not isinstance(response, dict):
        response = None
    candidate = _first_candidate(response)
    finish_reason = candidate.get("finishReason", candidate.get("finish_reason")) if candidate else None
    processed_time = obj.get("processed_time")
    return ResultRecord(
        line_number=line_number,
        request=request if isinstance(request, dict) else None,
        response=response,
        status=_status_text(obj.get("status")),
        text=_candidate_text(candidate),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        usage=_usage(response),
        processed_time=processed_time if isinstance(processed_time, str) else None,
    )


def missing_record(line_number: int, request: dict[str, Any] | None) -> ResultRecord:
    """The record of a request that has no results line: status :data:`MISSING_STATUS`, no response."""
    return ResultRecord(line_number, request, None, MISSING_STATUS, None, None, {}, None)


def parse_result_line(line: bytes, line_number: int) -> ResultRecord:
    """Parse one results line; raise :class:`ResultsFormatError` naming the line if it is not an object."""
    return result_record(load_result_object(line, f"results line {line_number}", line_number), line_number)


def iter_results(fileobj: IO[bytes]) -> Iterator[ResultRecord]:
    """Stream the records of a results file (binary file object); blank lines are skipped."""
    for line_number, _, line in iter_lines(fileobj):
        yield parse_result_line(line, line_number)


# --------------------------------------------------------------------------- summary


class ResultSummary:
    """Streaming totals of result records: ``add()`` each record, then ``as_dict()``.

    ``failed`` counts every record that did not succeed, missing ones included (``missing`` counts
    those alone). ``failure_samples`` keeps the first few ``(line_number, error)``.
    """

    def __init__(self, max_failure_samples: int = 5) -> None:
        self.requests = 0
        self.succeeded = 0
        self.failed = 0
        self.missing = 0
        self.tokens = dict.fromkeys(_USAGE_FIELDS, 0)
        self.usage_unknown = 0
        self.failure_samples: list[tuple[int, str]] = []
        self._max_samples = max_failure_samples

    def add(self, record: ResultRecord) -> None:
        """Count one record."""
        self.requests += 1
        if record.succeeded:
            self.succeeded += 1
        else:
            self.failed += 1
            if record.status == MISSING_STATUS:
                self.missing += 1
            if len(self.failure_samples) < self._max_samples:
                self.failure_samples.append((record.line_number, neutralise(record.error or "no response", 300)))
        usage = record.usage
        if usage and record.text and "candidatesTokenCount" not in usage:
            usage = {}  # an answer with text but no output count: its cost is unknown, not its input alone
        if usage:
            for name, usage_field in _USAGE_FIELDS.items():
                self.tokens[name] += usage.get(usage_field, 0)
        elif record.succeeded:
            self.usage_unknown += 1

    def as_dict(self) -> Totals:
        """``{"requests", "succeeded", "failed", "prompt_tokens", "candidates_tokens", "thoughts_tokens",
        "total_tokens", "cost_unknown_answers"}``: the last counts the answers without usable token
        counts (no ``usageMetadata``, a count negative or not an integer), left out of the totals."""
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "prompt_tokens": self.tokens["prompt_tokens"],
            "candidates_tokens": self.tokens["candidates_tokens"],
            "thoughts_tokens": self.tokens["thoughts_tokens"],
            "total_tokens": self.tokens["total_tokens"],
            "cost_unknown_answers": self.usage_unknown,
        }


def summarize(records: Iterable[ResultRecord]) -> Totals:
    """Totals of ``records`` as :meth:`ResultSummary.as_dict` returns them."""
    summary = ResultSummary()
    for record in records:
        summary.add(record)
    return summary.as_dict()


# --------------------------------------------------------------------------- images


def _decode_base64(data: str, label: str, line_number: int) -> bytes:
    try:  # standard alphabet, else URL-safe (protobuf JSON may use either)
        return base64.b64decode(data, altchars=b"-_" if "-" in data or "_" in data else None, validate=True)
    except (binascii.Error, ValueError):
        raise ResultsFormatError(
            f"{label} line {line_number}: image data is not valid base64; the results file is damaged: download it again",
            line_number=line_number,
        ) from None


def extract_images(
    fileobj: IO[bytes], write: Callable[[str, bytes], None], *, prefix: str = "image", label: str = "results"
) -> list[str]:
    """Decode the inline images of every response and hand each to ``write(filename, data)``.

    Looks at every ``inlineData``/``inline_data`` part with an ``image/*`` mime type in every
    candidate. Files are named ``<prefix>-<line>-<candidate>-<part>.<ext>`` (line 1-based in the
    results file, candidate and part 0-based; ext png/jpg/webp/gif, else bin). Streams line by line.

    :param label: Names the file in errors (``<label> line N: ...``).
    :return: The file names given to ``write``, in order.
    """
    if not isinstance(prefix, str) or not prefix or "/" in prefix or "\\" in prefix:
        raise _input_error(
            f"image prefix {prefix!r} must be a non-empty name without path separators, e.g. 'image' "
            "(files are written as <prefix>-<line>-<candidate>-<part>.<ext>)"
        )
    names: list[str] = []
    for line_number, _, line in iter_lines(fileobj, label):
        response = load_result_object(line, f"{label} line {line_number}", line_number).get("response")
        candidates = response.get("candidates") if isinstance(response, dict) else None
        for c_index, candidate in enumerate(candidates if isinstance(candidates, list) else ()):
            content = candidate.get("content") if isinstance(candidate, dict) else None
            parts = content.get("parts") if isinstance(content, dict) else None
            for p_index, part in enumerate(parts if isinstance(parts, list) else ()):
                inline = part.get("inlineData", part.get("inline_data")) if isinstance(part, dict) else None
                if not isinstance(inline, dict) or not isinstance(inline.get("data"), str):
                    continue
                mime = inline.get("mimeType", inline.get("mime_type"))
                if not isinstance(mime, str) or not mime.lower().startswith("image/"):
                    continue
                ext = _IMAGE_EXTENSIONS.get(mime.lower(), "bin")
                name = f"{prefix}-{line_number}-{c_index}-{p_index}.{ext}"
                write(name, _decode_base64(inline["data"], label, line_number))
                names.append(name)
    return names
