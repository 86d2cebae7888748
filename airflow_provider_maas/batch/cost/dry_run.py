"""The dry run (``dry_run=True``): what a real run would send and what it may cost, nothing paid.

:func:`dry_run` does everything a run does before paying (the input validated, matched against
``reuse_results``, deduplicated, estimated and planned into shards; nothing uploaded) and answers
with a :class:`BatchPlan` (XCom ``plan``), made by :func:`make_plan` from the token estimates
(``estimates.py``) under the operator's bounds (``bounds.py``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.pay_once import write_requests_to_send
from airflow_provider_maas.batch.cost.bounds import Bounds, refuse_unbounded_under_cap, unbounded
from airflow_provider_maas.batch.cost.estimates import (
    CHARS_PER_TOKEN,
    TOKENS_PER_FILE,
    Tokens,
    estimated_usd,
    worst_case_usd,
)
from airflow_provider_maas.batch.inputs.lines import ResultsFormatError
from airflow_provider_maas.batch.inputs.rewrite import as_sent_locally
from airflow_provider_maas.batch.round_files import answers_opener
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import open_source

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow_provider_maas.batch.inputs.request_lines import RequestLine
    from airflow_provider_maas.batch.inputs.shards import ShardPlan
    from airflow_provider_maas.batch.settings import BatchSettings

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


def plan_batch(settings: BatchSettings) -> BatchPlan:
    """The dry run of a batch: under ``max_cost_usd`` a request whose worst case is no bound is
    refused first (as a run does); the requests are planned as they would be sent (rewritten, in a
    local temporary copy: ``batch.inputs.rewrite``)."""
    refuse_unbounded_under_cap(settings)
    bounds = Bounds(
        settings.default_max_output_tokens, settings.max_tokens_per_file_part, settings.max_cached_content_tokens
    )
    with as_sent_locally(settings) as sent:
        return dry_run(sent, bounds=bounds, budget_usd=settings.max_cost_usd)
