"""Token estimates of one request, and what tokens cost: the pure arithmetic of every estimate and worst case.

Estimates are made from the request alone (no tokenizer, no call to the service):

- **prompt tokens**: the characters of every text part (``contents`` and ``systemInstruction``)
  divided by :data:`CHARS_PER_TOKEN`, rounded up, plus :data:`TOKENS_PER_FILE` per ``file_data`` /
  ``inlineData`` part (Gemini counts an image as 258 tokens) and ``max_cached_content_tokens`` for
  a request naming a ``cachedContent``. The **worst case** counts one token per UTF-8 byte of text
  (a tokenizer's byte fallback gives no more); other parts (``functionCall``,
  ``functionResponse``...), ``tools`` and the response schema count by the bytes of their JSON; a
  file part counts ``max_tokens_per_file_part`` (a PDF is ~258 tokens a page, video and audio are
  counted by the second: only the user knows the bound) and a ``cachedContent``
  ``max_cached_content_tokens``. Without those bounds a file part counts 258 and a cache nothing:
  no bound, so a budget cap refuses such requests
  (:func:`~airflow_provider_maas.batch.cost.bounds.refuse_unbounded`).
- **output tokens**: at most ``generationConfig.maxOutputTokens`` (thinking tokens included, as the
  service counts them), else ``default_max_output_tokens``, times ``candidateCount``. The estimate assumes an answer as long
  as its prompt, capped there; a canary (``canary.py``) replaces it with measured tokens.
- **USD**: ``prices`` (per 1,000,000 tokens); output tokens of the worst case are priced at the
  dearer of ``candidates`` and ``thoughts``.

The operator's bounds applied to request lines, and the check that a worst case bounds anything:
``bounds.py``; the dry run's plan: ``dry_run.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# ``maxOutputTokens`` assumed for a request that sets none: defined with the prices (imported where the
# DAG is parsed, this module is not), still importable from here
from airflow_provider_maas.batch.cost.prices import DEFAULT_MAX_OUTPUT_TOKENS

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Characters per token of the prompt estimate (English text averages about 4).
CHARS_PER_TOKEN = 4
#: Tokens the estimate counts for each file part of a request (an image, as Gemini counts one).
TOKENS_PER_FILE = 258


@dataclass(slots=True)
class Tokens:
    """Token estimates of some requests (summed); ``file_parts`` and ``cached``: the file parts
    and the requests naming a ``cachedContent`` among them (what the bounds of issue 22 count)."""

    requests: int = 0
    prompt: int = 0
    worst_prompt: int = 0
    max_output: int = 0
    output: int = 0
    file_parts: int = 0
    cached: int = 0

    def add(self, other: Tokens) -> None:
        self.requests += other.requests
        self.prompt += other.prompt
        self.worst_prompt += other.worst_prompt
        self.max_output += other.max_output
        self.output += other.output
        self.file_parts += other.file_parts
        self.cached += other.cached


def _parts(request: Mapping[str, Any]) -> list[Any]:
    parts: list[Any] = []
    for content in request.get("contents") or []:
        if isinstance(content, dict) and isinstance(content.get("parts"), list):
            parts.extend(content["parts"])
    for key in ("systemInstruction", "system_instruction"):
        instruction = request.get(key)
        if isinstance(instruction, dict):  # not checked by the input's validation: one part may be an object
            given = instruction.get("parts")
            parts.extend(given if isinstance(given, list) else [given])
    return parts


def _nested_files(value: Any) -> int:
    """File parts inside another part (``functionResponse.parts``...): counted as file parts too."""
    if isinstance(value, list):
        return sum(_nested_files(item) for item in value)
    if not isinstance(value, dict):
        return 0
    own = 1 if any(value.get(key) for key in _FILE_KEYS) else 0
    return own + sum(_nested_files(item) for key, item in value.items() if key not in _FILE_KEYS)


#: Keys of ``generationConfig`` holding a response schema.
_SCHEMA_KEYS = ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema")
#: Keys of a part holding a file (counted ``max_tokens_per_file_part`` each in the worst case).
_FILE_KEYS = ("file_data", "fileData", "inlineData", "inline_data")
#: Keys of a request naming a context cache: its tokens are billed with the prompt.
_CACHE_KEYS = ("cachedContent", "cached_content")
#: Keys of a request counted by the bytes of their JSON (tool declarations).
_TOOL_KEYS = ("tools", "toolConfig", "tool_config")


def _count(value: Any) -> int | None:
    """A positive integer as protobuf JSON takes one (5000, 5000.0, "5000"), else None."""
    if type(value) is int:  # the usual case first
        return value if value > 0 else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isascii() and value.isdigit() else None
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _either(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    """``mapping[camel]``, else ``mapping[snake]``: the camelCase spelling wins when both are set; a
    null is not set (the service drops nulls, as ``results.normalise_request`` does)."""
    value = mapping.get(camel)
    return value if value is not None else mapping.get(snake)


def _config(request: Mapping[str, Any]) -> Any:
    """``generationConfig`` (either spelling, :func:`_either`)."""
    return _either(request, "generationConfig", "generation_config")


def _first_count(config: Mapping[str, Any], camel: str, snake: str) -> int | None:
    return _count(_either(config, camel, snake))


def max_output_tokens(request: Mapping[str, Any], default: int) -> int:
    """``generationConfig.maxOutputTokens`` of ``request`` (either spelling; thinking tokens count in
    it), else ``default`` or the request's ``thinkingConfig.thinkingBudget`` if larger (the request
    itself allows that many thinking tokens, billed as output)."""
    config = _config(request)
    if not isinstance(config, dict):
        return default
    ceiling = _first_count(config, "maxOutputTokens", "max_output_tokens")
    if ceiling:
        return ceiling
    thinking = _either(config, "thinkingConfig", "thinking_config")
    budget = _first_count(thinking, "thinkingBudget", "thinking_budget") if isinstance(thinking, dict) else None
    return max(default, budget or 0)


def candidate_count(request: Mapping[str, Any]) -> int:
    """``generationConfig.candidateCount`` (either spelling): each candidate is an answer, all billed."""
    config = _config(request)
    return (_first_count(config, "candidateCount", "candidate_count") if isinstance(config, dict) else None) or 1


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def estimate_request(
    request: Mapping[str, Any],
    default_max_output: int = DEFAULT_MAX_OUTPUT_TOKENS,
    *,
    max_tokens_per_file_part: int | None = None,
    max_cached_content_tokens: int | None = None,
) -> Tokens:
    """The token estimates of one request (see the module docstring). Called once per request of
    a dry run: kept lean (a text-only part costs two lookups)."""
    chars = files = worst = 0
    for part in _parts(request):
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            chars += len(text)
            # byte fallback: a token per byte at most
            worst += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if len(part) == 1:
                continue  # the usual part: its text only
        for key in _FILE_KEYS:
            if part.get(key):
                files += 1
                break
        others = {key: value for key, value in part.items() if key != "text" and key not in _FILE_KEYS}
        if others:  # functionCall, functionResponse, executableCode...: prompt tokens too
            size = _json_bytes(others)
            chars, worst = chars + size, worst + size
            files += _nested_files(others)  # a functionResponse's own parts (fileData, inlineData)
    config = _config(request)
    ceiling = default_max_output
    if isinstance(config, dict):  # the request's own ceiling (or thinking budget) per candidate
        ceiling = max_output_tokens(request, default_max_output) * candidate_count(request)
        for key in _SCHEMA_KEYS:  # the response schema counts toward the input tokens
            if value := config.get(key):
                size = _json_bytes(value)
                chars, worst = chars + size, worst + size
    for key in _TOOL_KEYS:  # so do tool declarations
        if value := request.get(key):
            size = _json_bytes(value)
            chars, worst = chars + size, worst + size
    cached = 1 if any(request.get(key) for key in _CACHE_KEYS) else 0
    per_file = TOKENS_PER_FILE if max_tokens_per_file_part is None else max_tokens_per_file_part
    cache = cached * (max_cached_content_tokens or 0)
    prompt = max(1, -(-chars // CHARS_PER_TOKEN)) + min(TOKENS_PER_FILE, per_file) * files + cache
    worst_prompt = max(1, worst) + per_file * files + cache
    return Tokens(1, prompt, worst_prompt, ceiling, min(prompt, ceiling), files, cached)


def worst_case_usd(tokens: Tokens, prices: Mapping[str, float]) -> float:
    """The most ``tokens`` can cost: worst-case prompt, every output token at the dearer output price."""
    output_price = max(prices["candidates"], prices.get("thoughts", prices["candidates"]))
    return (tokens.worst_prompt * prices["prompt"] + tokens.max_output * output_price) / 1_000_000


def estimated_usd(tokens: Tokens, prices: Mapping[str, float]) -> float:
    """The likely cost of ``tokens``: the prompt estimate and the output estimate, at the candidates price."""
    return (tokens.prompt * prices["prompt"] + tokens.output * prices["candidates"]) / 1_000_000
