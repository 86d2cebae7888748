"""Where a batch's state lives: small objects in object storage beside the destination.

Layout under ``<destination parent>/.<destination name>.maas/<dag>.<task>.<run>.m<map index>/``::

    manifest.json            format version, input fingerprint, the shard plans of each round
                             (rewritten only when a retry round is added)
    round-<n>.jsonl          the requests of round n, when not the operator's source
    journal/<seq>.jsonl      one small object per flush: the whole record of each shard that changed
    snapshot-<seq>.json      all records as of journal object <seq> (compaction); older objects go
    parts/                   downloaded results of each shard

Object stores cannot append, so every flush is a new object, written atomically; a flush holds
only the records that changed (a few hundred bytes per shard event). Once the journal objects since
the last snapshot outnumber a tenth of the shards (at least :data:`COMPACT_AFTER`), a snapshot
replaces them: amortised O(1) bytes per event. Before a deferral the task also compacts once more
than :data:`COMPACT_AFTER` objects piled up (:meth:`BatchJournal.settle`), so a resume reads a
snapshot and at most that many objects; this costs one snapshot per resume at most, and resumes are
bounded (about 2 x shards / max_active_jobs).
Replay: the newest snapshot, then the journal objects after it in order; the last record of a shard
wins. The location depends only on the destination and the task instance, so a retry finds it on
every Airflow version; ``task_state_store`` (Airflow >= 3.3) only records it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.state import STATE_VERSION, BatchState, Round, ShardKey, ShardRecord
from airflow_provider_maas.client.naming import task_identity
from airflow_provider_maas.storage import atomic_writer, to_path, uri_of

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

#: Fewest journal objects between two snapshots.
COMPACT_AFTER = 64
_MANIFEST = "manifest.json"
_SNAPSHOT = "snapshot-"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _read_json_lines(path: ObjectStoragePath) -> list[dict[str, Any]]:
    with path.open("rb") as handle:
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


class BatchJournal:
    """Reads and writes the state of one batch (see the module docstring for the layout).

    :param root: The state's folder (:meth:`for_task` computes it).
    """

    def __init__(self, root: ObjectStoragePath) -> None:
        self.root = root
        self.seq = 0
        self.bytes_written = 0
        self._since_snapshot = 0

    @classmethod
    def for_task(cls, destination: Any, context: Any) -> BatchJournal:
        """The journal of this task instance's batch writing ``destination``."""
        dest = to_path(destination, what="destination")
        return cls(dest.parent / f".{dest.name}.maas" / ".".join(task_identity(context)))

    @property
    def uri(self) -> str:
        return uri_of(self.root)

    def part_dir(self) -> ObjectStoragePath:
        return self.root / "parts"

    def part(self, key: ShardKey) -> ObjectStoragePath:
        """Where the results of shard ``key`` are downloaded."""
        return self.part_dir() / self.part_name(key)

    @staticmethod
    def part_name(key: ShardKey) -> str:
        """The file name of :meth:`part` (no path object built: cheap for 10,000 shards)."""
        return f"r{key.round}-{key.index:06d}.jsonl"

    # Reading -----------------------------------------------------------------------------
    def load(self) -> BatchState | None:
        """Replay the stored state; None if there is none (or in another format version)."""
        manifest_path = self.root / _MANIFEST
        if not manifest_path.exists():
            return None
        with manifest_path.open("rb") as handle:
            manifest = json.loads(handle.read())
        if manifest.get("version") != STATE_VERSION:
            log.warning(
                "Batch state at %s has format %s, not %s: not used", self.uri, manifest.get("version"), STATE_VERSION
            )
            return None
        state = BatchState(
            fingerprint=manifest["fingerprint"],
            identity=manifest["identity"],
            rounds=[Round.from_json(r) for r in manifest["rounds"]],
        )
        snapshot_seq = 0
        snapshots = self._numbered(self.root, _SNAPSHOT, ".json")
        if snapshots:
            snapshot_seq, path = snapshots[-1]
            self._replay(state, _read_json_lines(path))
        entries = [
            (seq, path) for seq, path in self._numbered(self.root / "journal", "", ".jsonl") if seq > snapshot_seq
        ]
        for _, path in entries:
            self._replay(state, _read_json_lines(path))
        self.seq = max([snapshot_seq, *(seq for seq, _ in entries)])
        self._since_snapshot = len(entries)
        return state

    @staticmethod
    def _replay(state: BatchState, lines: list[dict[str, Any]]) -> None:
        for line in lines:
            if "meta" in line:
                state.apply_meta(line["meta"])
            else:
                state.apply(ShardRecord.from_json(line))

    @staticmethod
    def _numbered(folder: ObjectStoragePath, prefix: str, suffix: str) -> list[tuple[int, ObjectStoragePath]]:
        try:
            children = list(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):  # no such folder (yet)
            return []
        found = []
        for child in children:
            name = child.name
            if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix) : -len(suffix)].isdigit():
                found.append((int(name[len(prefix) : -len(suffix)]), child))
        return sorted(found, key=lambda item: item[0])

    # Writing -----------------------------------------------------------------------------
    def create(self, state: BatchState) -> None:
        """Start a new state here (whatever was stored before is removed first)."""
        self.remove()
        self._write_manifest(state)
        self.seq = 0
        self._since_snapshot = 0
        self.append(state, [], meta=True)

    def add_round(self, state: BatchState, round_: Round) -> None:
        """Add the next round (request-level retries) to ``state`` and to the manifest (rewritten
        whole, atomically: once per round, so O(shards) bytes per round, not per event)."""
        state.add_round(round_)
        self._write_manifest(state)

    def _write_manifest(self, state: BatchState) -> None:
        manifest = {
            "version": STATE_VERSION,
            "fingerprint": state.fingerprint,
            "identity": state.identity,
            "rounds": [r.to_json() for r in state.rounds],
        }
        self._write(self.root / _MANIFEST, _dumps(manifest))

    def append(self, state: BatchState, records: list[ShardRecord], *, meta: bool = False) -> None:
        """Durably record ``records`` (already applied to ``state``), and the batch fields if ``meta``.

        Returns once the journal object is stored: a create may be sent after this returns.
        """
        if not records and not meta:
            return
        lines = [_dumps(record.to_json()) for record in records]
        if meta:
            lines.append(_dumps({"meta": state.meta()}))
        self.seq += 1
        self._write(self.root / "journal" / f"{self.seq:010d}.jsonl", b"\n".join(lines) + b"\n")
        self._since_snapshot += 1
        if self._since_snapshot >= max(COMPACT_AFTER, len(state.shards) // 10):
            self.compact(state)

    def settle(self, state: BatchState) -> None:
        """Before the task defers: compact if more than :data:`COMPACT_AFTER` objects piled up, so
        the resume replays a snapshot and a few objects (one GET each on an object store)."""
        if self._since_snapshot > COMPACT_AFTER:
            self.compact(state)

    def compact(self, state: BatchState) -> None:
        """Write a snapshot of the whole state, then drop the journal objects it covers."""
        lines = [_dumps({"meta": state.meta()})]
        lines.extend(_dumps(r.to_json()) for r in state.shards.values() if r != ShardRecord(r.key))
        self._write(self.root / f"{_SNAPSHOT}{self.seq:010d}.json", b"\n".join(lines) + b"\n")
        for seq, path in self._numbered(self.root / "journal", "", ".jsonl"):
            if seq <= self.seq:
                path.unlink()
        for seq, path in self._numbered(self.root, _SNAPSHOT, ".json"):
            if seq < self.seq:
                path.unlink()
        self._since_snapshot = 0

    def remove(self) -> None:
        """Delete the whole state, results parts included."""
        if self.root.exists():
            self.root.fs.rm(str(self.root.path), recursive=True)
        with contextlib.suppress(FileNotFoundError, OSError):  # the empty .<name>.maas folder
            parent = self.root.parent
            if parent.exists() and not any(True for _ in parent.iterdir()):
                parent.rmdir()

    def _write(self, path: ObjectStoragePath, data: bytes) -> None:
        with atomic_writer(path) as out:
            out.write(data)
        self.bytes_written += len(data)
