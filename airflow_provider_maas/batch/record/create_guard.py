"""Never pay twice: the "create in flight" marker every job-creating operator writes first.

The API has no list call, so after a create whose answer was lost (5xx, timeout, reset, killed
process) nobody can tell whether the job exists. Before sending a create, an operator records a
:class:`CreateInFlight` where its next try will find it (the create operator: its :meth:`~CreateInFlight.as_dict`
in ``task_state_store``; the batch operator: the shard's record, status ``CREATING``, in the batch
state); once the answer is in, it is replaced by the job's name. A later try that finds a create
still in flight calls :func:`refuse_uncertain_create`, which stops the task without Airflow
retries, unless a person cleared the task since.

Telling an automatic retry from a person's clear: Airflow sets ``max_tries = try_number + retries``
when a task instance is cleared, and leaves it alone on an automatic retry. The marker keeps the
``max_tries`` of the try that sent the create (its "clear epoch"); a different value now means the
task was cleared (or the run is new), which is the documented way to create anyway. (A clear epoch
is not a retry round of the batch operator, which resends failed requests within one try.) Stored
records keep the key names of earlier releases, so that states they wrote still resume: ``round``
in markers, pointers and the destination's origin record, ``clear_round`` in the batch state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from airflow_provider_maas.exceptions import MaaSJobCreationUncertainError

log = logging.getLogger(__name__)

#: ``status`` of a marker written just before a create is sent.
CREATING = "creating"


def clear_epoch(context: Any) -> int | None:
    """The task instance's ``max_tries``: changes when a person clears the task, not on a retry."""
    ti = context.get("ti") if hasattr(context, "get") else None
    value = getattr(ti, "max_tries", None)
    return value if isinstance(value, int) else None


def cleared_since(recorded: int | None, context: Any) -> bool:
    """Whether a person cleared the task since the try whose clear epoch is ``recorded``."""
    now = clear_epoch(context)
    return recorded is not None and now is not None and now != recorded


@dataclass(frozen=True)
class CreateInFlight:
    """A create sent (or about to be) whose answer is not recorded: saved BEFORE the create is sent.

    :param file_name: The uploaded file the job is created from.
    :param display_name: The job's display name (what a person looks for in the vendor console).
    :param clear_epoch: The clear epoch (:func:`clear_epoch`) of the try that sends it.
    """

    file_name: str | None
    display_name: str | None
    clear_epoch: int | None

    def as_dict(self) -> dict[str, Any]:
        """The form stored in ``task_state_store`` (read back by :meth:`from_stored`)."""
        return {
            "status": CREATING,
            "file_name": self.file_name,
            "display_name": self.display_name,
            "round": self.clear_epoch,
        }

    @classmethod
    def from_stored(cls, value: Any) -> CreateInFlight | None:
        """The create in flight that ``value`` (as stored) records, or None if it records none."""
        if not isinstance(value, dict) or value.get("status") != CREATING:
            return None
        return cls(value.get("file_name"), value.get("display_name"), value.get("round"))


#: Why a create's outcome is unknown (the default ``unknown`` of :func:`uncertain_create_error`).
NO_ANSWER = "got no usable answer{why} (lost response, timeout or killed process)"
#: The same, for a marker found by a later try: the answer may have come and not been recorded.
NOT_RECORDED = (
    "has no answer recorded (a lost response, a timeout, a killed process, or a state write that failed "
    "after the answer: that try's error then named the jobs it created)"
)


def refuse_uncertain_create(marker: CreateInFlight, context: Any, *, what: str, unknown: str = NO_ANSWER) -> None:
    """Raise :class:`MaaSJobCreationUncertainError` for a create left in flight by an earlier try of
    this clear epoch; return (after a warning) when the task was cleared since.

    :param marker: The create an earlier try left in flight.
    :param what: What the job was for, e.g. ``"file 'x.jsonl'"`` or ``"shard 12 (file 'y.jsonl')"``.
    """
    display_name = marker.display_name
    if cleared_since(marker.clear_epoch, context):
        log.warning(
            "An earlier try sent a create for %s (display name %r) and got no answer; this task was "
            "cleared since, so a new job is created as asked. If the earlier job exists, both are billed.",
            what,
            display_name,
        )
        return
    raise uncertain_create_error(marker, what=what, earlier=True, unknown=unknown)


def uncertain_create_error(
    marker: CreateInFlight,
    *,
    what: str,
    earlier: bool = False,
    cause: BaseException | None = None,
    unknown: str = NO_ANSWER,
) -> MaaSJobCreationUncertainError:
    """The error for a create whose outcome is unknown: names the file, the display name to look
    for and how to create anyway."""
    who = "An earlier try of this task" if earlier else "This task"
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return MaaSJobCreationUncertainError(
        f"{who} sent a create-job request for {what} and {unknown.format(why=why)}: the service may or may "
        f"not have created a job named "
        f"{marker.display_name!r} from {marker.file_name!r}. The API has no list call, so "
        "this task will not create another one on its own. Look for that display name in the vendor "
        "console; to create a new job anyway, clear this task in Airflow (a cleared task may create again)."
    )
