"""Pay once per answer: reuse of earlier results, identical requests sent once, request-level retries.

Three passes over the input, each streaming it once against the one matching engine
(:class:`~airflow_provider_maas.batch.answers.matching.AnswerStore`):

- :func:`write_requests_to_send` (before round 0): the requests that have no successful answer in
  the earlier results (``reuse_results``) and, with ``deduplicate``, only the first of identical
  requests. What it writes is round 0's input.
- :func:`write_retries` (after each round): the requests whose best answer so far failed with a
  retryable status, or is missing. What it writes is the next round's input.
- :func:`merge_answers` (at the end): every input position gets its best answer (a success from
  any source, else the failure of the latest round), in input order; the failed file gets the
  requests that have none; the summary counts where each answer came from and, with prices, the cost.

"Identical" is the same normalised request (``results.request_digest``, the digest the merge
already matches results to requests with). With ``deduplicate=False`` identical requests are
independent: each is sent, and each earlier answer is reused for at most one of them (first come,
first served), as the results of identical requests pair everywhere else.

A damaged line in this batch's own results is a ``MaaSIntegrityError`` (``write_retries`` and
``merge_answers`` go through ``merge.results_from_service``); one in ``reuse_results`` is the
caller's input: ``write_requests_to_send`` raises ``ResultsFormatError`` for it to name as such.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.batch.answers.answer_lines import OK_TAILS, Answer, reader
from airflow_provider_maas.batch.answers.matching import AnswerStore
from airflow_provider_maas.batch.answers.merge import OrderedWriter, line_digest, results_from_service
from airflow_provider_maas.batch.answers.results import (
    TOKEN_KEYS,
    ResultRecord,
    ResultSummary,
    load_result_object,
    result_record,
)
from airflow_provider_maas.batch.answers.retry_failures import (  # noqa: F401 (their earlier home: still importable from here)
    DEFAULT_RETRY_FAILURES,
    retry_predicate,
)
from airflow_provider_maas.batch.cost.prices import cost_of
from airflow_provider_maas.batch.inputs.lines import Writable, iter_lines
from airflow_provider_maas.batch.inputs.request_lines import RequestLine, iter_request_lines
from airflow_provider_maas.storage.paths import shown_uri, untracked

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from airflow_provider_maas.batch.answers.summary_types import MergeCounts, Origins, Totals


@dataclass(frozen=True, slots=True)
class Coverage:
    """What :func:`write_requests_to_send` found: input requests, answered by reuse, duplicates, to send."""

    requests: int
    reused: int
    deduplicated: int
    to_send: int


def write_requests_to_send(
    source: IO[bytes],
    out: IO[bytes],
    *,
    reuse: Sequence[Any] = (),
    opener: Callable[[Any], Any],
    deduplicate: bool = True,
    on_send: Callable[[RequestLine], None] | None = None,
) -> Coverage:
    """Write to ``out`` the input lines to send (input order): those without an earlier answer in
    ``reuse`` (results files; ``opener(item)`` opens one for binary reading) and, with
    ``deduplicate``, the first of each set of identical requests. ``on_send(line)`` is called with
    each line written (its request parsed: the dry run estimates it).

    :raises ResultsFormatError: a ``reuse`` file is not a results file (naming it and the line).
    """
    requests = reused = duplicates = sent = 0
    # 8 MiB of page cache: the digests of the requests seen fill it by ~400,000 requests, and memory
    # stays flat after (a B-tree written in random order gains little from more; 16 MiB: +10 MiB at 1M)
    with AnswerStore(cache_mib=8) as store, contextlib.ExitStack() as stack:
        _open_all(stack, store, reuse, (), opener)
        for line, answer, repeated in store.match(iter_request_lines(source), line_digest, shared=deduplicate):
            requests += 1
            if answer is not None:  # only the successes of reuse_results are indexed
                reused += 1
            elif deduplicate and repeated:
                duplicates += 1
            else:
                out.write(line.raw)
                if on_send is not None:
                    on_send(line)
                sent += 1
    return Coverage(requests, reused, duplicates, sent)


def _open_all(
    stack: contextlib.ExitStack, store: AnswerStore, reuse: Sequence[Any], results: Sequence[Any], opener: Any
) -> dict[int, Any]:
    """Open and index ``reuse`` (successes only), then ``results``; their files by source number, to read
    answers from one by one (under Airflow's lineage wrapper, once recorded: ``storage.paths.untracked``)."""
    files = {}
    for number, item in enumerate(reuse):
        handle = stack.enter_context(opener(item))
        store.add(f"results reuse_results[{number}] ({shown_uri(str(item))})", handle, successes_only=True)
        files[number] = untracked(handle)
    for number, item in enumerate(results):
        handle = stack.enter_context(opener(item))
        store.add(f"results of round {number} ({shown_uri(str(item))})", handle)  # no signature of a URL
        files[len(reuse) + number] = untracked(handle)
    return files


def all_succeeded(results: IO[bytes], expected: int) -> bool:
    """True if ``results`` holds exactly ``expected`` lines, each a success in the service's own
    layout (ending with ``"status": ""}``, see ``answer_lines.parse_result_line``): then no request of the round
    failed or is missing, and :func:`write_retries` can be skipped. Reads bytes, decodes no JSON.
    False only means "look closer" (another layout, a failure, a missing or repeated line)."""
    count = 0
    for _, _, line in iter_lines(results):
        if not line.rstrip().endswith(OK_TAILS):
            return False
        count += 1
    return count == expected


@results_from_service
def write_retries(
    source: IO[bytes],
    out: IO[bytes],
    *,
    reuse: Sequence[Any],
    results: Sequence[Any],
    opener: Callable[[Any], Any],
    should_retry: Callable[[str], bool],
    final: Collection[int] = (),
    deduplicate: bool = True,
) -> int:
    """Write to ``out`` (input order) the requests to send again after the rounds whose ``results``
    are given: their best answer so far failed with a status ``should_retry`` accepts, or they have
    none. Return how many were written.

    :param final: Indexes in ``results`` of files whose failures are not retried (the requests of
        shards whose every job failed: ``shard_retries`` was spent on them already).
    """
    written = 0
    final_sources = {len(reuse) + index for index in final}
    with AnswerStore() as store, contextlib.ExitStack() as stack:
        read = reader(_open_all(stack, store, reuse, results, opener), store.sources)
        for line, answer, repeated in store.match(iter_request_lines(source), line_digest, shared=deduplicate):
            if answer is not None and answer.succeeded:
                continue
            if answer is not None:
                if answer.source in final_sources:
                    continue
                label = f"{store.sources[answer.source]} line {answer.line}"
                status = result_record(load_result_object(read(answer), label, answer.line), 0).error
                if not should_retry(status or ""):
                    continue
            if deduplicate and repeated:
                continue
            out.write(line.raw)
            written += 1
    return written


class MergedAnswers(NamedTuple):
    """What :func:`merge_answers` counted: the merge, where its answers came from, each round's successes."""

    counts: MergeCounts
    origins: Origins
    round_succeeded: list[int]


@results_from_service
def merge_answers(
    source: IO[bytes],
    out: IO[bytes],
    failed_out: Writable,
    *,
    reuse: Sequence[Any],
    results: Sequence[Any],
    opener: Callable[[Any], Any],
    rounds: Sequence[int] | None = None,
    deduplicate: bool = True,
    prices: dict[str, float] | None = None,
) -> MergedAnswers:
    """Write every input position's best answer to ``out`` in input order, and to ``failed_out``
    the input lines of requests with no successful answer (a missing one gets its request with
    ``MISSING_STATUS`` in ``out``: one line per input request).

    :param results: Results of each round, in round order (a later round's failure is the reason
        reported; a success from any round or from ``reuse`` wins).
    :param rounds: The round of each ``results`` file (default: its index); ``round_succeeded``
        counts per round.
    :return: The counts (``duplicates``: second successful answers to one request, not used;
        ``unmatched``: result lines matching no input request), where the answers came from (with
        ``prices``, their cost: :func:`answer_origins`) and the successes of each round.
    """
    by_reuse, by_dedup = ResultSummary(), ResultSummary()
    first_round = len(reuse)

    def origin(record: ResultRecord, answer: Answer | None, repeated: bool) -> None:
        if answer is not None and answer.source < first_round:
            by_reuse.add(record)
        elif answer is not None and deduplicate and repeated:
            by_dedup.add(record)

    merge = OrderedWriter()
    with AnswerStore() as store, contextlib.ExitStack() as stack:
        read = reader(_open_all(stack, store, reuse, results, opener), store.sources)
        lines = iter_request_lines(source)
        merge.write(store, read, lines, out, failed_out, shared=deduplicate, each=origin)
        merge.leftovers(store, first_round, shared=deduplicate)
        numbers = list(rounds) if rounds is not None else list(range(len(results)))
        round_succeeded = [0] * (max(numbers, default=-1) + 1)
        for number, added in zip(numbers, store.added[first_round:], strict=True):
            round_succeeded[number] += added.succeeded
    counts: MergeCounts = {
        **merge.summary.as_dict(),
        "missing": merge.summary.missing,
        "duplicates": merge.duplicates,
        "unmatched": merge.unmatched,
        "bytes": merge.written,
    }
    return MergedAnswers(
        counts, answer_origins(counts, reused=by_reuse, deduplicated=by_dedup, prices=prices), round_succeeded
    )


def answer_origins(
    totals: Totals,
    *,
    reused: ResultSummary | None = None,
    deduplicated: ResultSummary | None = None,
    prices: dict[str, float] | None = None,
) -> Origins:
    """Where the answers a merge counted (its ``totals``) came from (``reused``, ``deduplicated``,
    ``tokens_reused``, ``tokens_deduplicated``) and, with ``prices``, ``cost_usd`` (the
    tokens of the answers sent) and ``cost_avoided_usd`` (``reused``, ``deduplicated``): each None
    (unknown) when one of its answers has no usable token counts (``cost_unknown_answers``)."""
    reused = reused or ResultSummary()
    deduplicated = deduplicated or ResultSummary()
    origins: Origins = {
        "reused": reused.requests,
        "deduplicated": deduplicated.requests,
        "tokens_reused": reused.tokens,
        "tokens_deduplicated": deduplicated.tokens,
    }
    if prices is not None:
        paid: dict[str, int] = {
            name: totals[name] - reused.tokens[name] - deduplicated.tokens[name] for name in TOKEN_KEYS
        }
        unknown = totals["cost_unknown_answers"] - reused.usage_unknown - deduplicated.usage_unknown
        origins["cost_usd"] = cost_of(paid, prices, unknown=unknown)
        origins["cost_avoided_usd"] = {
            "reused": cost_of(reused.tokens, prices, unknown=reused.usage_unknown),
            "deduplicated": cost_of(deduplicated.tokens, prices, unknown=deduplicated.usage_unknown),
        }
    return origins
