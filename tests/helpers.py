"""Small stand-ins for what only a running Airflow task has: the task instance and its state store."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from airflow_provider_maas.batch.answers.results import MISSING_STATUS, iter_results, request_key
from airflow_provider_maas.batch.inputs.request_lines import iter_request_lines


class FakeStateStore:
    """``context["task_state_store"]``: survives 'retries' when the same instance is reused."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(json.dumps(self.data.get(key, default)))

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))


class FakeVariables:
    """``airflow.sdk.Variable`` as the Execution API keeps it: JSON text per key, kept across tries; also
    the supervisor's answer to the Task SDK's ``GetVariable`` (:meth:`send`), which ``batch/record/task_record.py``
    reads the record with. :func:`use_fake_variables` installs both."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.descriptions: dict[str, str | None] = {}
        self.drop_writes = False

    def get(self, key, default=None, deserialize_json=False):
        import json

        if key not in self.values:
            return default
        return json.loads(self.values[key]) if deserialize_json else self.values[key]

    def set(self, key, value, description=None, serialize_json=False):
        import json

        if self.drop_writes:  # Airflow 3.0's Variable.set logs a failed write and returns
            return
        self.values[key] = json.dumps(value) if serialize_json else value
        self.descriptions[key] = description

    def delete(self, key):
        self.values.pop(key, None)
        self.descriptions.pop(key, None)

    def send(self, msg):
        """``SUPERVISOR_COMMS.send``: the supervisor's answer to ``GetVariable`` (task-sdk 1.0-1.3)."""
        from airflow.sdk.exceptions import ErrorType
        from airflow.sdk.execution_time.comms import ErrorResponse, GetVariable, VariableResult

        assert isinstance(msg, GetVariable), msg
        if msg.key not in self.values:
            return ErrorResponse(error=ErrorType.VARIABLE_NOT_FOUND, detail={"key": msg.key})
        return VariableResult(key=msg.key, value=self.values[msg.key])


def use_fake_variables(monkeypatch: Any) -> FakeVariables:
    """Airflow 3.0-3.2 in a test: the Variables the batch and create operators keep their record in
    (``airflow.sdk.Variable`` and the supervisor channel they are read through) are a :class:`FakeVariables`."""
    from airflow_provider_maas.batch.record import task_record

    fake = FakeVariables()
    monkeypatch.setattr("airflow.sdk.Variable", fake)
    monkeypatch.setattr(task_record, "_supervisor_comms", lambda: fake)
    return fake


class FileStateStore(FakeStateStore):
    """``task_state_store`` kept in a JSON file: shared by tries running in separate processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property  # type: ignore[override]
    def data(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def set(self, key: str, value: Any, **_: Any) -> None:
        data = {**self.data, key: json.loads(json.dumps(value))}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


class FakeTI:
    def __init__(self, dag_id: str = "dag", task_id: str = "task", run_id: str = "run1", map_index: int = -1):
        self.dag_id, self.task_id, self.run_id, self.map_index = dag_id, task_id, run_id, map_index
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = json.loads(json.dumps(value))


def make_context(
    store: FakeStateStore | None = None, *, max_tries: int | None = None, **ti_kwargs: Any
) -> dict[str, Any]:
    """The context of a try: ``store`` as its ``task_state_store`` (none: Airflow 3.0-3.2), ``max_tries``
    as its task instance's (the same value again is an automatic retry; a person's clear raises it)."""
    ti = FakeTI(**ti_kwargs)
    if max_tries is not None:
        ti.max_tries = max_tries
    context: dict[str, Any] = {"ti": ti, "run_id": ti.run_id}
    if store is not None:
        context["task_state_store"] = store
    return context


def write_requests(path: Path, count: int, *, prefix: str = "Question") -> Path:
    """A requests file of ``count`` distinct prompts."""
    with path.open("w") as handle:
        for i in range(count):
            line = {
                "request": {"contents": [{"role": "user", "parts": [{"text": f"{prefix} {i}: what is {i} + {i}?"}]}]}
            }
            handle.write(json.dumps(line) + "\n")
    return path


def assert_in_input_order(
    requests: Path, results: Path, *, expect_missing: int = 0, ceiling_written: bool = False
) -> list[Any]:
    """Line i of the results answers request i of the input (one line per request; those the
    service returned no line for carry ``MISSING_STATUS``, ``expect_missing`` of them); returns the records.
    ``ceiling_written``: under ``max_cost_usd`` the requests sent (echoed in the results) carry the output
    ceiling the cap wrote; compared without it."""

    def key(request: Any) -> Any:
        if ceiling_written and isinstance(config := request.get("generationConfig"), dict):
            request = {**request, "generationConfig": {k: v for k, v in config.items() if k != "maxOutputTokens"}}
        return request_key(request)

    with requests.open("rb") as handle:
        keys = [key(line.request) for line in iter_request_lines(handle)]
    with results.open("rb") as handle:
        records = list(iter_results(handle))
    assert len(records) == len(keys)
    assert [key(r.request) for r in records] == keys
    assert sum(r.status == MISSING_STATUS for r in records) == expect_missing
    for record in records:
        if record.succeeded:
            prompt = record.request["contents"][0]["parts"][0]["text"]
            assert prompt in (record.text or "")
    return records


def assert_asset_summary(uri: str = "maas://example/results", requests: int = 9) -> None:
    """The download's summary reached the asset event of ``uri`` (the example DAG's 9 requests)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == uri)
            .all()
        )
        extras = [event.extra for event in events]
    assert extras, "the download emitted an asset event"
    summary = extras[-1]
    assert summary["requests"] == summary["succeeded"] == requests
    assert summary["total_tokens"] > 0
    assert summary["job_name"]
    assert summary["uri"].endswith("results.jsonl")


def batch_settings(source: Any = "in.jsonl", destination: Any = None, **changes: Any) -> Any:
    """The :class:`~airflow_provider_maas.batch.settings.BatchSettings` of a try with the operator's
    defaults (no reuse, no prices, no timeout), from ``source`` to ``destination`` (default: next to
    ``source``), with ``changes`` on top. For tests and benchmarks that call the batch modules directly."""
    from airflow_provider_maas.batch.inputs.request_lines import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE
    from airflow_provider_maas.batch.parameters import retry_rule_and_prices
    from airflow_provider_maas.batch.polling import DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS
    from airflow_provider_maas.batch.settings import BatchSettings

    values: dict[str, Any] = {
        "source": str(source),
        "destination": str(destination) if destination is not None else f"{source}.out",
        "reuse_results": None,
        "deduplicate": True,
        "should_retry": retry_rule_and_prices(None, None)[0],
        "prices": None,
        "request_retries": 1,
        "max_requests_per_file": MAX_REQUESTS_PER_FILE,
        "max_bytes_per_file": MAX_BYTES_PER_FILE,
        "max_active_jobs": 100,
        "timeout": None,
        "poll_interval": 60,
        "shard_retries": 2,
        "max_parallel_transfers": 16,
        "max_consecutive_poll_errors": DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS,
        "fail_on_partial": False,
    }
    return BatchSettings(**{**values, **changes})


def batch_operator(source: Path, dest: Path, **kwargs: Any) -> Any:
    """A MaaSBatchPredictionOperator over ``source`` -> ``dest`` that polls fast, not deferrable by default."""
    from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

    kwargs = {"poll_interval": 0.05, "deferrable": False, **kwargs}
    return MaaSBatchPredictionOperator(task_id="p", source=str(source), destination=str(dest), **kwargs)


class ShortReads(io.RawIOBase):
    """A binary stream that returns at most ``most`` bytes per read, as a socket or an object store
    may: readers must not assume a read fills its buffer."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data = io.BytesIO(data)
        self._most = most

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def read(self, size: int = -1) -> bytes:
        return self._data.read(self._most if size < 0 else min(size, self._most))


def record_input_assets(monkeypatch: Any) -> list[str]:
    """The URIs Airflow's hook lineage collector is given as inputs from now on (a stand-in collector:
    what ``ObjectStoragePath``'s file wrapper records on each ``read``)."""
    import airflow.sdk.lineage

    recorded: list[str] = []

    class Collector:
        def add_input_asset(self, *, uri: str, **_: Any) -> None:
            recorded.append(uri)

        def add_output_asset(self, **_: Any) -> None:
            pass

    monkeypatch.setattr(airflow.sdk.lineage, "get_hook_lineage_collector", Collector)
    return recorded
