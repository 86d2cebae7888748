"""The operator's bounds on what one request counts, and the check that a worst case bounds anything.

:class:`Bounds` holds what a request counts at most where its line does not say
(``default_max_output_tokens``, ``max_tokens_per_file_part``, ``max_cached_content_tokens``): the
dry run and the budget estimate request lines through it. A request with a file part or a
``cachedContent`` and no bound for it has a worst case that bounds nothing (:func:`unbounded`);
with ``max_cost_usd`` such an input is refused before anything is uploaded
(:func:`refuse_unbounded`). The estimates themselves: ``estimates.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.cost.estimates import DEFAULT_MAX_OUTPUT_TOKENS, Tokens, estimate_request
from airflow_provider_maas.batch.inputs.lines import iter_line_batches
from airflow_provider_maas.batch.inputs.request_lines import MAX_BYTES_PER_FILE, line_too_long
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import open_source

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_maas.batch.settings import BatchSettings


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


def refuse_unbounded_under_cap(settings: BatchSettings) -> None:
    """With ``max_cost_usd``: :func:`refuse_unbounded` over the requests of ``settings`` (before the
    run or the dry run writes or uploads anything)."""
    if settings.max_cost_usd is not None:
        refuse_unbounded(
            settings.source,
            max_tokens_per_file_part=settings.max_tokens_per_file_part,
            max_cached_content_tokens=settings.max_cached_content_tokens,
        )
