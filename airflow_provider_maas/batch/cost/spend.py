"""What a batch has spent and holds reserved: the ledger the budget gate decides on.

:class:`SpendLedger` reads from the batch state, once, what every job cost (``cost_usd``, its
``usageMetadata`` at ``prices``), what was paid without a report (``lost_usd``, and jobs lost
without a reservation at their worst case) and what is reserved (the worst case of every job in
flight and of every shard admitted but not created yet); then the driver's hooks keep it up to
date as jobs are created (:meth:`SpendLedger.marker_fields`), downloaded
(:meth:`SpendLedger.downloaded`: the answers checked, the part measured) and lost
(:meth:`SpendLedger.lost`, :func:`count_as_lost`). A shard's worst case is read from its requests
(``estimates.py``, under the operator's ``bounds.py``). The decisions on it (the cap, the
canary): ``budget.py``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.results import ResultSummary, parse_result_line
from airflow_provider_maas.batch.cost.bounds import Bounds
from airflow_provider_maas.batch.cost.estimates import DEFAULT_MAX_OUTPUT_TOKENS, Tokens, worst_case_usd
from airflow_provider_maas.batch.cost.prices import cost_of
from airflow_provider_maas.batch.inputs.lines import iter_lines
from airflow_provider_maas.batch.inputs.shards import copy_shard
from airflow_provider_maas.batch.record.state import ShardKey, ShardStatus
from airflow_provider_maas.exceptions import MaaSInputChangedError, MaaSInputError
from airflow_provider_maas.storage import open_source

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.batch.answers.schema import AnswerCheck
    from airflow_provider_maas.batch.record.state import BatchState, ShardRecord

log = logging.getLogger(__name__)

#: Float noise tolerated when comparing with the cap (1e-9 USD).
EPSILON = 1e-9
#: How the status of a request not sent starts.
NOT_SENT = "NOT_SENT"


def count_as_lost(record: ShardRecord) -> ShardRecord:
    """``record`` whose job was (or may have been) paid for but will never report its cost: its
    reported cost, else its reservation, becomes ``lost_usd`` (spent for good)."""
    paid = record.cost_usd if record.cost_usd is not None else record.reserve_usd
    if paid is None:  # created without a reservation: a try with a cap counts its worst case
        return record.but(lost_unreserved=record.lost_unreserved + 1)
    if not paid:
        return record
    return record.but(cost_usd=None, lost_usd=round((record.lost_usd or 0.0) + paid, 9))


@dataclass
class SpendLedger:
    """What one batch has spent and holds reserved, and what a shard costs at most (see the module docstring).

    :param source: The operator's ``source`` (round 0's requests when the round has none of its own).
    :param parts: ``parts(key)``: where shard ``key``'s results are downloaded.
    :param max_cost_usd: The cap, or None (``prices`` is then only used to measure).
    :param max_tokens_per_file_part: What one file part counts at most in the worst case;
        ``max_cached_content_tokens``: what a ``cachedContent`` does (``batch.cost.bounds.unbounded``).
    :param check: Checks (and rewrites) the answers of each downloaded part (``response_schema``).
    """

    source: Any
    parts: Any
    prices: dict[str, float] | None = None
    #: The operator's source as the user gave it, when ``source`` is it rewritten: where the plan of
    #: a state being replaced, made by a try without the rewrite, is read
    #: (:func:`~airflow_provider_maas.batch.cost.spend_before.spend_left_behind`; a shard to send is read as
    #: it is sent, never there).
    given_source: Any = None
    max_cost_usd: float | None = None
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    max_tokens_per_file_part: int | None = None
    max_cached_content_tokens: int | None = None
    check: AnswerCheck | None = None
    _worst: dict[ShardKey, float] = field(default_factory=dict)
    _admitted: dict[ShardKey, float] = field(default_factory=dict)
    _spent: float | None = None
    _flight: set[ShardKey] | None = None
    _overrun: str | None = None
    _overrun_read: bool = False

    # Reading the state ---------------------------------------------------------------------
    def spent(self, state: BatchState) -> float:
        """The reported cost of every job downloaded so far (all rounds, all tries): read from the
        state once, then kept up to date by :meth:`downloaded` (O(1) per create, not O(shards))."""
        if self._spent is None:
            self._spent = state.spent_before_usd + sum(
                (r.cost_usd or 0.0) + (r.lost_usd or 0.0) for r in state.shards.values()
            )
            if self.max_cost_usd is not None:  # lost jobs created without a reservation: at their worst case
                self._spent += sum(r.lost_unreserved * self.worst(r.key, state) for r in state.shards.values())
            if self.prices is not None:  # downloaded by a try without prices: measured now, paid all the same
                for record in state.with_status(ShardStatus.DONE):
                    if record.cost_usd is None:
                        self._spent += self._measure(record, state)
        return round(self._spent, 9)

    def _measure(self, record: ShardRecord, state: BatchState) -> float:
        """The reported cost of a DONE shard downloaded without prices (0 if its part is gone:
        it is downloaded again, and measured then)."""
        try:
            return self.measured(record, state)
        except FileNotFoundError:
            return 0.0

    def measured(self, record: ShardRecord, state: BatchState) -> float:
        """The reported cost of the part ``record``'s job downloaded (FileNotFoundError: it is gone)."""
        return self._cost_of_part(record, self.parts(record.key), state)[0]

    def reserved(self, state: BatchState) -> float:
        """The worst case of every job in flight, and of shards admitted but not created yet."""
        if self._flight is None:  # read from the state once; then the shards given a marker since
            self._flight = {r.key for r in state.with_status(ShardStatus.CREATING, ShardStatus.RUNNING)}
        total = 0.0
        for key in list(self._flight):
            record = state.shards[key]
            if record.status not in (ShardStatus.CREATING, ShardStatus.RUNNING):
                self._flight.discard(key)  # ended: its reported cost (if any) is in spent
            elif record.cost_usd is None:  # no reservation: created by a try without the cap
                total += record.reserve_usd if record.reserve_usd is not None else self.worst(key, state)
        for key, worst in self._admitted.items():
            if state.shards[key].status is ShardStatus.PENDING:
                total += worst
        return round(total, 9)

    def overrun(self, state: BatchState) -> str | None:
        """Why the worst cases are no bound, once a downloaded job of this clear epoch reported more
        than its reservation (read from the state once, then kept up to date by :meth:`downloaded`):
        no create is admitted until a person clears the task."""
        if not self._overrun_read:
            self._overrun_read = True
            for record in state.with_status(ShardStatus.DONE):  # a clear since accepts it (the error was seen)
                if record.cost_usd is not None and record.clear_epoch == state.clear_epoch:
                    self._note_overrun(record, record.cost_usd)
        return self._overrun

    def _note_overrun(self, record: ShardRecord, cost: float) -> None:
        if self._overrun is None and record.reserve_usd is not None and cost > record.reserve_usd + EPSILON:
            self._overrun = (
                f"{NOT_SENT}: the job of shard {record.key} cost ${cost:.6f}, more than its worst case "
                f"${record.reserve_usd:.6f}: the worst case is no bound for these requests (file parts, cached "
                "content, a ceiling the service does not keep, prices raised between tries), so the cap cannot be "
                "kept; set generationConfig.maxOutputTokens in the requests and check prices"
            )

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.default_max_output_tokens, self.max_tokens_per_file_part, self.max_cached_content_tokens)

    def worst(self, key: ShardKey, state: BatchState) -> float:
        """The worst case of shard ``key`` in USD (its requests read once, then remembered).

        :raises MaaSInputError: with a cap, the shard's requests have file parts or a
            ``cachedContent`` and no bound for them (the input is checked at the start of each try
            too: this catches a cap added to a batch already planned).
        """
        if key not in self._worst:
            tokens = self.tokens(key, state)
            problem = self.bounds.unbounded(tokens) if self.max_cost_usd is not None else None
            if problem is not None:
                raise MaaSInputError(
                    f"shard {key} was not sent: its requests have {problem}. With max_cost_usd the worst case of "
                    "every request must bound what it can cost; or leave out max_cost_usd"
                )
            self._worst[key] = worst_case_usd(tokens, self.prices or {}) if self.prices else 0.0
        return self._worst[key]

    def _shard_lines(self, key: ShardKey, state: BatchState) -> Iterator[bytes]:
        """The request lines of shard ``key`` (read once into memory: one shard, at most 50 MiB):
        from its round's file, else from the source as sent, else as the user gave it (a plan of a
        try without the rewrite), whichever holds the bytes the plan recorded.

        :raises MaaSInputChangedError: none does (the input changed since the shard was planned).
        """
        own = state.rounds[key.round].source
        sources = [own] if own else [s for s in (self.source, self.given_source) if s is not None]
        for number, source in enumerate(sources, 1):
            data = io.BytesIO()
            try:
                with open_source(source) as handle:
                    copy_shard(handle, state.plan(key), data)
            except MaaSInputError as err:  # gone, or changed: the next copy, if any
                if number == len(sources):
                    raise MaaSInputChangedError(str(err)) from None
                continue
            data.seek(0)
            return (line for _, _, line in iter_lines(data))
        raise MaaSInputChangedError(f"shard {key}: no copy of its requests")

    def tokens(self, key: ShardKey, state: BatchState) -> Tokens:
        """The token estimates of shard ``key``'s requests."""
        total, estimate = Tokens(), self.bounds.line
        for line in self._shard_lines(key, state):
            total.add(estimate(line))
        return total

    # Hooks of the driver -------------------------------------------------------------------
    def marker_fields(self, key: ShardKey, state: BatchState) -> dict[str, Any]:
        """Fields the "creating" marker of shard ``key`` stores: its reservation."""
        self._admitted.pop(key, None)
        if self._flight is not None:
            self._flight.add(key)
        reserve = self.worst(key, state) if self.max_cost_usd is not None else None
        return {"reserve_usd": reserve, "cost_usd": None, "unsent": False}

    def lost(self, record: ShardRecord, state: BatchState | None = None) -> ShardRecord:
        """The job of ``record`` ran, but its results are gone, or it ended FAILED, CANCELLED or
        EXPIRED (the service documents no billing of those, and no usage comes with them): what it
        cost, else its reservation, stays spent (:func:`count_as_lost`) when the shard is sent again.
        A job created by a try without the cap has no reservation: with a cap, its worst case
        (read from ``state``) stays spent."""
        if (
            record.cost_usd is None
            and record.reserve_usd is None
            and self.max_cost_usd is not None
            and state is not None
            and record.key in state.shards
        ):
            record = record.but(reserve_usd=self.worst(record.key, state))
        changed = count_as_lost(record)
        if self._spent is not None and record.cost_usd is None:  # a reported cost is in spent already
            self._spent += (changed.lost_usd or 0.0) - (record.lost_usd or 0.0)
        return changed

    def downloaded(
        self, record: ShardRecord, part: ObjectStoragePath, state: BatchState | None = None
    ) -> dict[str, Any]:
        """After the results of ``record``'s job were downloaded to ``part``: check its answers
        (rewriting the invalid ones in place), then measure what the job cost (``state``: where the
        worst case of a job created without a reservation is read)."""
        if self.check is not None:
            self.check.rewrite(part)
        if self.prices is None:
            return {}
        cost, over, most = self._cost_of_part(record, part, state)
        self._note_overrun(record, cost)
        if self._spent is not None:  # a part downloaded again (lost) replaces its earlier cost
            self._spent += cost - (record.cost_usd or 0.0)
        if over:
            log.warning(
                "Shard %s: %d answers report more prompt tokens than their worst case (up to %d more): their files "
                "or cachedContent count more than max_tokens_per_file_part=%s / max_cached_content_tokens=%s allow. "
                "The job counts at its reported usage ($%.6f; reserved $%s); the cap holds only while those bounds "
                "do: raise them",
                record.key,
                over,
                most,
                self.max_tokens_per_file_part,
                self.max_cached_content_tokens,
                cost,
                record.reserve_usd,
            )
        return {"cost_usd": cost, "over_worst_case": over}

    def _cost_of_part(
        self, record: ShardRecord, part: ObjectStoragePath, state: BatchState | None = None
    ) -> tuple[float, int, int]:
        """What the answers in ``part`` (``record``'s job) report they cost, at ``prices`` (its worst
        case if some report nothing usable); with a cap, how many answers report more prompt tokens
        than their request's worst case, and the most tokens one of them does."""
        assert self.prices is not None

        def worst() -> float:  # its reservation; a job created by a try without the cap has none
            if record.reserve_usd is not None:
                return record.reserve_usd
            return self.worst(record.key, state) if state is not None and record.key in state.shards else 0.0

        summary = ResultSummary(max_failure_samples=0)
        unpriced = 0  # answers without a usable usageMetadata: paid for all the same
        unnamed = 0  # input tokens only totalTokenCount shows (toolUsePromptTokenCount: grounding, code...)
        seen: set[bytes] = set()  # a line written twice is one answer (a second one has its own responseId)
        over = most = 0
        beyond = self.bounds.prompt_beyond if self.max_cost_usd is not None else None
        with part.open("rb") as handle:
            for line_number, _, line in iter_lines(handle):
                if (digest := hashlib.sha256(line.strip()).digest()) in seen:
                    continue
                seen.add(digest)
                result = parse_result_line(line, line_number)
                usage = result.usage
                if result.response is not None and (not usage or min(usage.values()) < 0):
                    unpriced += 1
                    result = replace(result, usage={})  # a negative count must not lower the spend
                elif usage:
                    named = sum(
                        usage.get(k, 0) for k in ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount")
                    )
                    unnamed += max(0, usage.get("totalTokenCount", 0) - named)
                    if beyond is not None and (extra := beyond(result.request, usage)):
                        over, most = over + 1, max(most, extra)
                summary.add(result)
        known = cost_of(summary.tokens, self.prices)
        if known is None:  # not a finite number (counts are bounded by results._usage): the worst case
            return worst(), over, most
        cost = round(known + unnamed * self.prices["prompt"] / 1_000_000, 9)
        if unpriced and (bound := worst()) > cost:
            log.warning(
                "Shard %s: %d answers report no usable usageMetadata; the job is counted at its worst case ($%.6f)",
                record.key,
                unpriced,
                bound,
            )
            cost = bound
        return cost, over, most
