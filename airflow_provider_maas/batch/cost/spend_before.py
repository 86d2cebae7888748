"""What the states a batch replaced spent: the spend an earlier plan left behind, carried into the new state.

When a batch starts over (its input or settings changed), the jobs of the state it replaces were
paid for, or still run and will be: :func:`spend_left_behind` counts them, at the state's prices
(``spent_before_usd``), or in worst-case tokens when no prices are known (``tokens_before``,
priced later by :func:`~airflow_provider_maas.batch.cost.budget_checks.check_same_prices`). Jobs of
that state that hold no amount (created or downloaded by a try without the cap or the prices) are
priced here through a :class:`~airflow_provider_maas.batch.cost.budget.SpendGate` of this try's
settings.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.cost.budget import SpendGate
from airflow_provider_maas.batch.cost.budget_checks import usd_of_tokens
from airflow_provider_maas.batch.cost.estimates import Tokens, worst_case_usd
from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.exceptions import MaaSInputChangedError, MaaSInputError

if TYPE_CHECKING:
    from airflow_provider_maas.batch.inputs.shards import ShardPlan
    from airflow_provider_maas.batch.record.state import BatchState, ShardRecord
    from airflow_provider_maas.batch.settings import BatchSettings

#: Shards an error names at most.
_NAMED = 5


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
    (:func:`~airflow_provider_maas.batch.cost.budget_checks.check_same_prices`).
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
