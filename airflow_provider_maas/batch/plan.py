"""What a batch would cost before anything is paid: token estimates of requests, and the dry run's plan.

Estimates are made from the request lines alone (no tokenizer, no call to the service):

- **prompt tokens**: the characters of every text part (``contents`` and ``systemInstruction``)
  divided by :data:`CHARS_PER_TOKEN`, rounded up, plus :data:`TOKENS_PER_FILE` per ``file_data`` /
  ``inlineData`` part (Gemini counts an image as 258 tokens) and ``max_cached_content_tokens`` for
  a request naming a ``cachedContent``. The **worst case** counts one token per UTF-8 byte of text
  (a tokenizer's byte fallback gives no more); other parts (``functionCall``,
  ``functionResponse``...), ``tools`` and the response schema count by the bytes of their JSON; a
  file part counts ``max_tokens_per_file_part`` (a PDF is ~258 tokens a page, video and audio are
  counted by the second: only the user knows the bound) and a ``cachedContent``
  ``max_cached_content_tokens``. Without those bounds a file part counts 258 and a cache nothing:
  no bound, so a budget cap refuses such requests (:func:`refuse_unbounded`).
- **output tokens**: at most ``generationConfig.maxOutputTokens`` (thinking tokens included, as the
  service counts them), else ``default_max_output_tokens``, times ``candidateCount``. The estimate assumes an answer as long
  as its prompt, capped there; a canary (``canary.py``) replaces it with measured tokens.
- **USD**: ``prices`` (per 1,000,000 tokens); output tokens of the worst case are priced at the
  dearer of ``candidates`` and ``thoughts``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.lines import ResultsFormatError, iter_line_batches
from airflow_provider_maas.batch.request_lines import MAX_BYTES_PER_FILE, line_too_long
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import open_source

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow_provider_maas.batch.request_lines import RequestLine
    from airflow_provider_maas.batch.settings import BatchSettings
    from airflow_provider_maas.batch.shards import ShardPlan

#: Characters per token of the prompt estimate (English text averages about 4).
CHARS_PER_TOKEN = 4
#: Tokens the estimate counts for each file part of a request (an image, as Gemini counts one).
TOKENS_PER_FILE = 258
#: ``maxOutputTokens`` assumed for a request that sets none (the output limit of Gemini 2.5 Flash).
DEFAULT_MAX_OUTPUT_TOKENS = 65_536
#: How the estimate was made, as the plan states it (:func:`basis` adds the bounds of files and caches).
BASIS = (
    f"prompt tokens: text characters / {CHARS_PER_TOKEN} (worst case: 1 token per UTF-8 byte; other parts, "
    "tools and the response schema by their JSON); output tokens: generationConfig.maxOutputTokens x "
    "candidateCount, else default_max_output_tokens (worst case), an answer as long as its prompt (estimate)"
)


def basis(max_tokens_per_file_part: int | None, max_cached_content_tokens: int | None) -> str:
    """:data:`BASIS`, with what a file part and a ``cachedContent`` counted."""
    if max_tokens_per_file_part is None:
        files = f"a file part {TOKENS_PER_FILE} (no max_tokens_per_file_part: no bound)"
    else:
        files = (
            f"a file part {min(TOKENS_PER_FILE, max_tokens_per_file_part)} "
            f"(worst case: max_tokens_per_file_part={max_tokens_per_file_part})"
        )
    if max_cached_content_tokens is None:
        cache = "a cachedContent 0 (no max_cached_content_tokens: no bound)"
    else:
        cache = f"a cachedContent max_cached_content_tokens={max_cached_content_tokens}"
    return f"{BASIS}; {files}; {cache}"


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
    cached = 1 if request.get("cachedContent") or request.get("cached_content") else 0
    per_file = TOKENS_PER_FILE if max_tokens_per_file_part is None else max_tokens_per_file_part
    cache = cached * (max_cached_content_tokens or 0)
    prompt = max(1, -(-chars // CHARS_PER_TOKEN)) + min(TOKENS_PER_FILE, per_file) * files + cache
    worst_prompt = max(1, worst) + per_file * files + cache
    return Tokens(1, prompt, worst_prompt, ceiling, min(prompt, ceiling), files, cached)


def estimate_line(line: bytes, default_max_output: int) -> Tokens:
    """:func:`estimate_request` of one request line (``{"request": {...}}``), no file or cache bound."""
    return Bounds(default_max_output).line(line)


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one request counts at most where its line does not say: the operator's
    ``default_max_output_tokens``, ``max_tokens_per_file_part`` and ``max_cached_content_tokens``
    (None: not given). The dry run and the budget estimate through it."""

    default_max_output: int = DEFAULT_MAX_OUTPUT_TOKENS
    file_part: int | None = None
    cached_content: int | None = None

    def request(self, request: Mapping[str, Any]) -> Tokens:
        return estimate_request(
            request,
            self.default_max_output,
            max_tokens_per_file_part=self.file_part,
            max_cached_content_tokens=self.cached_content,
        )

    def line(self, line: bytes) -> Tokens:
        request = json.loads(line).get("request")
        return self.request(request if isinstance(request, dict) else {})

    def unbounded(self, tokens: Tokens) -> str | None:
        return unbounded(tokens, self.file_part, self.cached_content)

    def prompt_beyond(self, request: Any, usage: Mapping[str, int]) -> int:
        """The prompt tokens an answer reports (``usageMetadata.promptTokenCount``, a cache's
        included) beyond its request's worst case (the request as the results echo it): 0 while
        the bounds hold."""
        if not isinstance(request, dict):
            return 0
        return max(0, usage.get("promptTokenCount", 0) - self.request(request).worst_prompt)


# The bounds of file parts and caches ---------------------------------------------------------
def unbounded(
    tokens: Tokens, max_tokens_per_file_part: int | None, max_cached_content_tokens: int | None
) -> str | None:
    """Why the worst case of ``tokens`` bounds nothing (file parts or a ``cachedContent``, and no
    bound given for them), or None. The one place deciding it: the check before anything is
    uploaded (:func:`refuse_unbounded`) and the budget's check of each shard use it."""
    problems = []
    if tokens.file_parts and max_tokens_per_file_part is None:
        problems.append(
            f"{tokens.file_parts} file part{'s' * (tokens.file_parts != 1)} (fileData/inlineData) and no "
            "max_tokens_per_file_part: a file counts 258 tokens per image tile or PDF page, about 263 per second "
            "of video and 32 per second of audio; set max_tokens_per_file_part to the most one file of yours counts"
        )
    if tokens.cached and max_cached_content_tokens is None:
        problems.append(
            "a cachedContent and no max_cached_content_tokens: the cache's tokens are billed with each request "
            "naming it; set max_cached_content_tokens to the size of your largest cache in tokens"
        )
    return "; ".join(problems) or None


#: Bytes a line holds if it may have a file part or a ``cachedContent`` (``\\u``: a key may be escaped).
_MARKERS = (b"fileData", b"file_data", b"inlineData", b"inline_data", b"cachedContent", b"cached_content", b"\\u")


def refuse_unbounded(
    source: Any, *, max_tokens_per_file_part: int | None, max_cached_content_tokens: int | None
) -> None:
    """With ``max_cost_usd``: refuse the first request of ``source`` whose worst case is no bound
    (:func:`unbounded`), naming its line, before anything is uploaded.

    One streamed pass; only lines holding one of :data:`_MARKERS` are parsed (whole read batches
    without one are skipped), so an input without files or caches costs a read. A line that is not
    valid JSON is left to the input's validation, which names it.

    :raises MaaSInputError: ``line N: the request has ...; ... or leave out max_cost_usd``.
    """
    if max_tokens_per_file_part is not None and max_cached_content_tokens is not None:
        return
    line_number = 0
    with open_source(source) as handle:
        batches = iter_line_batches(
            handle, max_line_bytes=MAX_BYTES_PER_FILE, too_long=line_too_long(MAX_BYTES_PER_FILE)
        )
        for lines, _ in batches:
            first = line_number
            line_number += len(lines)
            joined = b"\n".join(lines)
            if not any(marker in joined for marker in _MARKERS):
                continue
            for number, line in enumerate(lines, first + 1):
                if not any(marker in line for marker in _MARKERS):
                    continue
                try:
                    request = json.loads(line).get("request")
                except (ValueError, RecursionError, AttributeError):
                    continue
                if not isinstance(request, dict):
                    continue
                tokens = estimate_request(
                    request,
                    max_tokens_per_file_part=max_tokens_per_file_part,
                    max_cached_content_tokens=max_cached_content_tokens,
                )
                problem = unbounded(tokens, max_tokens_per_file_part, max_cached_content_tokens)
                if problem is not None:
                    raise MaaSInputError(
                        f"line {number}: the request has {problem}. With max_cost_usd the worst case of every "
                        "request must bound what it can cost (nothing was uploaded); or leave out max_cost_usd",
                        line_number=number,
                    )


def worst_case_usd(tokens: Tokens, prices: Mapping[str, float]) -> float:
    """The most ``tokens`` can cost: worst-case prompt, every output token at the dearer output price."""
    output_price = max(prices["candidates"], prices.get("thoughts", prices["candidates"]))
    return (tokens.worst_prompt * prices["prompt"] + tokens.max_output * output_price) / 1_000_000


def estimated_usd(tokens: Tokens, prices: Mapping[str, float]) -> float:
    """The likely cost of ``tokens``: the prompt estimate and the output estimate, at the candidates price."""
    return (tokens.prompt * prices["prompt"] + tokens.output * prices["candidates"]) / 1_000_000


@dataclass
class BatchPlan:
    """The dry run's answer (XCom ``plan``): what a real run would send, and what it may cost.

    ``unique_requests`` is ``requests`` less ``deduplicated`` (repeats of an identical request, sent
    once); a repeat of a request ``reuse_results`` answers counts in ``reused``.
    """

    requests: int
    unique_requests: int
    reused: int
    deduplicated: int
    to_send: int
    shards: int
    jobs: int
    estimated_prompt_tokens: int
    worst_case_prompt_tokens: int
    max_output_tokens: int
    default_max_output_tokens: int
    basis: str = BASIS
    estimated_cost_usd: float | None = None
    worst_case_cost_usd: float | None = None
    budget_usd: float | None = None
    canary_requests: int = 0
    file_parts: int = 0
    cached_content_requests: int = 0
    max_tokens_per_file_part: int | None = None
    max_cached_content_tokens: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The plan as a readable two-column table, for the task log."""
        rows = [(name.replace("_", " "), value) for name, value in self.as_dict().items() if name != "notes"]
        rows.extend(("note", note) for note in self.notes)
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"  {name:<{width}}  {_shown(value)}" for name, value in rows)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"${value:,.6f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def make_plan(
    *,
    requests: int,
    reused: int,
    deduplicated: int,
    plans: Sequence[ShardPlan],
    tokens: Tokens,
    default_max_output: int,
    prices: Mapping[str, float] | None,
    budget_usd: float | None = None,
    canary_requests: int = 0,
    max_tokens_per_file_part: int | None = None,
    max_cached_content_tokens: int | None = None,
) -> BatchPlan:
    """The plan of a batch from what the dry run counted (``tokens``: of the requests to send,
    estimated with these bounds)."""
    plan = BatchPlan(
        requests=requests,
        unique_requests=requests - deduplicated,
        reused=reused,
        deduplicated=deduplicated,
        to_send=tokens.requests,
        shards=len(plans),
        jobs=len(plans),
        estimated_prompt_tokens=tokens.prompt,
        worst_case_prompt_tokens=tokens.worst_prompt,
        max_output_tokens=tokens.max_output,
        default_max_output_tokens=default_max_output,
        budget_usd=budget_usd,
        canary_requests=min(canary_requests, plans[0].requests) if plans else 0,  # shard 0 (canary.split_first)
        file_parts=tokens.file_parts,
        cached_content_requests=tokens.cached,
        max_tokens_per_file_part=max_tokens_per_file_part,
        max_cached_content_tokens=max_cached_content_tokens,
        basis=basis(max_tokens_per_file_part, max_cached_content_tokens),
    )
    if (problem := unbounded(tokens, max_tokens_per_file_part, max_cached_content_tokens)) is not None:
        plan.notes.append(f"the worst case is no bound: the requests have {problem}")
    if prices is not None:
        plan.estimated_cost_usd = round(estimated_usd(tokens, prices), 9)
        plan.worst_case_cost_usd = round(worst_case_usd(tokens, prices), 9)
        if budget_usd is not None and plan.worst_case_cost_usd > budget_usd:
            plan.notes.append(
                f"the worst case passes max_cost_usd={budget_usd}: a real run stops creating jobs once their "
                "reservations would pass it (set generationConfig.maxOutputTokens to lower the worst case)"
            )
    else:
        plan.notes.append("no prices given: no cost estimate")
    return plan


def dry_run(settings: BatchSettings, *, bounds: Bounds | None = None, budget_usd: float | None = None) -> BatchPlan:
    """Everything a run does before paying, nothing paid: the input validated, matched against
    ``reuse_results``, deduplicated, estimated (with ``bounds``) and planned into shards (nothing
    uploaded). Each request to send is estimated from the object its validation parsed."""
    from airflow_provider_maas.batch.round_files import answers_opener
    from airflow_provider_maas.batch.rounds import write_requests_to_send

    bounds = bounds or Bounds()
    tokens = Tokens()
    estimate, add = bounds.request, tokens.add

    def sent(line: RequestLine) -> None:
        add(estimate(line.request))

    reuse = settings.reuse_paths()
    with tempfile.TemporaryDirectory(prefix="maas-plan-") as folder:
        path = os.path.join(folder, "to-send.jsonl")
        with open(path, "wb") as out, open_source(settings.source) as source:
            try:
                coverage = write_requests_to_send(
                    source,
                    out,
                    reuse=reuse,
                    opener=answers_opener(settings),
                    deduplicate=settings.deduplicate,
                    on_send=sent,
                )
            except ResultsFormatError as err:
                raise MaaSInputError(f"reuse_results: {err}") from None
        plans: list[ShardPlan] = []
        if coverage.to_send:
            with open(path, "rb") as handle:  # written from validated lines: not parsed again
                plans = settings.plan_first_round(handle, validated=True)
    return make_plan(
        requests=coverage.requests,
        reused=coverage.reused,
        deduplicated=coverage.deduplicated,
        plans=plans,
        tokens=tokens,
        default_max_output=bounds.default_max_output,
        prices=settings.prices,
        budget_usd=budget_usd,
        canary_requests=settings.canary_requests,
        max_tokens_per_file_part=bounds.file_part,
        max_cached_content_tokens=bounds.cached_content,
    )
