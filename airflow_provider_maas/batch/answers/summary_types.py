"""The shapes of the XCom ``summary`` the download, merge and batch operators push: one type each,
so that every place building a summary is checked (mypy) against the keys the README documents
(``tests/test_summary_types.py`` checks the README's lists against these types, both ways).

TypedDicts, because the XCom value is a plain JSON dict: a type is only a promise about its keys.
A key is optional (``total=False``) only where the summary has it in some cases alone, as the
README says (``images`` with ``extract_images``, the cost keys with ``prices`` or a budget...).
"""

from __future__ import annotations

from typing import Literal, TypedDict

#: The token counts of a summary (totals of the answers' ``usageMetadata``: ``results.TOKEN_KEYS``).
TokenKey = Literal["prompt_tokens", "candidates_tokens", "thoughts_tokens", "total_tokens"]


class Totals(TypedDict):
    """The counts of result records (``ResultSummary.as_dict``, the public ``summarize``)."""

    requests: int
    succeeded: int
    failed: int  # missing ones included
    prompt_tokens: int
    candidates_tokens: int
    thoughts_tokens: int
    total_tokens: int
    cost_unknown_answers: int  # answers without usable token counts, left out of the totals


class ResultsSummary(Totals):
    """What every operator's summary holds (the README's list)."""

    missing: int  # requests with no result line
    duplicates: int  # result lines counted once
    bytes: int  # of the results written
    failed_uri: str | None  # the failed requests, in input format; None: none failed (no file)


class MergeCounts(Totals):
    """What a merge in input order counts (before its failed file is named)."""

    missing: int
    duplicates: int
    unmatched: int  # result lines matching no request of the input
    bytes: int


class MergeSummary(MergeCounts, ResultsSummary):
    """``MaaSMergeResultsOperator`` (and the merge of the download and batch operators)."""


class _DownloadOptional(TypedDict, total=False):
    unmatched: int  # with ``requests`` (the results merged in input order)
    images: int  # with ``extract_images``


class DownloadSummary(ResultsSummary, _DownloadOptional):
    """``MaaSDownloadResultsOperator``."""

    job_name: str
    expected_requests: int | None  # the job's count (``completionStats``); None when it sent none


class CostAvoided(TypedDict):
    """USD not paid, by where the answers came from (None: unknown)."""

    reused: float | None
    deduplicated: float | None


class _Cost(TypedDict, total=False):
    cost_usd: float | None  # with ``prices``: the answers sent; with ``max_cost_usd``: every job


class _Priced(_Cost, total=False):
    cost_avoided_usd: CostAvoided  # with ``prices``


class Origins(_Priced):
    """Where a batch's answers came from (and, with ``prices``, what they cost)."""

    reused: int  # answers taken from ``reuse_results`` (or kept by a start-over)
    deduplicated: int  # answers shared by identical requests
    tokens_reused: dict[str, int]
    tokens_deduplicated: dict[str, int]


class CanarySummary(TypedDict):
    """The canary's verdict (also XCom ``plan``)."""

    requests: int
    failed: int
    tokens_per_request: dict[str, float]
    estimated_cost_usd: float | None
    basis: str


class CostFields(_Cost, total=False):
    """What the budget cap, the canary and the answer checks add (``batch/answers/summary.py`` ``cost_fields``)."""

    cost_reserved_usd: float  # with ``max_cost_usd``; 0 once nothing runs
    budget_usd: float  # with ``max_cost_usd``
    answers_over_worst_case: int  # with ``max_cost_usd``
    not_sent: int  # with any of them
    canary: CanarySummary  # once the canary's answers are in
    invalid_output: int  # with ``response_schema``


class RetryRound(TypedDict):
    """One request-level retry round."""

    round: int
    retried: int  # requests sent again
    succeeded: int  # of them, answered


class BatchSummary(MergeSummary, Origins, CostFields):
    """``MaaSBatchPredictionOperator``."""

    reuse_skipped_other_model: int  # answers of ``reuse_results`` written by another ENDPOINT
    shards: int
    failed_shards: int
    shard_errors: list[str]  # the first few
    jobs: int  # created, retries included
    sent: int  # requests sent, every send counted
    resumes: int
    retry_rounds: list[RetryRound]
