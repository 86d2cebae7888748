"""Where a task instance's record across tries lives, on every supported Airflow version.

The one place that decides it, for the create operator (its in-flight marker and job name) and the
batch operator (the state's pointer, the newest journal object holding "creating" markers, job names
kept after a failed journal write): ``context["task_state_store"]`` on Airflow >= 3.3; before, which
have none, one Airflow Variable per task instance (:class:`VariableStateStore`), written through the
Task SDK (the Execution API, as ``Variable.set`` in a task); outside an Airflow worker (``execute()``
called by a test) nowhere: no retry can follow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from airflow_provider_maas.exceptions import MaaSError

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
        from airflow.sdk import Variable

        value = Variable.get(self.name, default=None, deserialize_json=True)
        return value if isinstance(value, dict) else {}

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


def _in_task_runner() -> bool:
    """Whether this process runs a task under Airflow's supervisor (a worker, ``dag.test()``): only
    then can it read and write Variables. ``SUPERVISOR_COMMS`` is how the Task SDK itself knows."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


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
