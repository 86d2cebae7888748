"""One writer per batch state, one owner per destination.

**One writer.** Each try of the batch operator takes the state's lease (:func:`take_lease`): it writes
``lease.json`` (owner token, host, process, try number, time) into the state's folder before it
reads the state. The newest try always wins: there is no expiry to wait for. Before every journal
write and again after the "creating" markers are stored, just before the creates are sent, a try
checks that the lease is still its own (:func:`check_lease`); a try whose lease was taken (a zombie
still running after its retry started, ``airflow tasks test`` on a live run) stops with
:class:`~airflow_provider_maas.exceptions.MaaSStateError` without creating. Because the new owner
writes its lease before it reads the state, and the old owner checks after its markers are stored,
the new owner either sees those markers or the old owner sees the new lease: never both miss. A try
that found no state folder (a new batch) wrote no lease: before its plan replaces what is stored, a
lease that is not its own means another try planned the batch meanwhile, and it stops
(:func:`refuse_planned_meanwhile`). The lease is checked again before the results are written. On
object stores this needs read-after-write consistency for one key, which S3 and GCS give; each check
is one small GET.

**One owner per destination.** The state lives in ``.<destination name>.maas/<identity>/``: a folder
of another identity there is another task instance (a mapped task, a backfill run) writing the same
destination, whose answers this one would overwrite. :func:`refuse_shared_destination` stops before
anything is uploaded. Task instances that write it in turn (mapped instances of one run, backfill runs,
a daily schedule with a fixed destination) never share a state: the one that finished records itself
in the destination's record, ``.<name>.origin.json`` (:func:`record_writer`), and the next refuses while
the destination is there (:func:`refuse_written_by_other`); the same task instance again (a clear after
success) may rewrite it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_maas.batch.record.origin import MAX_RECORD, origin_path
from airflow_provider_maas.exceptions import MaaSStateError
from airflow_provider_maas.storage import atomic_writer, uri_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

LEASE = "lease.json"
#: Key of the destination's record (``.<name>.origin.json``): which task instance wrote it last.
WRITTEN = "written_by"


class StateFolder(Protocol):
    """What the checks here read of a batch state (:class:`~airflow_provider_maas.batch.record.journal.BatchJournal`
    is one): its folder, its URI for messages, and this try's lease. The journal imports this module,
    never the other way round."""

    root: ObjectStoragePath
    lease: dict[str, Any] | None

    @property
    def uri(self) -> str: ...


class LeaseLost(MaaSStateError):
    """Another try of this task instance took the batch state's lease."""


def new_owner(context: Any) -> dict[str, Any]:
    """This try's lease: a fresh token, and where and when it runs (for the other try's message)."""
    ti = context.get("ti") if hasattr(context, "get") else None
    return {
        "owner": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "try_number": getattr(ti, "try_number", None),
        "taken": round(time.time(), 3),
    }


def take_lease(journal: StateFolder, lease: dict[str, Any]) -> None:
    """Make ``lease`` the state's (before reading it); later writes of ``journal`` check it. Where
    there is no state folder yet, the lease is written with the new state (``BatchJournal.create``):
    a try that stops on bad input leaves nothing behind."""
    journal.lease = lease
    if journal.root.exists():
        write_lease(journal)


def write_lease(journal: StateFolder) -> None:
    if journal.lease is not None:
        with atomic_writer(journal.root / LEASE) as out:
            out.write(json.dumps(journal.lease).encode())


def check_lease(journal: StateFolder) -> None:
    """Raise :class:`LeaseLost` unless the state's lease is still this try's."""
    if journal.lease is None:
        return
    path = journal.root / LEASE
    try:
        with path.open("rb") as handle:
            current = json.loads(handle.read())
    except FileNotFoundError:
        current = None
    except (OSError, ValueError) as err:
        current = {"owner": f"unreadable ({type(err).__name__}: {err})"}
    if isinstance(current, dict) and current.get("owner") == journal.lease["owner"]:
        return
    if current is None:
        raise LeaseLost(
            f"The batch state at {journal.uri} was removed while this try ran (its {LEASE} is gone): this try "
            "creates nothing more and stops."
        )
    who = (
        f"try {current.get('try_number')} on {current.get('host')} (pid {current.get('pid')}, "
        f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(current.get('taken') or 0))} UTC)"
        if isinstance(current, dict) and "host" in current
        else str(current.get("owner") if isinstance(current, dict) else current)
    )
    raise LeaseLost(
        f"Another try of this task instance took over the batch state at {journal.uri}: {who}. Two live "
        "tries (a try declared a zombie while still running, or 'airflow tasks test' on a live run) would "
        "pay twice, so this try creates nothing more and stops; the other one goes on with the batch, unless "
        "it found creates of this try in flight (its error then says so)."
    )


def refuse_planned_meanwhile(journal: StateFolder) -> None:
    """Before a new plan replaces whatever is stored: a try that found no state folder wrote no lease
    (:func:`take_lease`); if one is there now and not its own, another live try of this task instance
    planned the batch meanwhile (and may have created jobs): stop, wiping nothing."""
    if journal.lease is None or not (journal.root / LEASE).exists():
        return
    try:
        check_lease(journal)
    except LeaseLost as err:
        raise LeaseLost(
            f"Another try of this task instance planned the batch at {journal.uri} while this one was planning "
            f"it; its state (and the jobs it may have created) is left alone. {err}"
        ) from None


def refuse_shared_destination(journal: StateFolder, *, remove_plan: Callable[[], None] | None = None) -> None:
    """Stop if another task instance keeps a batch state (a manifest) for the same destination: both
    would write it and one's paid answers would be lost. Called before this try writes anything, and
    again right after it planned a new batch, for two instances that started at once, with
    ``remove_plan`` (the journal's ``remove_plan``): a fresh plan has created nothing, so it is removed
    (answers kept from an earlier plan stay) before stopping, and neither blocks the other."""
    folder = journal.root.parent
    try:
        others = sorted(
            (c for c in folder.iterdir() if c.name != journal.root.name and (c / "manifest.json").exists()),
            key=lambda c: c.name,
        )
    except (FileNotFoundError, NotADirectoryError):
        return
    if not others:
        return
    if remove_plan is not None:
        remove_plan()
    names = ", ".join(child.name for child in others[:5])
    raise MaaSStateError(
        f"The destination is also written by another task instance: {names} keeps a batch state under "
        f"{uri_of(folder)} (this one is {journal.root.name}). Each would overwrite the other's answers. Mapped "
        "tasks and backfill runs must template the destination per task instance, e.g. "
        "destination='.../results-{{ run_id }}-{{ ti.map_index }}.jsonl'. If that other batch is abandoned, "
        f"delete its state folder ({uri_of(others[0])}; its jobs are then forgotten) and clear this task."
    )


def destination_of(journal: StateFolder) -> ObjectStoragePath:
    """The destination whose state folder (``.<name>.maas/<identity>``) ``journal`` is."""
    folder = journal.root.parent
    return folder.parent / folder.name[1 : -len(".maas")]


def record_writer(journal: StateFolder, identity: list[str], epoch: int | None = None) -> None:
    """The task instance ``identity`` (dag, task, run, map index) wrote the destination in clear epoch
    ``epoch``: keep that in the destination's record (``.<name>.origin.json``, beside it with its
    ENDPOINT: :mod:`.origin`), so that another task instance refuses to overwrite it
    (:func:`refuse_written_by_other`) and an automatic retry of this one knows it is done."""
    path = origin_path(destination_of(journal))
    try:
        record = {**written_record(journal, raw=True), WRITTEN: identity, "round": epoch}
        with atomic_writer(path) as out:
            out.write(json.dumps(record).encode())
    except OSError as err:  # the results are written: this record only guards against a mistake
        log.warning("Recording which task wrote %s failed: %s", uri_of(path), err)


def written_record(journal: StateFolder, *, raw: bool = False) -> dict[str, Any]:
    """Which task instance wrote the destination of ``journal``, and in which clear epoch:
    ``{"identity", "round"}`` ({} if nothing readable); ``raw``: the whole record."""
    try:
        with origin_path(destination_of(journal)).open("rb") as handle:
            record = json.loads(handle.read(MAX_RECORD))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return record if raw else {"identity": record.get(WRITTEN), "round": record.get("round")}


def refuse_written_by_other(journal: StateFolder, identity: list[str]) -> None:
    """Stop if another task instance (another run, task or map index) wrote the destination, which is
    still there: its paid answers would be overwritten. A destination moved or deleted since may be
    written again; so may the same task instance (a clear after success)."""
    record = origin_path(destination_of(journal))
    written = written_record(journal).get("identity")
    destination = destination_of(journal)
    problem = None if isinstance(written, list) else _damaged(record, mine=journal.root.exists())
    if problem and destination.exists():
        raise MaaSStateError(
            f"The destination {uri_of(destination)} exists and its record {uri_of(record)} {problem}, so which task "
            "instance wrote it is not known; writing it again may overwrite another run's paid answers. Nothing was "
            "sent. If the results are this task instance's own, delete that record and clear the task; otherwise "
            "move the results away, or template the destination per run and task instance "
            "(destination='.../results-{{ run_id }}-{{ ti.map_index }}.jsonl')."
        )
    if not isinstance(written, list) or written == identity or not destination.exists():
        return
    name = ".".join(str(part) for part in written)
    who = "another mapped instance of this task in this run" if written[:3] == identity[:3] else "another run or task"
    raise MaaSStateError(
        f"The destination {uri_of(destination)} was already written by {who}: {name} (recorded in "
        f"{uri_of(record)}; this one is {journal.root.name}). Writing it again would overwrite those paid "
        "answers. Template the destination per run and task instance (backfills, schedules and mapped tasks), "
        "e.g. destination='.../results-{{ run_id }}-{{ ti.map_index }}.jsonl'; or, to replace it on purpose, "
        "move or delete that file and clear this task."
    )


def _damaged(record: ObjectStoragePath, *, mine: bool) -> str | None:
    """What is wrong with the destination's record (truncated, hand-edited, or of a provider version
    before it named its writer), or None: there is none, or it is whole. ``mine``: this task instance
    keeps a batch state here (it wrote the results and stopped before naming itself: not refused)."""
    try:
        with record.open("rb") as handle:
            value = json.loads(handle.read(MAX_RECORD))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"cannot be read ({type(err).__name__}: {err}; truncated or hand-edited?)"
    if not isinstance(value, dict):
        return "is not a JSON object (hand-edited?)"
    if WRITTEN not in value:
        return (
            None
            if mine
            else (
                f"names no {WRITTEN} (written by the download operator, or by a provider version before the batch "
                "operator recorded itself)"
            )
        )
    written = value[WRITTEN]
    if not isinstance(written, list) or not all(isinstance(part, str) for part in written):
        return f"has a {WRITTEN} that names no task instance ({written!r}; hand-edited?)"
    return None
