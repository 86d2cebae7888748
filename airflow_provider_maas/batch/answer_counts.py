"""The answers counted so far in a batch's downloaded parts, for the progress page (:mod:`.progress`).

Reading the parts is the only cost of the page that grows with the answers: each part is read once
per process (parts never change once written; a cache keyed by name and size keeps the counts, for
:data:`CACHED_BATCHES` batches), and one call reads parts for at most ``count_budget`` seconds;
``answers.counted_parts`` says how many were counted, so the page shows the totals filling in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.results import TOKEN_KEYS, ResultSummary, iter_results
from airflow_provider_maas.batch.cost.prices import check_prices, cost_of
from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.exceptions import MaaSInputError

if TYPE_CHECKING:
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState

#: Failure reasons returned (the most frequent first).
MAX_REASONS = 10
#: Longest error text returned.
MAX_ERROR_CHARS = 300
#: Batches whose part counts a process keeps (least recently read dropped first).
CACHED_BATCHES = 64


@dataclasses.dataclass
class _PartCounts:
    size: int
    summary: dict[str, int]
    reasons: Counter[str]


_cache: OrderedDict[str, dict[str, _PartCounts]] = OrderedDict()
_lock = threading.Lock()


def short(text: Any) -> str:
    """An error text as the page shows it: at most :data:`MAX_ERROR_CHARS` characters."""
    text = str(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _count_part(path: Any) -> tuple[dict[str, int], Counter[str]]:
    summary = ResultSummary(max_failure_samples=0)
    reasons: Counter[str] = Counter()
    with path.open("rb") as handle:
        for record in iter_results(handle):
            summary.add(record)
            if not record.succeeded:
                reasons[short(record.error or record.status or "no response")] += 1
    return {
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "missing": summary.missing,
        **summary.tokens,
    }, reasons


def count_answers(
    journal: BatchJournal,
    state: BatchState,
    parts: dict[str, dict[str, Any]],
    prices: dict[str, float] | None,
    budget: float,
) -> dict[str, Any]:
    """The ``answers`` of the progress: what the downloaded parts of done and running shards hold,
    summed; parts not counted yet are read for at most ``budget`` seconds (the rest next time)."""
    with _lock:
        counted = _cache.pop(journal.uri, {})
        _cache[journal.uri] = counted
        while len(_cache) > CACHED_BATCHES:
            _cache.popitem(last=False)
    done = [journal.part_name(r.key) for r in state.with_status(ShardStatus.DONE, ShardStatus.RUNNING)]
    deadline = time.monotonic() + budget
    part_dir = journal.part_dir()
    for name in done:
        info = parts.get(name)
        if info is None:
            continue
        size = int(info.get("size") or 0)
        cached = counted.get(name)
        if cached is not None and cached.size == size:
            continue
        if time.monotonic() > deadline:
            break
        try:
            summary, reasons = _count_part(part_dir / name)
        except (OSError, ValueError):  # being replaced, or not a results file: counted next time
            continue
        counted[name] = _PartCounts(size, summary, reasons)
    totals = Counter[str]()
    reasons = Counter[str]()
    present = 0
    for name in done:
        item = counted.get(name)
        if item is not None and name in parts:
            totals.update(item.summary)
            reasons.update(item.reasons)
            present += 1
    answers: dict[str, Any] = {
        "counted_parts": present,
        "parts": sum(1 for name in done if name in parts),
        "answered": totals["succeeded"],
        "failed": totals["failed"],
        "missing": totals["missing"],
        "tokens": {name: totals[name] for name in TOKEN_KEYS},
        "reasons": [{"reason": reason, "requests": n} for reason, n in reasons.most_common(MAX_REASONS)],
    }
    with contextlib.suppress(MaaSInputError):  # prices as the operator checked them; anything else: no cost
        checked = check_prices(prices)
        if checked:
            answers["cost_usd"] = cost_of(answers["tokens"], checked)
    return answers
