"""What the batch may still send: the budget cap (``max_cost_usd``) and the canary, decided before each create.

The reservation rule. Before a shard's create, :meth:`SpendGate.admit` adds

- **spent**: the reported cost (``usageMetadata`` at ``prices``) of every job whose results were
  downloaded, kept in each shard's record (``cost_usd``) in the batch state; the worst case of jobs
  paid without a report (results gone, a job ended FAILED, CANCELLED or EXPIRED, an uncertain
  create cleared: ``lost_usd``); and what the states this one replaced spent (``spent_before_usd``);
- **reserved**: the worst case (``plan.worst_case_usd``) of every job in flight (a shard CREATING
  or RUNNING, ``reserve_usd`` in its record) and of every shard admitted but not created yet;
- the worst case of the new job;

and refuses the create if the sum passes the cap. A refusal stops the batch: every shard not sent
is recorded FAILED with ``unsent`` (its requests go to the failed file with the reason), the jobs
in flight finish and are downloaded, and the operator fails with
:class:`~airflow_provider_maas.exceptions.MaaSBudgetExceededError`, keeping the state: a retry
finds the spend there and creates nothing that does not fit.

With a canary (shard 0 of round 0, ``canary.split_first``), the other shards wait until its
results are in; then its failed share and its measured cost per request decide whether the rest
is sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.canary import CanaryVerdict, judge
from airflow_provider_maas.batch.cost import cost_of
from airflow_provider_maas.batch.lines import iter_lines
from airflow_provider_maas.batch.plan import DEFAULT_MAX_OUTPUT_TOKENS, Bounds, Tokens, worst_case_usd
from airflow_provider_maas.batch.results import ResultSummary, parse_result_line, request_digest
from airflow_provider_maas.batch.shards import copy_shard
from airflow_provider_maas.batch.state import ShardKey, ShardStatus
from airflow_provider_maas.exceptions import (
    MaaSBudgetExceededError,
    MaaSCanaryFailedError,
    MaaSInputChangedError,
    MaaSInputError,
)
from airflow_provider_maas.storage import open_source

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.batch.schema import AnswerCheck
    from airflow_provider_maas.batch.settings import BatchSettings
    from airflow_provider_maas.batch.shards import ShardPlan
    from airflow_provider_maas.batch.state import BatchState, ShardRecord
    from airflow_provider_maas.batch.summary_types import BatchSummary, CostFields

log = logging.getLogger(__name__)

#: The canary's shard.
CANARY = ShardKey(0, 0)
#: Float noise tolerated when comparing with the cap (1e-9 USD).
_EPSILON = 1e-9
#: How the status of a request not sent starts.
NOT_SENT = "NOT_SENT"
#: Shards an error names at most.
_NAMED = 5


def count_as_lost(record: ShardRecord) -> ShardRecord:
    """``record`` whose job was (or may have been) paid for but will never report its cost: its
    reported cost, else its reservation, becomes ``lost_usd`` (spent for good)."""
    paid = record.cost_usd if record.cost_usd is not None else record.reserve_usd
    if paid is None:  # created without a reservation: a try with a cap counts its worst case
        return record.but(lost_unreserved=record.lost_unreserved + 1)
    if not paid:
        return record
    return record.but(cost_usd=None, lost_usd=round((record.lost_usd or 0.0) + paid, 9))


def spend_left_behind(
    state: BatchState, settings: BatchSettings | None = None, parts: Any = None
) -> tuple[float, dict[str, float] | None, dict[str, int] | None]:
    """What a state being replaced (its plan changed) spent, with the reservations of its jobs in
    flight (they keep running and are billed): carried into the new state as ``spent_before_usd``,
    returned with the prices it is at (None when it is 0, or at prices the state did not keep).

    A job it holds no amount for was created or downloaded by a try without the cap or the prices:
    one in flight (no reservation), one downloaded (no reported cost), one lost or failed
    (``lost_unreserved``). Each is priced here, at the state's prices (else ``settings``'), with
    this try's bounds (``settings``): a downloaded one at the reported cost of its part
    (``parts(key)``), the others at the worst case of its shard, read from the old plan's requests
    (the round's file, or the source as sent or as given, checked against the shard's SHA-256).
    Where no copy of a shard's requests is left, its jobs are refused under a cap
    (``MaaSInputError`` naming them, nothing created); without one they count at the plan's bound
    (:func:`_shard_bound`).

    With no prices known (neither the state's nor this try's), their worst case is carried in tokens
    instead (the third value, ``tokens_before``: worst-case prompt and output tokens, added to the
    state's own), priced by the first try with prices that takes the new state
    (:func:`check_same_prices`).
    """
    total = state.spent_before_usd
    unpriced: list[ShardRecord] = []
    for record in state.shards.values():
        total += (record.cost_usd or 0.0) + (record.lost_usd or 0.0)
        in_flight = record.status in (ShardStatus.CREATING, ShardStatus.RUNNING) and record.cost_usd is None
        total += (record.reserve_usd or 0.0) if in_flight else 0.0
        if _unpriced_jobs(record) or (record.status is ShardStatus.DONE and record.cost_usd is None):
            unpriced.append(record)
    prices = state.prices
    if prices is None and not total and settings is not None:  # nothing counted yet: at this try's prices
        prices = settings.prices
    tokens = dict(state.tokens_before) if state.tokens_before else None
    if tokens and prices is not None:
        total, tokens = total + usd_of_tokens(tokens, prices), None
    records = sorted(unpriced, key=lambda r: r.key)
    if unpriced and prices is not None and settings is not None:
        gate = SpendGate.of(settings, parts, prices=prices, given_source=settings.given_source)
        total += _price_unpriced(state, records, gate)
    elif unpriced and settings is not None:  # no prices known: their worst case in tokens (fail closed)
        tokens = tokens or {"prompt": 0, "candidates": 0}
        for name, unit in _UNIT_PRICES.items():  # USD at 1e6 USD per 1M tokens of one kind: its tokens
            gate = SpendGate.of(settings, parts, prices=unit, given_source=settings.given_source, max_cost_usd=None)
            tokens[name] += math.ceil(round(_price_unpriced(state, records, gate), 6))
    total = round(total, 9)
    return total, (prices if total else None), (tokens or None)


#: Prices that turn :func:`_price_unpriced`'s USD into prompt tokens, or into output tokens.
_UNIT_PRICES = {
    "prompt": {"prompt": 1e6, "candidates": 0.0, "thoughts": 0.0},
    "candidates": {"prompt": 0.0, "candidates": 1e6, "thoughts": 1e6},
}


def usd_of_tokens(tokens: dict[str, int], prices: dict[str, float]) -> float:
    """What worst-case ``tokens`` (``tokens_before``) cost at ``prices``: output at the dearer output price."""
    bound = Tokens(worst_prompt=tokens.get("prompt", 0), max_output=tokens.get("candidates", 0))
    return round(worst_case_usd(bound, prices), 9)


def _unpriced_jobs(record: ShardRecord) -> int:
    """The jobs of ``record`` counted at no amount: lost without a reservation, in flight without one."""
    in_flight = record.status in (ShardStatus.CREATING, ShardStatus.RUNNING)
    return record.lost_unreserved + (in_flight and record.cost_usd is None and record.reserve_usd is None)


def _price_unpriced(state: BatchState, records: list[ShardRecord], gate: SpendGate) -> float:
    """What the jobs of ``records`` (see :func:`spend_left_behind`) cost at most, at ``gate``'s prices."""
    total = 0.0
    unread: list[ShardRecord] = []
    for record in records:
        jobs = _unpriced_jobs(record)
        if record.status is ShardStatus.DONE and record.cost_usd is None:  # downloaded by a try without prices
            try:
                total += gate.measured(record, state)
            except FileNotFoundError:  # its part is gone: at its worst case
                jobs += 1
        if not jobs:
            continue
        try:
            worst = gate.worst(record.key, state)
        except MaaSInputChangedError:  # no copy of its requests is left
            if gate.max_cost_usd is not None:
                unread.append(record)
                continue
            worst = _shard_bound(state.plan(record.key), gate)
        total += jobs * worst
    if unread:
        named = ", ".join(f"shard {r.key} (job {r.job_name or 'not recorded'})" for r in unread[:_NAMED])
        raise MaaSInputError(
            f"The batch starts over (its input or settings changed), but {len(unread)} shard(s) of the plan it "
            f"replaces had jobs created without max_cost_usd: {named}. They ran, or still run, and are billed, "
            "and their requests can no longer be read (the input they were planned from changed), so the cap "
            "cannot count their worst case: nothing is created. Restore the input they were planned from and "
            "clear the task (the batch reattaches to them and counts them), or run without max_cost_usd"
        )
    return total


def _shard_bound(plan: ShardPlan, gate: SpendGate) -> float:
    """The worst case of a shard whose requests are gone, from its plan alone: one prompt token per
    byte, ``default_max_output_tokens`` per request (a request's own larger ceiling is not seen)."""
    tokens = Tokens(
        requests=plan.requests, worst_prompt=plan.bytes, max_output=plan.requests * gate.bounds.default_max_output
    )
    return worst_case_usd(tokens, gate.prices or {})


def check_same_prices(state: BatchState, prices: dict[str, float], where: str) -> bool:
    """Before this try counts USD at ``prices`` in ``state``: the amounts it holds must be at the
    same prices. A state holding none takes ``prices`` (True: store its batch fields), its
    ``tokens_before`` (kept by tries without prices) becoming ``spent_before_usd`` at them; one holding
    amounts at other prices, or at prices it did not keep (written before they were), is refused
    before anything is created: the cap would add new worst cases to a spend counted at other prices.

    :raises MaaSInputError: naming the prices of the spend, the new ones and the way on.
    """
    if state.prices == prices:
        return False
    if not state.spent_before_usd and not any(r.cost_usd or r.lost_usd or r.reserve_usd for r in state.shards.values()):
        state.prices = dict(prices)
        if state.tokens_before:  # jobs of replaced states, kept in tokens: counted once, at these prices
            state.spent_before_usd, state.tokens_before = usd_of_tokens(state.tokens_before, prices), None
        return True
    recorded = state.prices if state.prices is not None else "not recorded (a state written by an older provider)"
    raise MaaSInputError(
        f"prices changed since this batch counted its spend: the spend in its state is at prices {recorded}, "
        f"this try has prices {prices}. Counting new jobs at the new prices on top of a spend at the old ones "
        "could pass max_cost_usd, so nothing is created. Run it again with the prices the spend was counted at; "
        "or, to use the new prices, start a new DAG run with this destination as its reuse_results and a "
        f"destination of its own (the answers already paid for are reused, not paid again). Batch state: {where}"
    )


def check_budget(
    max_cost_usd: Any,
    prices: Any,
    default_max_output_tokens: Any,
    max_tokens_per_file_part: Any = None,
    max_cached_content_tokens: Any = None,
) -> None:
    """Refuse a cap without prices, or a cap, default output or bound that is not a positive number."""
    if max_cost_usd is not None:
        if isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, (int, float)) or not max_cost_usd >= 0:
            raise MaaSInputError(f"max_cost_usd must be a number of USD >= 0, got {max_cost_usd!r}")
        if prices is None:
            raise MaaSInputError(
                'max_cost_usd needs prices= (USD per 1,000,000 tokens, e.g. {"prompt": 0.15, "candidates": 0.60}) '
                "to turn token counts into USD"
            )
    value = default_max_output_tokens
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MaaSInputError(f"default_max_output_tokens must be an integer >= 1, got {value!r}")
    for name, value in (
        ("max_tokens_per_file_part", max_tokens_per_file_part),
        ("max_cached_content_tokens", max_cached_content_tokens),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MaaSInputError(f"{name} must be an integer >= 1 (tokens), or None, got {value!r}")


class Admission(str, Enum):
    GO = "go"  # create it
    WAIT = "wait"  # not yet (the canary's results are not in)
    STOP = "stop"  # never: the batch stops creating


@dataclass
class SpendGate:
    """The budget, canary and answer checks of one batch (see the module docstring).

    :param source: The operator's ``source`` (round 0's requests when the round has none of its own).
    :param parts: ``parts(key)``: where shard ``key``'s results are downloaded.
    :param max_cost_usd: The cap, or None (``prices`` is then only used to measure).
    :param max_tokens_per_file_part: What one file part counts at most in the worst case;
        ``max_cached_content_tokens``: what a ``cachedContent`` does (``batch.plan.unbounded``).
    :param check: Checks (and rewrites) the answers of each downloaded part (``response_schema``).
    """

    source: Any
    parts: Any
    prices: dict[str, float] | None = None
    #: The operator's source as the user gave it, when ``source`` is it rewritten: where the plan of
    #: a state being replaced, made by a try without the rewrite, is read (:func:`spend_left_behind`;
    #: a shard to send is read as it is sent, never there).
    given_source: Any = None
    max_cost_usd: float | None = None
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    max_tokens_per_file_part: int | None = None
    max_cached_content_tokens: int | None = None
    canary_requests: int = 0
    canary_max_failed: float = 0.5
    check: AnswerCheck | None = None
    reason: str | None = None
    _worst: dict[ShardKey, float] = field(default_factory=dict)
    _admitted: dict[ShardKey, float] = field(default_factory=dict)
    _verdict: CanaryVerdict | None = None
    _canary_estimate: float | None = None
    _unsent_seen: bool | None = None
    _spent: float | None = None
    _flight: set[ShardKey] | None = None
    _overrun: str | None = None
    _overrun_read: bool = False

    @classmethod
    def of(cls, settings: BatchSettings, parts: Any, **given: Any) -> SpendGate:
        """The gate of a batch's ``settings`` (``parts``: see the class; ``given``: other fields)."""
        fields = {
            "source": settings.source,
            "prices": settings.prices,
            "max_cost_usd": settings.max_cost_usd,
            "default_max_output_tokens": settings.default_max_output_tokens,
            "max_tokens_per_file_part": settings.max_tokens_per_file_part,
            "max_cached_content_tokens": settings.max_cached_content_tokens,
            "canary_requests": settings.canary_requests,
        }
        return cls(parts=parts, **{**fields, **given})

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

    def stopped(self, state: BatchState) -> bool:
        """True once a create was refused (recorded in the state: a resume finds it)."""
        if self.reason is None and self._unsent_seen is None:  # read once: later refusals set the reason
            self._unsent_seen = any(r.unsent for r in state.with_status(ShardStatus.FAILED))
        return self.reason is not None or bool(self._unsent_seen)

    def overrun(self, state: BatchState) -> str | None:
        """Why the worst cases are no bound, once a downloaded job of this clear round reported more
        than its reservation (read from the state once, then kept up to date by :meth:`downloaded`):
        no create is admitted until a person clears the task."""
        if not self._overrun_read:
            self._overrun_read = True
            for record in state.with_status(ShardStatus.DONE):  # a clear since accepts it (the error was seen)
                if record.cost_usd is not None and record.clear_round == state.clear_round:
                    self._note_overrun(record, record.cost_usd)
        return self._overrun

    def _note_overrun(self, record: ShardRecord, cost: float) -> None:
        if self._overrun is None and record.reserve_usd is not None and cost > record.reserve_usd + _EPSILON:
            self._overrun = (
                f"{NOT_SENT}: the job of shard {record.key} cost ${cost:.6f}, more than its worst case "
                f"${record.reserve_usd:.6f}: the worst case is no bound for these requests (file parts, cached "
                "content, a ceiling the service does not keep, prices raised between tries), so the cap cannot be "
                "kept; set generationConfig.maxOutputTokens in the requests and check prices"
            )

    def not_sent(self, state: BatchState) -> int:
        """Requests of the shards never sent because the batch stopped."""
        return sum(state.plan(r.key).requests for r in state.with_status(ShardStatus.FAILED) if r.unsent)

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

    # Deciding ------------------------------------------------------------------------------
    def admit(self, key: ShardKey, state: BatchState) -> Admission:
        """May shard ``key``'s job be created now? Sets :attr:`reason` when the answer is STOP."""
        if self.stopped(state):
            return Admission.STOP
        if self.max_cost_usd is not None and (overrun := self.overrun(state)) is not None:
            self.reason = overrun
            log.error("Budget: %s; no more jobs are created", overrun)
            return Admission.STOP
        if self.canary_requests and key != CANARY and CANARY in state.shards:
            canary = state.shards[CANARY]
            if canary.status not in (ShardStatus.DONE, ShardStatus.FAILED):
                return Admission.WAIT
            if not self._canary_passes(state):
                return Admission.STOP
        if self.max_cost_usd is None or self.prices is None:
            return Admission.GO
        if key in self._admitted:
            return Admission.GO
        worst = self.worst(key, state)
        spent, reserved = self.spent(state), self.reserved(state)
        if spent + reserved + worst > self.max_cost_usd + _EPSILON:
            self.reason = (
                f"{NOT_SENT}: max_cost_usd={self.max_cost_usd} reached: ${spent:.6f} spent + ${reserved:.6f} reserved "
                f"for jobs in flight + ${worst:.6f} worst case of shard {key} would pass it"
            )
            log.error("Budget: %s; no more jobs are created", self.reason)
            return Admission.STOP
        self._admitted[key] = worst
        log.info(
            "Budget: shard %s admitted (worst case $%.6f; spent $%.6f, reserved $%.6f of $%s)",
            key,
            worst,
            spent,
            reserved,
            self.max_cost_usd,
        )
        return Admission.GO

    def _canary_passes(self, state: BatchState) -> bool:
        verdict = self.canary_verdict(state)
        if verdict is None:
            return True
        if verdict.failed_share() > self.canary_max_failed:
            self.reason = (
                f"{NOT_SENT}: the canary failed: {verdict.failed} of its {verdict.requests} requests failed or "
                f"were invalid (canary_max_failed={self.canary_max_failed}); first: {'; '.join(verdict.samples)}"
            )
            log.error("Canary: %s", self.reason)
            return False
        estimate = self.canary_estimate(state) or 0.0
        besides = self._spent_before_canary(state) if self.max_cost_usd is not None else 0.0
        if self.max_cost_usd is not None and estimate + besides > self.max_cost_usd + _EPSILON:
            self.reason = (
                f"{NOT_SENT}: max_cost_usd={self.max_cost_usd} would be passed: at the canary's measured tokens "
                f"per request (its cost as the spend counts it) the batch costs about ${estimate:.6f}, besides "
                f"${besides:.6f} spent before it on jobs whose answers it does not have"
            )
            log.error("Budget: %s; no more jobs are created", self.reason)
            return False
        return True

    def canary_estimate(self, state: BatchState) -> float | None:
        """Round 0 at the canary's measured cost per request (the same figure on every resume);
        None before the canary's results are in, or without ``prices``."""
        verdict = self.canary_verdict(state)
        if verdict is None or self.prices is None or self._canary_estimate is not None:
            return self._canary_estimate
        requests = sum(p.requests for p in state.rounds[0].plans)
        paid = self._canary_paid(state)
        measured = paid / max(1, verdict.requests) * requests if paid else verdict.estimated_usd(requests, self.prices)
        self._canary_estimate = round(measured, 9)
        log.info(
            "Canary: %d of %d requests failed; at its measured cost per request the %d requests cost about "
            "$%.6f (max_cost_usd=%s)",
            verdict.failed,
            verdict.requests,
            requests,
            self._canary_estimate,
            self.max_cost_usd,
        )
        return self._canary_estimate

    def _spent_before_canary(self, state: BatchState) -> float:
        """What was paid for before the canary's answers, none of them answers: earlier jobs of the
        canary (failed, lost, uncertain) and what the states this one replaced spent. The same on
        every try (other shards are sent only once the canary passed)."""
        record = state.shards[CANARY]
        unreserved = record.lost_unreserved * self.worst(CANARY, state) if record.lost_unreserved else 0.0
        return round(state.spent_before_usd + (record.lost_usd or 0.0) + unreserved, 9)

    def _canary_paid(self, state: BatchState) -> float:
        """What the spend counts the canary's downloaded job at (answers without usage, unnamed tokens)."""
        record = state.shards[CANARY]
        if record.status is not ShardStatus.DONE:
            return 0.0
        return record.cost_usd if record.cost_usd is not None else self._measure(record, state)

    def canary_verdict(self, state: BatchState) -> CanaryVerdict | None:
        """The verdict on the canary's results, once they are in (None without a canary)."""
        if not self.canary_requests or CANARY not in state.shards:
            return None
        record = state.shards[CANARY]
        if self._verdict is None and record.status in (ShardStatus.DONE, ShardStatus.FAILED):
            requests = state.plan(CANARY).requests
            if record.status is ShardStatus.FAILED:
                self._verdict = CanaryVerdict(requests, requests, {}, [f"the canary's job failed: {record.error}"])
            else:
                sent = [request_digest(json.loads(line).get("request")) for line in self._shard_lines(CANARY, state)]
                with self.parts(CANARY).open("rb") as handle:
                    self._verdict = judge(handle, requests, expected=sent)
        return self._verdict

    def unsent(self, state: BatchState, keys: list[ShardKey]) -> list[ShardRecord]:
        """The records of ``keys`` (pending shards) once the batch stopped: FAILED, ``unsent``."""
        reason = self.reason or f"{NOT_SENT}: the batch stopped creating jobs"
        return [
            state.shards[key].but(status=ShardStatus.FAILED, error=reason, unsent=True)
            for key in keys
            if state.shards[key].status is ShardStatus.PENDING
        ]

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

    # The end -------------------------------------------------------------------------------
    def summary_fields(self, state: BatchState) -> CostFields:
        """What the summary adds: the spend, the reservation (0 once nothing runs), the cap, the canary."""
        fields: CostFields = {}
        if self.max_cost_usd is not None:  # what every job cost, answers later replaced included
            fields["cost_usd"] = self.spent(state)
            fields["cost_reserved_usd"] = self.reserved(state)
            fields["budget_usd"] = self.max_cost_usd
            fields["answers_over_worst_case"] = sum(r.over_worst_case for r in state.shards.values())
        fields["not_sent"] = self.not_sent(state)
        verdict = self.canary_verdict(state)
        if verdict is not None:
            fields["canary"] = {
                "requests": verdict.requests,
                "failed": verdict.failed,
                "tokens_per_request": {k: round(v, 3) for k, v in verdict.per_request().items()},
                "estimated_cost_usd": self.canary_estimate(state),
                "basis": "measured: the canary's cost per request (as the spend counts it) x the requests of round 0",
            }
        return fields

    def stop_error(self, state: BatchState, summary: BatchSummary) -> Exception | None:
        """The error that ends a batch that stopped creating jobs (None if it did not)."""
        if not self.stopped(state):
            return None
        reason = self.reason or next((r.error for r in state.with_status(ShardStatus.FAILED) if r.unsent), "")
        answered, not_sent = summary["succeeded"], self.not_sent(state)
        after = (
            f"{answered} requests got answers (in the destination); {not_sent} were not sent (in the failed file, "
            f"status {NOT_SENT})."
        )
        verdict = self.canary_verdict(state)
        if verdict is not None and verdict.failed_share() > self.canary_max_failed:
            return MaaSCanaryFailedError(
                f"The canary stopped the batch: {reason}. {after} Fix the requests (or raise canary_max_failed) "
                "and run again: a new DAG run with this destination as its reuse_results (and a destination of its "
                "own) pays nothing again for the answers already paid for."
            )
        return MaaSBudgetExceededError(
            f"The budget stopped the batch: {reason}. Spent ${self.spent(state):.6f}, reserved "
            f"${self.reserved(state):.6f}, budget ${self.max_cost_usd}. {after} To continue, raise max_cost_usd "
            "and clear the task (its state keeps the spend), or start a new DAG run with this destination as its "
            "reuse_results and a destination of its own: the answers already paid for are reused, not paid again."
        )
