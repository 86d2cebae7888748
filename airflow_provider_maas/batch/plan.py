"""What a batch would cost before anything is paid: token estimates of requests, and the dry run's plan.

Estimates are made from the request lines alone (no tokenizer, no call to the service):

- **prompt tokens**: the characters of every text part (``contents`` and ``systemInstruction``)
  divided by :data:`CHARS_PER_TOKEN`, rounded up, plus :data:`TOKENS_PER_FILE` per ``file_data`` /
  ``inlineData`` part (Gemini counts an image as 258 tokens). The **worst case** counts one token
  per UTF-8 byte of text (a tokenizer's byte fallback gives no more); other parts (``functionCall``,
  ``functionResponse``...), ``tools`` and the response schema count by the bytes of their JSON.
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
from typing import IO, TYPE_CHECKING, Any, cast

from airflow_provider_maas.batch.lines import ResultsFormatError
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import open_source

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow_provider_maas.batch.settings import BatchSettings
    from airflow_provider_maas.batch.shards import ShardPlan

#: Characters per token of the prompt estimate (English text averages about 4).
CHARS_PER_TOKEN = 4
#: Tokens counted for each file part of a request (an image, as Gemini counts one).
TOKENS_PER_FILE = 258
#: ``maxOutputTokens`` assumed for a request that sets none (the output limit of Gemini 2.5 Flash).
DEFAULT_MAX_OUTPUT_TOKENS = 65_536
#: How the estimate was made, as the plan states it.
BASIS = (
    f"prompt tokens: text characters / {CHARS_PER_TOKEN} (worst case: 1 token per UTF-8 byte; other parts, "
    f"tools and the response schema by their JSON) + {TOKENS_PER_FILE} per file part; output tokens: "
    "generationConfig.maxOutputTokens x candidateCount, else default_max_output_tokens (worst case), an answer "
    "as long as its prompt (estimate)"
)


@dataclass(slots=True)
class Tokens:
    """Token estimates of some requests (summed)."""

    requests: int = 0
    prompt: int = 0
    worst_prompt: int = 0
    max_output: int = 0
    output: int = 0

    def add(self, other: Tokens) -> None:
        self.requests += other.requests
        self.prompt += other.prompt
        self.worst_prompt += other.worst_prompt
        self.max_output += other.max_output
        self.output += other.output


def _parts(request: Mapping[str, Any]) -> list[Any]:
    parts: list[Any] = []
    for content in request.get("contents") or []:
        if isinstance(content, dict) and isinstance(content.get("parts"), list):
            parts.extend(content["parts"])
    for key in ("systemInstruction", "system_instruction"):
        instruction = request.get(key)
        if isinstance(instruction, dict) and isinstance(instruction.get("parts"), list):
            parts.extend(instruction["parts"])
    return parts


#: Keys of ``generationConfig`` holding a response schema.
_SCHEMA_KEYS = ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema")
#: Keys of a part holding a file (counted :data:`TOKENS_PER_FILE` each).
_FILE_KEYS = ("file_data", "fileData", "inlineData", "inline_data")


def _count(value: Any) -> int | None:
    """A positive integer as protobuf JSON takes one (5000, 5000.0, "5000"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isascii() and value.isdigit() else None
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _config_count(request: Mapping[str, Any], *names: str) -> int | None:
    config = request.get("generationConfig", request.get("generation_config"))
    if not isinstance(config, dict):
        return None
    return _count(next((config[name] for name in names if name in config), None))


def max_output_tokens(request: Mapping[str, Any], default: int) -> int:
    """``generationConfig.maxOutputTokens`` of ``request`` (either spelling), else ``default``."""
    return _config_count(request, "maxOutputTokens", "max_output_tokens") or default


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def candidate_count(request: Mapping[str, Any]) -> int:
    """``generationConfig.candidateCount`` (either spelling): each candidate is an answer, all billed."""
    return _config_count(request, "candidateCount", "candidate_count") or 1


def estimate_request(request: Mapping[str, Any], default_max_output: int = DEFAULT_MAX_OUTPUT_TOKENS) -> Tokens:
    """The token estimates of one request (see the module docstring)."""
    chars = files = worst = 0
    for part in _parts(request):
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            chars += len(part["text"])
            worst += len(part["text"].encode("utf-8", "surrogatepass"))  # byte fallback: a token per byte at most
        if any(part.get(key) for key in _FILE_KEYS):
            files += 1
        others = {key: value for key, value in part.items() if key != "text" and key not in _FILE_KEYS}
        if others:  # functionCall, functionResponse, executableCode...: prompt tokens too
            size = _json_bytes(others)
            chars, worst = chars + size, worst + size
    config = request.get("generationConfig", request.get("generation_config"))
    schemas = [config.get(key) for key in _SCHEMA_KEYS] if isinstance(config, dict) else []
    for value in [*(request.get(key) for key in ("tools", "toolConfig", "tool_config")), *schemas]:
        if value:  # tool declarations and the response schema count toward the input tokens
            size = _json_bytes(value)
            chars, worst = chars + size, worst + size
    prompt = max(1, math.ceil(chars / CHARS_PER_TOKEN)) + TOKENS_PER_FILE * files
    ceiling = max_output_tokens(request, default_max_output) * candidate_count(request)
    return Tokens(1, prompt, max(1, worst) + TOKENS_PER_FILE * files, ceiling, min(prompt, ceiling))


def estimate_line(line: bytes, default_max_output: int) -> Tokens:
    """:func:`estimate_request` of one request line (``{"request": {...}}``)."""
    request = json.loads(line).get("request")
    return estimate_request(request if isinstance(request, dict) else {}, default_max_output)


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
) -> BatchPlan:
    """The plan of a batch from what the dry run counted (``tokens``: of the requests to send)."""
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
    )
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


class _Estimating:
    """A binary writer that also estimates each request line written to it (one line per write)."""

    def __init__(self, out: IO[bytes], default_max_output: int) -> None:
        self.out = out
        self.default_max_output = default_max_output
        self.tokens = Tokens()

    def write(self, line: bytes) -> int:
        self.tokens.add(estimate_line(line, self.default_max_output))
        return self.out.write(line)


def dry_run(
    settings: BatchSettings,
    *,
    default_max_output: int = DEFAULT_MAX_OUTPUT_TOKENS,
    budget_usd: float | None = None,
) -> BatchPlan:
    """Everything a run does before paying, nothing paid: the input validated, matched against
    ``reuse_results``, deduplicated, estimated and planned into shards (nothing uploaded)."""
    from airflow_provider_maas.batch.round_files import answers_opener
    from airflow_provider_maas.batch.rounds import write_requests_to_send

    reuse = settings.reuse_paths()
    with tempfile.TemporaryDirectory(prefix="maas-plan-") as folder:
        path = os.path.join(folder, "to-send.jsonl")
        with open(path, "wb") as out, open_source(settings.source) as source:
            writer = _Estimating(out, default_max_output)
            try:
                coverage = write_requests_to_send(
                    source,
                    cast("IO[bytes]", writer),
                    reuse=reuse,
                    opener=answers_opener(settings),
                    deduplicate=settings.deduplicate,
                )
            except ResultsFormatError as err:
                raise MaaSInputError(f"reuse_results: {err}") from None
        plans: list[ShardPlan] = []
        if coverage.to_send:
            with open(path, "rb") as handle:
                plans = settings.plan_first_round(handle)
    return make_plan(
        requests=coverage.requests,
        reused=coverage.reused,
        deduplicated=coverage.deduplicated,
        plans=plans,
        tokens=writer.tokens,
        default_max_output=default_max_output,
        prices=settings.prices,
        budget_usd=budget_usd,
        canary_requests=settings.canary_requests,
    )
