"""How far a batch is, read from its state: the one reader behind the progress page (issue 23).

:func:`read_progress` replays the state with :meth:`BatchJournal.load` (the journal alone knows the
format) and returns a JSON-ready dict: shards by status, requests by what their shard is doing,
the jobs (name, state, attempts, when their results were downloaded and until when the service
keeps them), failures with their reasons, and the answers counted so far in the downloaded parts
(answered, failed, missing, tokens, cost at ``prices``). It never calls the service and never
returns a location, a key or a connection field.

Replaying the state is the cost of a call on a large batch (0.3 s at 10,000 shards): the replayed
state is kept per process (:data:`CACHED_STATES` batches, least recently read dropped first), keyed
by the names, sizes and modification times of the state's objects (manifest, snapshots, journal
objects): a refresh while nothing was written answers from it; any write (a new journal object, a
snapshot, a manifest rewritten) changes the key and the state is replayed again. The answers in
the downloaded parts are counted by :mod:`.answer_counts`, a part read once per process within a
time budget per call. Fields a newer state format adds (a budget, a spend record, a lease) are
passed through under ``extra`` when they are plain values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.answer_counts import MAX_REASONS, count_answers, short
from airflow_provider_maas.batch.record.state import BatchState, ShardRecord, ShardStatus

if TYPE_CHECKING:
    from airflow_provider_maas.batch.record.journal import BatchJournal

#: The service keeps a job's results this long after the job ended.
RESULTS_KEPT_SECONDS = 7 * 24 * 3600
#: Rows of the jobs table returned by default (running and failed first); ``jobs_total`` counts all.
DEFAULT_JOBS_LIMIT = 200
#: Batches whose replayed state a process keeps (a 10,000-shard state holds about 10 MB).
CACHED_STATES = 4

_KNOWN_STATE_FIELDS = {
    "fingerprint",
    "identity",
    "rounds",
    "shards",
    "deadline",
    "clear_epoch",
    "resumes",
    "endpoint",
    "last_poll",
    "prices",
    "tokens_before",
}
_KNOWN_RECORD_FIELDS = {f.name for f in dataclasses.fields(ShardRecord)}
#: Extra fields whose names look like a secret or a location are never passed through.
_HIDDEN = re.compile(r"key|token|secret|passw|cred|auth|url|uri|path|host|location|source|destination", re.I)
_ORDER = {
    ShardStatus.RUNNING: 0,
    ShardStatus.CREATING: 1,
    ShardStatus.FAILED: 2,
    ShardStatus.PENDING: 3,
    ShardStatus.DONE: 4,
}


_states_lock = threading.Lock()
#: ``{state uri: (key of its objects, replayed state)}``, see :func:`_load`.
_states: OrderedDict[str, tuple[tuple[Any, ...], BatchState]] = OrderedDict()
_STATE_OBJECT = re.compile(r"manifest\.json|snapshot-\d+\.json")


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


def _plain_extras(obj: Any, known: set[str]) -> dict[str, Any]:
    """Dataclass fields of ``obj`` this reader does not know, when plain values with harmless names."""
    extras: dict[str, Any] = {}
    if not dataclasses.is_dataclass(obj):
        return extras
    for f in dataclasses.fields(obj):
        if f.name in known or f.name.startswith("_") or _HIDDEN.search(f.name):
            continue
        value = getattr(obj, f.name, None)
        if value is None or isinstance(value, (bool, int, float, str)):
            extras[f.name] = value
        elif isinstance(value, dict) and all(
            isinstance(v, (bool, int, float, str, type(None))) for v in value.values()
        ):
            extras[f.name] = {str(k): v for k, v in value.items() if not _HIDDEN.search(str(k))}
    return extras


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time (epoch seconds) of an fsspec ``ls(detail=True)`` entry, local or object store."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _listing(folder: Any) -> dict[str, dict[str, Any]]:
    """``{name: fsspec info}`` of a folder in one listing call ({} when it does not exist)."""
    try:
        entries = folder.fs.ls(folder.path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {str(e.get("name", "")).rstrip("/").rsplit("/", 1)[-1]: e for e in entries if isinstance(e, dict)}


def read_progress(
    journal: BatchJournal,
    *,
    prices: dict[str, float] | None = None,
    started: float | None = None,
    now: float | None = None,
    jobs_limit: int = DEFAULT_JOBS_LIMIT,
    count_budget: float = 0.5,
) -> dict[str, Any] | None:
    """The progress of the batch whose state ``journal`` holds; None when there is no state.

    :param prices: USD per 1,000,000 tokens (the operator's ``prices``): adds ``cost_usd`` so far.
    :param started: When the task instance started (epoch seconds): for the estimated end.
    :param jobs_limit: Rows of ``jobs`` returned (running first, then failed, pending, done).
    :param count_budget: Seconds this call may spend reading parts not counted yet.
    """
    written = _listing(journal.root / "journal")
    state = _load(journal, written)
    if state is None:
        return None
    now = time.time() if now is None else now
    parts = _listing(journal.part_dir())
    return _progress(journal, state, parts, written, prices, started, now, jobs_limit, count_budget)


def _objects_key(entries: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    return tuple(sorted((name, info.get("size"), _mtime(info)) for name, info in entries.items()))


def _load(journal: BatchJournal, written: dict[str, dict[str, Any]]) -> BatchState | None:
    """The replayed state, from the cache while none of its objects changed (the key is taken before
    the replay: a write during it makes the next call replay again)."""
    root = {name: info for name, info in _listing(journal.root).items() if _STATE_OBJECT.fullmatch(name)}
    key = (_objects_key(root), _objects_key(written))
    with _states_lock:
        cached = _states.get(journal.uri)
        if cached is not None and cached[0] == key:
            _states.move_to_end(journal.uri)
            return cached[1]
    state = journal.load()
    with _states_lock:
        _states.pop(journal.uri, None)
        if state is not None:
            _states[journal.uri] = (key, state)
            while len(_states) > CACHED_STATES:
                _states.popitem(last=False)
    return state


def _progress(
    journal: BatchJournal,
    state: BatchState,
    parts: dict[str, dict[str, Any]],
    written: dict[str, dict[str, Any]],
    prices: dict[str, float] | None,
    started: float | None,
    now: float,
    jobs_limit: int,
    count_budget: float,
) -> dict[str, Any]:
    shards = Counter(r.status.value for r in state.shards.values())
    requests = Counter[str]()
    for record in state.shards.values():
        requests[record.status.value] += state.plan(record.key).requests
    total_requests = sum(p.requests for p in state.rounds[0].plans)
    finished_requests = requests[ShardStatus.DONE.value] + requests[ShardStatus.FAILED.value]
    all_requests = sum(requests.values())

    answers = count_answers(journal, state, parts, prices, count_budget)
    jobs, failures = _jobs(journal, state, parts, jobs_limit)
    last_update = max((m for m in (_mtime(i) for i in written.values()) if m), default=None)
    return {
        "found": True,
        "kind": "batch",
        "shards": {"total": len(state.shards), **{s.value: shards[s.value] for s in ShardStatus}},
        "requests": {
            "total": total_requests,
            "in_shards": {s.value: requests[s.value] for s in ShardStatus},
            "finished_fraction": round(finished_requests / all_requests, 4) if all_requests else 1.0,
            "retried": sum(p.requests for r in state.rounds[1:] for p in r.plans),
        },
        "rounds": [
            {"round": r.number, "shards": len(r.plans), "requests": sum(p.requests for p in r.plans)}
            for r in state.rounds
        ],
        "answers": answers,
        "jobs": jobs,
        "jobs_total": len(state.shards),
        "jobs_created": sum(r.attempts for r in state.shards.values()),
        "failures": failures,
        "resumes": state.resumes,
        "deadline": _iso(state.deadline),
        "last_update": _iso(last_update),
        "last_poll": _iso(state.last_poll),
        "estimated_end": _iso(_estimated_end(started, now, finished_requests, all_requests)),
        "finished": state.finished,
        "extra": {**_plain_extras(state, _KNOWN_STATE_FIELDS), **_money(state)},
    }


def _money(state: BatchState) -> dict[str, Any]:
    """Sums of the per-shard money fields a newer state records (``cost_usd`` of downloaded results,
    ``reserve_usd`` of jobs in flight, ``unsent`` shards), when present."""
    found: dict[str, Any] = {}
    records = list(state.shards.values())
    costs = [c for r in records if isinstance(c := getattr(r, "cost_usd", None), (int, float))]
    if costs:
        found["recorded_cost_usd"] = round(sum(costs), 9)
    in_flight = (ShardStatus.CREATING, ShardStatus.RUNNING)
    reserves = [
        c for r in records if r.status in in_flight and isinstance(c := getattr(r, "reserve_usd", None), (int, float))
    ]
    if reserves:
        found["reserved_usd"] = round(sum(reserves), 9)
    unsent = sum(1 for r in records if getattr(r, "unsent", False) is True)
    if unsent:
        found["unsent_shards"] = unsent
    return found


def _estimated_end(started: float | None, now: float, finished: int, total: int) -> float | None:
    """Linear in the requests whose shard finished since the task started."""
    if started is None or not finished or finished >= total or now <= started:
        return None
    return now + (total - finished) * (now - started) / finished


def _jobs(
    journal: BatchJournal, state: BatchState, parts: dict[str, dict[str, Any]], limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records = sorted(state.shards.values(), key=lambda r: (_ORDER[r.status], r.key))
    rows = []
    for record in records[: max(0, limit)]:
        # States written before the end was recorded: the download's time (the end, within a poll).
        downloaded = _mtime(parts.get(journal.part_name(record.key)) or {})
        ended = record.ended or (downloaded if record.status is ShardStatus.DONE else None)
        with_results = record.status in (ShardStatus.DONE, ShardStatus.RUNNING)
        row: dict[str, Any] = {
            "shard": str(record.key),
            "status": record.status.value,
            "name": record.job_name,
            "display_name": record.display_name,
            "state": record.job_state,
            "attempts": record.attempts,
            "requests": state.plan(record.key).requests,
            "created": _iso_any(record.created),
            "ended": _iso_any(ended),
            "results_until": _iso(ended_at + RESULTS_KEPT_SECONDS)
            if with_results and (ended_at := _epoch(ended))
            else None,
            "error": short(record.error) if record.error else None,
        }
        extras = _plain_extras(record, _KNOWN_RECORD_FIELDS)
        if extras:
            row["extra"] = extras
        rows.append(row)
    with_error = [r for r in records if r.error]
    reasons = Counter(short(r.error) for r in with_error)
    failures = {
        "failed_shards": sum(1 for r in with_error if r.status is ShardStatus.FAILED),
        "retried_shards": sum(1 for r in with_error if r.status is not ShardStatus.FAILED),
        "reasons": [{"reason": reason, "shards": n} for reason, n in reasons.most_common(MAX_REASONS)],
    }
    return rows, failures


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _iso_any(value: Any) -> str | None:
    return _iso(_epoch(value))


def job_progress(job: Any) -> dict[str, Any]:
    """The progress of a chain operator's one job, from what its task left in XCom: the job's name
    (``MaaSCreateBatchJobOperator``) or the job resource (``MaaSBatchJobSensor`` once it ended)."""
    if isinstance(job, str):
        return {"found": True, "kind": "job", "job": {"name": job, "state": None}}
    if not isinstance(job, dict) or not job.get("name"):
        return {"found": False, "kind": "job"}
    stats = job.get("completionStats") if isinstance(job.get("completionStats"), dict) else {}
    keep = ("name", "displayName", "state", "createTime", "updateTime", "endTime")
    row: dict[str, Any] = {k: job[k] for k in keep if isinstance(job.get(k), (str, int, float))}
    row["stats"] = {k: v for k, v in (stats or {}).items() if isinstance(v, (int, float, str))}
    ended = _epoch(job.get("endTime"))
    row["results_until"] = _iso(ended + RESULTS_KEPT_SECONDS) if ended else None
    error = job.get("error")
    if isinstance(error, dict):
        row["error"] = short(error.get("message") or error)
    return {"found": True, "kind": "job", "job": row}
