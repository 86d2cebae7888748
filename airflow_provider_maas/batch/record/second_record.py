"""The second record of a batch: where its state is, and the job names a failed write could not store.

It lives where :mod:`.task_record` decides (:data:`RECORD`: ``task_state_store`` on Airflow >= 3.3, an
Airflow Variable ``maas_batch.<digest>`` before), a few hundred bytes beside the batch state
(:mod:`.journal`): the state's location and the newest journal object that held "creating" markers
(:func:`remember`, :func:`record_mark`: a journal that ends before it lost its newest objects, and
:mod:`.recovery` refuses it), and the job names a failed journal write could not store
(:func:`save_job_names`, in a compact form), to which the next try reattaches
(:func:`rescued_job_names`). The Variable is removed once the task succeeded (:func:`forget`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.record.create_guard import clear_epoch
from airflow_provider_maas.batch.record.state import STATE_VERSION, ShardKey
from airflow_provider_maas.batch.record.task_record import BATCH_VARIABLE_PREFIX, forget_record, task_record

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_provider_maas.batch.record.journal import BatchJournal

log = logging.getLogger(__name__)

#: Key in ``context["task_state_store"]`` (Airflow >= 3.3): where the batch state is, and its format.
STATE_KEY = "maas_batch_state"
#: Key in ``task_state_store``: job names created but not yet journalled (a failed write).
JOBS_KEY = "maas_batch_jobs"
#: Largest value stored under :data:`JOBS_KEY` (Airflow warns above 65,535 bytes).
MAX_SAVED_BYTES = 60_000
#: The second record, as messages name it.
RECORD = "task_state_store (an Airflow Variable before Airflow 3.3)"


def _store(context: Any) -> Any:
    return task_record(context, BATCH_VARIABLE_PREFIX)


def forget(context: Any) -> None:
    """The batch succeeded, its results are written: the Variable (Airflow < 3.3) goes."""
    forget_record(context, BATCH_VARIABLE_PREFIX)


def state_pointer(context: Any) -> Any:
    """The value :func:`remember` wrote under :data:`STATE_KEY`; None if there is none (or no store)."""
    store = _store(context)
    return store.get(STATE_KEY) if store is not None else None


def remember(context: Any, journal: BatchJournal, *, finished: bool = False) -> None:
    """Record where the state is in :data:`RECORD`, a few hundred bytes: its location, format and
    clear epoch; ``seq``, the newest journal object known to be written (``journal.marked``: rewritten
    with each flush of "creating" markers, one more write per batch of creates); ``finished`` once the
    results are written (the state is then removed on purpose)."""
    store = _store(context)
    # "open": written by a provider that marks the end ("finished"); older pointers have neither
    value: dict[str, Any] = {"location": journal.uri, "version": STATE_VERSION, "open": not finished}
    if (epoch := clear_epoch(context)) is not None:  # the clear epoch the batch last ran in
        value["round"] = epoch
    if journal.marked and not finished:
        value["seq"] = journal.marked
    if finished:
        value["finished"] = True
    if store is not None and store.get(STATE_KEY) != value:
        store.set(STATE_KEY, value)


def record_mark(context: Any, journal: BatchJournal) -> None:
    """``journal.on_marked``: record the newest journal object with "creating" markers; for a new
    plan (``journal.marked`` is 0), drop an older mark, which must not outlive the objects it counted
    (no pointer is written where there was none: a plan removed at once leaves nothing behind)."""
    if journal.marked:
        remember(context, journal)
        return
    store = _store(context)
    pointer = store.get(STATE_KEY) if store is not None else None
    if isinstance(pointer, dict) and "seq" in pointer:
        store.set(STATE_KEY, {key: value for key, value in pointer.items() if key != "seq"})


# The second record of job names -----------------------------------------------------------------
def _saved(context: Any) -> dict[str, Any]:
    store = _store(context)
    value = store.get(JOBS_KEY) if store is not None else None
    return value if isinstance(value, dict) and isinstance(value.get("jobs"), dict) else {}


def saved_job_names(context: Any) -> list[str]:
    """Every job name :func:`save_job_names` kept, for whatever location."""
    return [name for name in _saved(context).get("jobs", {}).values() if isinstance(name, str)]


def save_job_names(context: Any, location: str, jobs: Iterable[tuple[ShardKey, str]]) -> bool:
    """Keep ``jobs`` (shard, job name) in :data:`RECORD` with those already kept for
    ``location``; False if there is no store (outside an Airflow worker), the value would exceed
    :data:`MAX_SAVED_BYTES`, or the store failed."""
    store = _store(context)
    if store is None:
        return False
    saved = _saved(context)
    kept = dict(saved.get("jobs", {})) if saved.get("location") == location else {}
    kept.update({f"{key.round}.{key.index}": name for key, name in jobs})
    value = {"location": location, "jobs": kept}
    if len(json.dumps(value)) > MAX_SAVED_BYTES:
        log.error("%d job names do not fit in %s (%d bytes at most)", len(kept), RECORD, MAX_SAVED_BYTES)
        return False
    try:
        store.set(JOBS_KEY, value)
    except Exception:  # the store is the fallback: its failure must not hide the write's
        log.exception("Saving the job names in %s failed too", RECORD)
        return False
    return True


def rescued_job_names(context: Any, location: str) -> dict[ShardKey, str]:
    """Job names :func:`save_job_names` kept for the state at ``location``."""
    saved = _saved(context)
    if saved.get("location") != location:
        return {}
    found = {}
    for key, name in saved["jobs"].items():
        round_, _, index = str(key).partition(".")
        if round_.isdigit() and index.isdigit() and isinstance(name, str):
            found[ShardKey(int(round_), int(index))] = name
    return found


def forget_job_names(context: Any) -> None:
    """The kept job names are in the journal now."""
    store = _store(context)
    if store is not None and _saved(context):
        store.set(JOBS_KEY, {})
