"""Where a task instance's record across tries lives, on every supported Airflow version.

The one place that decides it, for the create operator (its in-flight marker and job name) and the
batch operator (the state's pointer, the newest journal object holding "creating" markers, job names
kept after a failed journal write): ``context["task_state_store"]`` on Airflow >= 3.3; before, which
have none, one Airflow Variable per task instance (:class:`VariableStateStore`), written through the
Task SDK (the Execution API, as ``Variable.set`` in a task); outside an Airflow worker (``execute()``
called by a test) nowhere: no retry can follow.

The Variable is read with the Task SDK's ``GetVariable`` message sent to the supervisor
(:func:`read_variable`), not with ``Variable.get(default=None)``: on task-sdk 1.1-1.2 (Airflow 3.1-3.2)
that answers any error of the Execution API as "not found", and a record read as absent during an
outage would let a retry plan a batch again (pay twice) and a write drop the record's other keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from airflow_provider_maas.exceptions import MaaSError, MaaSStateError

log = logging.getLogger(__name__)

#: Prefix of the Airflow Variables of the create operator (Airflow < 3.3).
RECORD_VARIABLE_PREFIX = "maas_create."
#: Prefix of the Airflow Variables of the batch operator (Airflow < 3.3).
BATCH_VARIABLE_PREFIX = "maas_batch."


class VariableStateStore:
    """``task_state_store`` for Airflow 3.0-3.2: one Airflow Variable per task instance, holding a
    JSON object of keys (``set`` replaces one key and keeps the others).

    A Variable survives the try (a SIGKILLed process included) and Airflow never clears it on a
    retry or a clear. Its name is ``<prefix><digest of dag, task, run, map index>``, its description
    names the task instance. Every write is read back: a record that did not land raises
    (Airflow 3.0's ``Variable.set`` only logs a failed write). :meth:`delete` removes it once its
    content is recorded elsewhere.
    """

    def __init__(self, context: Any, prefix: str = RECORD_VARIABLE_PREFIX) -> None:
        ti = context["ti"]
        run_id = context.get("run_id") or ti.run_id
        map_index = getattr(ti, "map_index", -1)
        identity = json.dumps([ti.dag_id, ti.task_id, run_id, map_index])
        self.name = prefix + hashlib.sha256(identity.encode()).hexdigest()[:32]
        what = "create" if prefix == RECORD_VARIABLE_PREFIX else "batch"
        self.description = (
            f"airflow-provider-maas: what the {what} task {ti.dag_id}.{ti.task_id} of run {run_id} (map index "
            f"{map_index}) sent; its retries read it so as never to pay for a second job. Delete it once that run is done."
        )

    def _value(self) -> dict[str, Any]:
        """The record; empty only if the Variable does not exist (a failed read raises)."""
        text = read_variable(self.name)
        if text is None:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise MaaSStateError(
                f"The Airflow Variable {self.name!r} ({self.description}) does not hold a JSON object, as this "
                "provider writes it (edited by hand?); it may be the only record of work already paid for, so "
                "nothing was sent. Restore its value, or delete it if no try of that task instance created a job."
            )
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self._value().get(key, default)

    def set(self, key: str, value: Any) -> None:
        from airflow.sdk import Variable

        Variable.set(self.name, {**self._value(), key: value}, description=self.description, serialize_json=True)
        if self.get(key) != value:
            raise MaaSError(
                f"Could not save this task's record in the Airflow Variable {self.name!r} (see the log above); "
                "nothing was created. Check that tasks can write Variables (the Execution API); the task is retried."
            )

    def delete(self) -> None:
        """Remove the Variable (its content is recorded elsewhere now); a failure is only logged."""
        from airflow.sdk import Variable

        try:
            Variable.delete(self.name)
        except Exception as err:  # the task's work is done: a leftover Variable is only clutter
            log.warning("Could not delete the Airflow Variable %s (%s): delete it by hand", self.name, err)


def _supervisor_comms() -> Any | None:
    """The Task SDK's channel to Airflow's supervisor (``task_runner.SUPERVISOR_COMMS``), or None
    outside a task runner."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover
        return None
    return getattr(task_runner, "SUPERVISOR_COMMS", None)


def _in_task_runner() -> bool:
    """Whether this process runs a task under Airflow's supervisor (a worker, ``dag.test()``): only
    then can it read and write Variables. ``SUPERVISOR_COMMS`` is how the Task SDK itself knows."""
    return _supervisor_comms() is not None


def read_variable(name: str) -> str | None:
    """The stored text of the Airflow Variable ``name``; None only if the Execution API says it does
    not exist (``VARIABLE_NOT_FOUND``, its answer to a 404); any other answer or error raises
    :class:`~airflow_provider_maas.exceptions.MaaSError` (the task is retried).

    It sends ``GetVariable`` to the supervisor as ``Variable.get`` does once the secrets backends found
    nothing (the same message and answers in task-sdk 1.0 to 1.3, Airflow 3.0 to 3.3), without the
    ``ExecutionAPISecretsBackend`` of task-sdk 1.1-1.2, which turns every error into "not found", nor a
    secrets cache that may be stale: the record is written through the Execution API, and read there.
    """
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse, GetVariable, VariableResult

    comms = _supervisor_comms()
    try:
        if comms is None:
            raise RuntimeError("this process is not a task run by Airflow's supervisor")
        answer = comms.send(GetVariable(key=name))
    except AirflowRuntimeError as err:  # the supervisor's error frame (API_SERVER_ERROR: a 5xx, ...)
        answer = err.error
    except Exception as err:
        answer = err
    if isinstance(answer, VariableResult) and isinstance(answer.value, str):
        return answer.value
    if isinstance(answer, ErrorResponse) and answer.error == ErrorType.VARIABLE_NOT_FOUND:
        return None
    if isinstance(answer, ErrorResponse):
        why = f"{answer.error.value}: {answer.detail}"
    elif isinstance(answer, Exception):
        why = f"{type(answer).__name__}: {answer}"
    else:
        why = f"an unexpected answer {type(answer).__name__}"
    raise MaaSError(
        f"Could not read this task's record, the Airflow Variable {name!r}, through the Execution API ({why}). "
        "It may be the only record of jobs already paid for, so nothing was planned or sent. The task is "
        "retried; if this repeats, check the API server and the workers' access to it."
    )


def task_record(context: Any, prefix: str = RECORD_VARIABLE_PREFIX) -> Any | None:
    """Where this task instance keeps its record across tries: ``context["task_state_store"]``
    (Airflow >= 3.3), else an Airflow Variable named with ``prefix`` (:class:`VariableStateStore`),
    else None (outside an Airflow worker)."""
    store = context.get("task_state_store") if hasattr(context, "get") else None
    if store is not None:
        return store
    if hasattr(context, "get") and context.get("ti") is not None and _in_task_runner():
        return VariableStateStore(context, prefix)
    return None


def forget_record(context: Any, prefix: str = RECORD_VARIABLE_PREFIX) -> None:
    """The task succeeded and its record is kept elsewhere: remove a Variable (Airflow < 3.3);
    ``task_state_store`` (Airflow >= 3.3) is Airflow's to clean up."""
    store = task_record(context, prefix)
    if isinstance(store, VariableStateStore):
        store.delete()
