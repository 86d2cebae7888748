"""Results files of emulated batch jobs: one JSONL line per input request.

Everything here is synchronous and meant to run off the event loop (``run_in_executor``):
a results file can be large (``result_padding_bytes``), so it is written line by line and
never held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import google_crc32c

from airflow_provider_maas.emulator.objects import iso_offset_us, request_line_offsets, rfc3339_us

if TYPE_CHECKING:
    import threading


def _png_1x1() -> bytes:
    """A valid 1x1 RGB PNG (built here so no binary blob lives in the source)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\x2a\x7f\xd4")  # filter byte + one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


TINY_PNG = _png_1x1()
TINY_PNG_B64 = base64.b64encode(TINY_PNG).decode("ascii")

_FILLER_UNIT = "Lorem ipsum dolor sit amet, emulated filler text for large results. "


def filler(size: int) -> str:
    """Deterministic ASCII filler of exactly ``size`` characters (bytes)."""
    if size <= 0:
        return ""
    return (_FILLER_UNIT * (size // len(_FILLER_UNIT) + 1))[:size]


def _normalise_parts(parts: Any) -> Any:
    if not isinstance(parts, list):
        return parts
    out = []
    for part in parts:
        if isinstance(part, dict):
            norm = {"file_data": part.get("file_data"), "text": part.get("text")}
            norm.update((k, v) for k, v in part.items() if k not in norm)
            out.append(norm)
        else:
            out.append(part)
    return out


def normalise_request(request: dict[str, Any]) -> dict[str, Any]:
    """Normalise like the service: every part carries both ``file_data`` and ``text`` (unused one null)."""
    out = dict(request)
    contents = out.get("contents")
    if isinstance(contents, list):
        out["contents"] = [
            {**c, "parts": _normalise_parts(c["parts"])} if isinstance(c, dict) and "parts" in c else c
            for c in contents
        ]
    for key in ("systemInstruction", "system_instruction"):
        sysins = out.get(key)
        if isinstance(sysins, dict) and "parts" in sysins:
            out[key] = {**sysins, "parts": _normalise_parts(sysins["parts"])}
    return out


def request_texts(request: dict[str, Any]) -> list[str]:
    """The text parts of a request, in order."""
    texts: list[str] = []
    contents = request.get("contents")
    if not isinstance(contents, list):
        return texts
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list):
            for part in parts:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def _request_files(request: dict[str, Any]) -> int:
    count = 0
    for content in request.get("contents") or []:
        if isinstance(content, dict):
            for part in content.get("parts") or []:
                if isinstance(part, dict) and (part.get("file_data") or part.get("fileData")):
                    count += 1
    return count


def _max_output_tokens(request: dict[str, Any]) -> int | None:
    config = request.get("generationConfig", request.get("generation_config"))
    value = config.get("maxOutputTokens", config.get("max_output_tokens")) if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def response_schema(request: dict[str, Any]) -> dict[str, Any] | None:
    """The ``responseSchema`` (or ``responseJsonSchema``) a request asks its answer to follow, if any."""
    config = request.get("generationConfig", request.get("generation_config"))
    if not isinstance(config, dict):
        return None
    for key in ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema"):
        if isinstance(config.get(key), dict):
            return config[key]
    return None


def answer_is_invalid(request: dict[str, Any], seed: int, rate: float) -> bool:
    """Whether the emulator's ``invalid_output_rate`` fault spoils the answer to ``request``:
    decided by the request's content (and the seed), so a request sent again is spoilt again."""
    if rate <= 0:
        return False
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.blake2b(f"{seed}\0invalid\0{canonical}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def _instance(schema: Any, text: str, depth: int = 0) -> Any:
    """A value valid for a Gemini (OpenAPI-subset) or JSON schema."""
    if not isinstance(schema, dict) or depth > 16:
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    options = schema.get("anyOf") or schema.get("oneOf")
    kind = str(schema.get("type") or ("object" if "properties" in schema else "array" if "items" in schema else ""))
    if options and not kind:
        return _instance(options[0], text, depth + 1)
    kind = kind.lower()
    if kind == "object":
        return {k: _instance(v, text, depth + 1) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_instance(schema.get("items"), text, depth + 1) for _ in range(max(1, schema.get("minItems") or 1))]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return max(1.5, float(schema.get("minimum", 1.5)))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def schema_answer(request: dict[str, Any], answer: str, invalid: bool) -> str | None:
    """The JSON answer to a request that asks for a schema (every string is ``answer``), cut short
    (not JSON) when ``invalid``; None for a request without a schema."""
    schema = response_schema(request)
    if schema is None:
        return None
    text = json.dumps(_instance(schema, answer), ensure_ascii=False)
    return text[: max(1, len(text) // 2)] if invalid else text


def fake_answer(request: dict[str, Any], model: str, seed: int) -> str:
    """A deterministic answer that contains every text part of the request verbatim."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.blake2b(f"{seed}\0{canonical}".encode(), digest_size=8).hexdigest()
    asked = "\n".join(request_texts(request))
    return f"Emulated answer from {model} (MaaS emulator, ref {digest}).\n\nYou asked:\n{asked}"


@dataclass
class ResultsSpec:
    """What ``write_results`` needs to build a job's results file."""

    input_path: str
    output_path: str
    job_name: str
    job_ordinal: int
    seed: int
    failed: frozenset[int]  # 0-based input positions of the requests that fail
    shuffle: bool
    normalise: bool
    image_output: bool
    padding: int
    model: str
    start_time: float
    end_time: float
    cancel: threading.Event | None = None  # set when the emulator stops: give up early
    omit: frozenset[int] = frozenset()  # failed positions left out of the file (partial-missing)
    duplicate: int = 0  # the first lines written are written again at the end (duplicate-lines)
    invalid_output_rate: float = 0.0  # this fraction of schema answers is not JSON (answer_is_invalid)


def result_order(count: int, seed: int, job_ordinal: int, shuffle: bool) -> list[int]:
    """Input positions in output order: seeded per job, never the input order when shuffling 2+ lines."""
    order = list(range(count))
    if shuffle and count > 1:
        random.Random(f"{seed}:{job_ordinal}:order").shuffle(order)
        if order == sorted(order):
            order = order[1:] + order[:1]
    return order


def _response(request: dict[str, Any], spec: ResultsSpec, position: int, created: float, pad: str) -> dict[str, Any]:
    answer = fake_answer(request, spec.model, spec.seed)
    shaped = schema_answer(request, answer, answer_is_invalid(request, spec.seed, spec.invalid_output_rate))
    answer = answer if shaped is None else shaped
    if pad:
        answer = f"{answer}\n\n{pad}"
    digest = hashlib.blake2b(f"{spec.seed}:{spec.job_name}:{position}".encode(), digest_size=17).digest()
    number = int.from_bytes(digest[:4], "big")
    prompt_tokens = max(1, sum(len(t) for t in request_texts(request)) // 4) + 258 * _request_files(request)
    candidate_tokens = max(1, len(answer) // 4)
    thoughts = number % 512
    ceiling = _max_output_tokens(request)
    if ceiling:  # like the service: thinking and answer tokens together stay within maxOutputTokens
        thoughts = min(thoughts, ceiling // 2)
        candidate_tokens = min(candidate_tokens, ceiling - thoughts)
    avg_logprobs = -0.05 - (number % 1000) / 1000.0
    parts: list[dict[str, Any]] = [{"text": answer}]
    if spec.image_output:
        parts.append({"inlineData": {"mimeType": "image/png", "data": TINY_PNG_B64}})
    return {
        "modelVersion": spec.model,
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "score": avg_logprobs * candidate_tokens,
                "avgLogprobs": avg_logprobs,
                "finishReason": "STOP",
            }
        ],
        "createTime": rfc3339_us(created),
        "usageMetadata": {
            "candidatesTokenCount": candidate_tokens,
            "totalTokenCount": prompt_tokens + candidate_tokens + thoughts,
            "trafficType": "ON_DEMAND",
            "promptTokenCount": prompt_tokens,
            "thoughtsTokenCount": thoughts,
        },
        "responseId": base64.urlsafe_b64encode(digest).decode("ascii").rstrip("="),
    }


def failure_status(position: int) -> str:
    """The ``status`` of a failed result line (``position`` is 0-based in input order)."""
    error = {
        "code": 400,
        "message": f"Emulated failure of request {position + 1} of the input file.",
        "status": "INVALID_ARGUMENT",
    }
    return "Bad Request: " + json.dumps({"error": error})


def write_results(spec: ResultsSpec) -> tuple[int, bytes]:
    """Write the results file of a job; return its size and big-endian CRC32C digest."""
    offsets = request_line_offsets(spec.input_path)
    count = len(offsets)
    order = result_order(count, spec.seed, spec.job_ordinal, spec.shuffle)
    pad = filler(spec.padding)
    span = max(spec.end_time - spec.start_time, 0.0)
    crc = google_crc32c.Checksum()
    size = 0
    tmp = f"{spec.output_path}.part"
    repeated: list[bytes] = []
    with open(spec.input_path, "rb") as src, open(tmp, "wb") as out:
        for rank, position in enumerate(order):
            if position in spec.omit:
                continue
            if spec.cancel is not None and spec.cancel.is_set():
                raise RuntimeError("the emulator is stopping")
            src.seek(offsets[position])
            request = json.loads(src.readline())["request"]
            echoed = normalise_request(request) if spec.normalise else request
            processed = spec.start_time + span * (rank + 1) / (count + 1)
            line: dict[str, Any] = {"request": echoed}
            if position in spec.failed:
                line["processed_time"] = iso_offset_us(processed)
                line["status"] = failure_status(position)
            else:
                line["response"] = _response(request, spec, position, processed - span / (4 * count + 4), pad)
                line["processed_time"] = iso_offset_us(processed)
                line["status"] = ""
            data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            if len(repeated) < spec.duplicate:
                repeated.append(data)
            out.write(data)
            crc.update(data)
            size += len(data)
        for data in repeated:
            out.write(data)
            crc.update(data)
            size += len(data)
    os.replace(tmp, spec.output_path)
    return size, crc.digest()
