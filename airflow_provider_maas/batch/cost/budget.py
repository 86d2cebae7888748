"""What the batch may still send: the budget cap (``max_cost_usd``) and the canary, decided before each create.

The reservation rule. Before a shard's create, :meth:`SpendGate.admit` adds

- **spent**: the reported cost (``usageMetadata`` at ``prices``) of every job whose results were
  downloaded, kept in each shard's record (``cost_usd``) in the batch state; the worst case of jobs
  paid without a report (results gone, a job ended FAILED, CANCELLED or EXPIRED, an uncertain
  create cleared: ``lost_usd``); and what the states this one replaced spent (``spent_before_usd``);
- **reserved**: the worst case (``estimates.worst_case_usd``) of every job in flight (a shard CREATING
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

What is spent and reserved is kept by the gate's ledger (:class:`~airflow_provider_maas.batch.cost.spend.SpendLedger`);
the checks of the settings and prices: ``budget_checks.py``; the spend of replaced states:
``spend_before.py``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.results import request_digest
from airflow_provider_maas.batch.answers.schema import AnswerCheck
from airflow_provider_maas.batch.cost.budget_checks import check_same_prices
from airflow_provider_maas.batch.cost.canary import CanaryVerdict, judge
from airflow_provider_maas.batch.cost.spend import EPSILON, NOT_SENT, SpendLedger
from airflow_provider_maas.batch.record.state import ShardKey, ShardStatus
from airflow_provider_maas.exceptions import MaaSBudgetExceededError, MaaSCanaryFailedError

if TYPE_CHECKING:
    from airflow_provider_maas.batch.answers.summary_types import BatchSummary, CostFields
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState, ShardRecord
    from airflow_provider_maas.batch.settings import BatchSettings

log = logging.getLogger(__name__)

#: The canary's shard.
CANARY = ShardKey(0, 0)


class Admission(str, Enum):
    GO = "go"  # create it
    WAIT = "wait"  # not yet (the canary's results are not in)
    STOP = "stop"  # never: the batch stops creating


@dataclass
class SpendGate(SpendLedger):
    """The budget, canary and answer checks of one batch (see the module docstring): the ledger of
    what it spent and reserved (:class:`~airflow_provider_maas.batch.cost.spend.SpendLedger`, whose
    parameters it takes) and the decisions on it.

    :param canary_requests: The canary's size (0: no canary); ``canary_max_failed``: the failed
        share of its requests that stops the batch.
    """

    canary_requests: int = 0
    canary_max_failed: float = 0.5
    reason: str | None = None
    _verdict: CanaryVerdict | None = None
    _canary_estimate: float | None = None
    _unsent_seen: bool | None = None

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
            "canary_max_failed": settings.canary_max_failed,
        }
        return cls(parts=parts, **{**fields, **given})

    @classmethod
    def for_batch(cls, settings: BatchSettings, journal: BatchJournal, state: BatchState) -> SpendGate | None:
        """The budget cap, canary and answer checks of the batch in ``state``, if any is asked for (a
        state whose spend is at other prices is refused here, before any create)."""
        if settings.max_cost_usd is None and not settings.canary_requests and settings.response_schema is None:
            return None
        if settings.prices is not None and check_same_prices(state, settings.prices, journal.uri):
            journal.append(state, [], meta=True)  # the prices the spend is counted at
        check = AnswerCheck(settings.response_schema) if settings.response_schema is not None else None
        return cls.of(settings, journal.part, check=check)

    # Reading the state ---------------------------------------------------------------------
    def stopped(self, state: BatchState) -> bool:
        """True once a create was refused (recorded in the state: a resume finds it)."""
        if self.reason is None and self._unsent_seen is None:  # read once: later refusals set the reason
            self._unsent_seen = any(r.unsent for r in state.with_status(ShardStatus.FAILED))
        return self.reason is not None or bool(self._unsent_seen)

    def not_sent(self, state: BatchState) -> int:
        """Requests of the shards never sent because the batch stopped."""
        return sum(state.plan(r.key).requests for r in state.with_status(ShardStatus.FAILED) if r.unsent)

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
        if spent + reserved + worst > self.max_cost_usd + EPSILON:
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
        if self.max_cost_usd is not None and estimate + besides > self.max_cost_usd + EPSILON:
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
