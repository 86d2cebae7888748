"""The typed, bounded state of one batch: what each shard is waiting for, and which job answers it.

Pure data, no I/O: :mod:`airflow_provider_maas.batch.record.journal` stores it. A shard moves

    PENDING -> CREATING -> RUNNING -> DONE
                  |            |-> PENDING (its job failed, or its results are gone: retried)
                  |            '-> FAILED  (no retries left: its requests get the job's error)
                  '-> PENDING (429: the service did not take the create; next round)

``CREATING`` is the "create in flight" marker (a ``batch.record.create_guard.CreateInFlight``: the record's
``file_name``, ``display_name``, ``clear_epoch``): it is stored BEFORE a create is sent, so a later try
that finds it knows a job may exist (see :mod:`airflow_provider_maas.batch.record.create_guard`).

Shards belong to rounds: round 0 holds the input's shards; later rounds (request-level retries,
:mod:`airflow_provider_maas.batch.answers.pay_once`) hold shards made of the requests that failed in an
earlier round, read from the round's own ``source``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.inputs.shards import ShardPlan

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Format of what the journal stores. A provider reading another version refuses it
#: (:class:`~airflow_provider_maas.exceptions.MaaSStateError`); a new version must migrate version 1
#: (``tests/fixtures/state_v1`` is today's format, loaded by ``tests/test_state_fail_closed.py``).
#: Fields added without a version change must be optional: older readers ignore unknown keys.
STATE_VERSION = 1


class ShardStatus(str, Enum):
    PENDING = "pending"  # nothing sent yet (or its last job failed and it is due again)
    CREATING = "creating"  # a create was (maybe) sent; no answer recorded yet
    RUNNING = "running"  # its job exists and had not ended when last seen
    DONE = "done"  # results downloaded
    FAILED = "failed"  # every attempt failed; its requests go to the failed file


#: Fields stored under the names of earlier releases (``create_guard``: the clear epoch was a "clear round").
STORED_AS = {"clear_epoch": "clear_round"}


@dataclass(frozen=True, slots=True, order=True)
class ShardKey:
    round: int
    index: int

    def __str__(self) -> str:
        return f"{self.index}" if self.round == 0 else f"{self.round}.{self.index}"


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """The changing part of a shard; one journal line holds one whole record (a few hundred bytes).

    :param attempts: Creates sent for this shard (a 429 does not count).
    :param file_name: The uploaded file's name (deterministic: dag, task, run, shard, content hash).
    :param display_name: The display name sent with the create (the console shows it).
    :param clear_epoch: ``max_tries`` of the try that sent the create (see ``create_guard.clear_epoch``).
    :param job_state: The job's last known state.
    :param error: Why the shard's last job failed (the service's message and code), if it did.
    :param reserve_usd: The worst case of the job in flight, reserved against ``max_cost_usd``
        (the ledger of ``batch/cost/spend.py``, :class:`~airflow_provider_maas.batch.cost.spend.SpendLedger`); set
        with the "creating" marker.
    :param cost_usd: What the shard's downloaded results report they cost (at ``prices``).
    :param unsent: Never sent: the batch stopped creating jobs (budget or canary); FAILED.
    :param lost_usd: What earlier jobs of the shard cost, or may have cost, without a cost to
        download: results gone (their reported cost if known, else their reservation), a create
        left uncertain when a person cleared the task (its reservation). Spent, for the cap.
    :param over_worst_case: Answers of its job that reported more prompt tokens than their worst
        case (a file part or a ``cachedContent`` passed its bound): counted at their real usage.
    :param lost_unreserved: Earlier jobs of the shard counted as ``lost_usd`` would be, but created
        without a reservation (a try without ``max_cost_usd``): a try with one counts each at the
        shard's worst case.
    :param created: When the service answered the create of the shard's job (epoch seconds).
    :param ended: When the job ended: its ``endTime`` as the service gave it, else when a poll first
        saw it ended (epoch seconds). The service keeps the results 7 days after it.
    """

    key: ShardKey
    status: ShardStatus = ShardStatus.PENDING
    attempts: int = 0
    file_name: str | None = None
    display_name: str | None = None
    job_name: str | None = None
    clear_epoch: int | None = None
    job_state: str | None = None
    error: str | None = None
    # Issue 22 (batch.cost.budget): optional, absent from older state files.
    reserve_usd: float | None = None
    cost_usd: float | None = None
    unsent: bool = False
    lost_usd: float | None = None
    over_worst_case: int = 0
    lost_unreserved: int = 0
    # Issue 23 (the progress page): optional, absent from older state files.
    created: float | None = None
    ended: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"r": self.key.round, "i": self.key.index, "status": self.status.value}
        for f in fields(self)[2:]:
            value = getattr(self, f.name)
            if value is not None and value != 0:
                data[STORED_AS.get(f.name, f.name)] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        known = {STORED_AS.get(f.name, f.name): f.name for f in fields(cls)[2:]}
        return cls(
            key=ShardKey(int(data["r"]), int(data["i"])),
            status=ShardStatus(data["status"]),
            **{known[k]: v for k, v in data.items() if k in known},
        )

    def but(self, **changes: Any) -> ShardRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Round:
    """The shards of one round: their plans (immutable once written) and where their requests are.

    :param source: URI of the round's requests; None for round 0 (the operator's ``source``).
    """

    number: int
    plans: tuple[ShardPlan, ...]
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "source": self.source,
            "plans": [
                [p.first_line, p.last_line, p.start_offset, p.end_offset, p.requests, p.bytes, p.sha256, p.clean]
                for p in self.plans
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Round:
        plans = tuple(ShardPlan(index, *values) for index, values in enumerate(data["plans"]))
        return cls(number=int(data["number"]), plans=plans, source=data.get("source"))


def fingerprint(plans: tuple[ShardPlan, ...] | list[ShardPlan]) -> str:
    """Identifies an input split one way: equal for the same bytes and the same shard limits."""
    digest = hashlib.sha256()
    for plan in plans:
        digest.update(f"{plan.first_line}:{plan.last_line}:{plan.requests}:{plan.sha256};".encode())
    return digest.hexdigest()


@dataclass(slots=True)
class BatchState:
    """Everything a try needs to go on where the last one stopped.

    :param fingerprint: Of round 0's plans: a retry with a different input starts over.
    :param identity: ``dag.task.run.map_index`` of the task instance that owns the state.
    :param deadline: Absolute ``timeout`` deadline (epoch seconds), or None.
    :param clear_epoch: ``max_tries`` of the try that last took the state over.
    :param resumes: How many times the task resumed after a deferral.
    :param input_key: Digest of the raw input and the settings that shape round 0 (see
        ``round_files.input_key``); None in states written before it was kept.
    :param spent_before_usd: What the states this one replaced (a changed input, ``reuse_results``
        or canary) spent or left in flight: the cap's ledger (``spend.SpendLedger``) counts it as spent.
    :param endpoint: The ENDPOINT its jobs were created on: they are found under that one only.
    :param last_poll: When a poll of the batch's jobs last answered (epoch seconds; the worker's
        polls, or the trigger's that resumed the task), as of the last journal write; None in states
        written before it was kept.
    :param prices: The ``prices`` its USD amounts (``spent_before_usd``, each record's ``cost_usd``,
        ``reserve_usd``, ``lost_usd``) were counted at; None: none counted yet, or a state written
        before they were kept (``budget_checks.check_same_prices``).
    :param tokens_before: The worst case, in tokens (``{"prompt": P, "candidates": O}``), of jobs of
        the states this one replaced that no try could price (no prices known): priced into
        ``spent_before_usd`` by the first try with prices that takes the state; None: none.
    """

    fingerprint: str
    identity: str
    rounds: list[Round]
    input_key: str | None = None
    deadline: float | None = None
    clear_epoch: int | None = None
    resumes: int = 0
    spent_before_usd: float = 0.0
    endpoint: str | None = None
    last_poll: float | None = None
    prices: dict[str, float] | None = None
    tokens_before: dict[str, int] | None = None
    shards: dict[ShardKey, ShardRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for round_ in self.rounds:
            for plan in round_.plans:
                key = ShardKey(round_.number, plan.index)
                self.shards.setdefault(key, ShardRecord(key))

    # Reading -----------------------------------------------------------------------------
    def plan(self, key: ShardKey) -> ShardPlan:
        return self.rounds[key.round].plans[key.index]

    def with_status(self, *statuses: ShardStatus) -> Iterator[ShardRecord]:
        return (record for record in self.shards.values() if record.status in statuses)

    def count(self, *statuses: ShardStatus) -> int:
        return sum(1 for _ in self.with_status(*statuses))

    def by_job(self) -> dict[str, ShardRecord]:
        """Running shards by job name."""
        return {r.job_name: r for r in self.with_status(ShardStatus.RUNNING) if r.job_name}

    @property
    def finished(self) -> bool:
        """Every shard is DONE or FAILED."""
        return all(r.status in (ShardStatus.DONE, ShardStatus.FAILED) for r in self.shards.values())

    # Changing ----------------------------------------------------------------------------
    def add_round(self, round_: Round) -> None:
        """Append the next round (request-level retries); its shards start PENDING."""
        if round_.number != len(self.rounds):
            raise ValueError(f"round {round_.number} follows round {len(self.rounds) - 1}")
        self.rounds.append(round_)
        for plan in round_.plans:
            key = ShardKey(round_.number, plan.index)
            self.shards.setdefault(key, ShardRecord(key))

    def apply(self, record: ShardRecord) -> None:
        if record.key not in self.shards:
            raise KeyError(f"shard {record.key} is not part of this batch")
        self.shards[record.key] = record

    def meta(self) -> dict[str, Any]:
        """The batch-level fields, as a journal line stores them."""
        meta: dict[str, Any] = {"deadline": self.deadline, "clear_round": self.clear_epoch, "resumes": self.resumes}
        if self.spent_before_usd:
            meta["spent_before_usd"] = self.spent_before_usd
        if self.endpoint is not None:  # optional: states written before it was kept have none
            meta["endpoint"] = self.endpoint
        if self.last_poll is not None:
            meta["last_poll"] = self.last_poll
        if self.prices is not None:
            meta["prices"] = self.prices
        if self.tokens_before:
            meta["tokens_before"] = self.tokens_before
        return meta

    def apply_meta(self, data: dict[str, Any]) -> None:
        self.deadline = data.get("deadline")
        self.clear_epoch = data.get("clear_round")
        self.resumes = int(data.get("resumes") or 0)
        self.spent_before_usd = float(data.get("spent_before_usd") or 0.0)
        self.endpoint = data.get("endpoint") or self.endpoint
        polled = data.get("last_poll")
        if isinstance(polled, (int, float)) and not isinstance(polled, bool):
            self.last_poll = max(self.last_poll or 0.0, float(polled))
        prices = data.get("prices")  # not a dict of numbers: unknown prices (a spend is then refused)
        if isinstance(prices, dict) and all(isinstance(v, (int, float)) for v in prices.values()):
            self.prices = {str(k): float(v) for k, v in prices.items()}
        else:
            self.prices = None
        tokens = data.get("tokens_before")  # not counts: none (states written before it was kept)
        if isinstance(tokens, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in tokens.values()):
            self.tokens_before = {str(k): v for k, v in tokens.items()} or None
        else:
            self.tokens_before = None
