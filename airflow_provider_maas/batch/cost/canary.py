"""The canary: the first N requests go out as one job; the rest waits for its answers.

:func:`split_first` plans the canary as shard 0 of round 0 (the plan depends only on the input
bytes and N, so every try finds the same one). :func:`judge` reads the canary's downloaded results:
the share of failed or invalid answers, and the tokens per request that give the batch's measured
estimate. Both are pure: the :class:`~airflow_provider_maas.batch.cost.budget.SpendGate` acts on them.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING

from airflow_provider_maas.batch.answers.results import ResultSummary, iter_results, request_digest
from airflow_provider_maas.batch.cost.budget_checks import (  # noqa: F401 (their earlier home: still importable from here)
    MAX_CANARY_REQUESTS,
    check_canary,
)
from airflow_provider_maas.batch.inputs.shards import ShardPlan, _Range

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

#: Failed answers quoted in the canary's error.
MAX_QUOTED = 3


def split_first(handle: IO[bytes], plans: list[ShardPlan], count: int) -> list[ShardPlan]:
    """``plans`` with shard 0 cut after its first ``count`` requests (the canary), the others
    renumbered; unchanged when shard 0 holds ``count`` requests or fewer. ``handle`` is the input
    the plans were made of (seekable)."""
    if not count or not plans or plans[0].requests <= count:
        return plans
    first = plans[0]
    handle.seek(first.start_offset)
    reader = _Range(handle, first.end_offset - first.start_offset)
    data = b""
    while chunk := reader.read(1 << 20):
        data += chunk
    pieces: list[list[tuple[int, int, bytes]]] = [[], []]  # (line number, offset, line) of each piece
    line_number, offset = first.first_line, first.start_offset
    for line in data.split(b"\n"):
        if offset >= first.end_offset:
            break
        if line and not line.isspace():
            pieces[len(pieces[0]) >= count].append((line_number, offset, line))
        line_number += 1
        offset += len(line) + 1
    made = [_plan(index, piece, first) for index, piece in enumerate(pieces)]
    return made + [replace(plan, index=plan.index + 1) for plan in plans[1:]]


def _plan(index: int, lines: list[tuple[int, int, bytes]], whole: ShardPlan) -> ShardPlan:
    digest = hashlib.sha256()
    size = 0
    clean = True
    for number, (line_number, _, line) in enumerate(lines):
        digest.update(line + b"\n")
        size += len(line) + 1
        if number and line_number != lines[number - 1][0] + 1:
            clean = False  # a blank line between two requests
    first_line, start = lines[0][0], lines[0][1]
    last_line, last_offset, last = lines[-1]
    end = min(last_offset + len(last) + 1, whole.end_offset)
    if end - start != size:  # the input's last line has no newline
        clean = False
    return ShardPlan(index, first_line, last_line, start, end, len(lines), size, digest.hexdigest(), clean)


@dataclass
class CanaryVerdict:
    """What the canary's answers say.

    :param failed: Requests that failed or whose answer is invalid.
    :param tokens: ``ResultSummary.tokens`` of its answers (what it cost).
    """

    requests: int
    failed: int
    tokens: dict[str, int]
    samples: list[str] = field(default_factory=list)

    def failed_share(self) -> float:
        return self.failed / self.requests if self.requests else 1.0

    def per_request(self) -> dict[str, float]:
        """Measured tokens per request (each category)."""
        return {name: value / max(1, self.requests) for name, value in self.tokens.items()}

    def estimated_usd(self, requests: int, prices: Mapping[str, float]) -> float:
        """What ``requests`` requests cost at the canary's measured tokens per request."""
        from airflow_provider_maas.batch.cost.prices import cost_of

        per = self.per_request()
        cost = cost_of({name: round(value * requests) for name, value in per.items()}, prices)
        return math.inf if cost is None else cost  # not a finite number: over any cap


def judge(results: IO[bytes], requests: int, expected: Iterable[bytes] | None = None) -> CanaryVerdict:
    """The verdict on the canary's results file (``requests``: how many it sent; a missing answer
    counts as failed). ``expected``: the digests (``results.request_digest``) of the requests it
    sent; with them, an answer written twice does not stand in for one left out."""
    summary = ResultSummary(max_failure_samples=MAX_QUOTED)
    wanted = Counter(expected) if expected is not None else None
    answered = 0  # requests with a successful answer, each counted once
    for record in iter_results(results):
        summary.add(record)
        if wanted is not None and record.succeeded:
            digest = request_digest(record.request) if record.request is not None else None
            if digest is None:  # no echo to match: counted as it comes
                answered += 1
            elif wanted[digest] > 0:
                wanted[digest] -= 1
                answered += 1
    failed = summary.failed + max(0, requests - summary.requests)
    if wanted is not None:
        failed = max(failed, requests - answered)
    samples = [f"line {line}: {error[:300]}" for line, error in summary.failure_samples]
    return CanaryVerdict(requests=requests, failed=min(failed, requests), tokens=dict(summary.tokens), samples=samples)
