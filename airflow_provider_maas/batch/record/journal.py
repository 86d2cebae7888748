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
every Airflow version; ``task_state_store`` (Airflow >= 3.3) only records it. Each object's bytes
(JSON lines with a seal) and how one is read back whole or refused: :mod:`.state_objects`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.record import ownership
from airflow_provider_maas.batch.record.origin import write_kept_origin
from airflow_provider_maas.batch.record.state import (
    STATE_VERSION,
    BatchState,
    Round,
    ShardKey,
    ShardRecord,
    ShardStatus,
)
from airflow_provider_maas.batch.record.state_objects import (
    StateDamaged,
    children,
    dumps,
    numbered,
    read_json_lines,
    with_seal,
)
from airflow_provider_maas.client.naming import task_identity
from airflow_provider_maas.exceptions import MaaSError
from airflow_provider_maas.storage import atomic_writer, to_path, uri_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

#: Fewest journal objects between two snapshots.
COMPACT_AFTER = 64
_MANIFEST = "manifest.json"
_SNAPSHOT = "snapshot-"
_KEPT = "kept"


class MarkNotRecorded(MaaSError):
    """Journal object ``seq``, holding "creating" markers, is stored, but recording it in the second
    record (``on_marked``) failed with ``cause``: the creates of those markers must not be sent."""

    def __init__(self, seq: int, cause: Exception) -> None:
        super().__init__(f"journal object {seq:010d} is stored, but its mark is not ({type(cause).__name__}: {cause})")
        self.seq = seq
        self.cause = cause


class BatchJournal:
    """Reads and writes the state of one batch (see the module docstring for the layout).

    :param root: The state's folder (:meth:`for_task` computes it).
    """

    def __init__(self, root: ObjectStoragePath) -> None:
        self.root = root
        self.seq = 0
        self.bytes_written = 0
        self._since_snapshot = 0
        #: This try's lease (:mod:`~airflow_provider_maas.batch.record.ownership`), checked before each write.
        self.lease: dict[str, Any] | None = None
        self._sealed = True
        #: The newest journal object known to be written (its sequence number): kept in a second
        #: record by ``on_marked`` (``batch/record/second_record.py``), so that a journal ending before it is refused.
        self.marked = 0
        #: Called when :attr:`marked` changes: a new plan, or "creating" markers stored (before any
        #: create is sent); it raises if the second record cannot be written.
        self.on_marked: Callable[[], None] | None = None

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
        """Replay the stored state; None if there is none and no journal object names a job.

        Fails closed (:class:`StateDamaged`) on anything less than a whole state: a manifest that
        cannot be read or is of another format version, a manifest without journal objects, a gap
        in their sequence, an object that is not what this module writes, journal objects naming
        jobs without a manifest.
        """
        manifest_path = self.root / _MANIFEST
        snapshots = numbered(self.root, _SNAPSHOT, ".json")
        journal = numbered(self.root / "journal", "", ".jsonl")
        if not manifest_path.exists():
            if not snapshots and self._plan_cut(journal) and not (self.root / "journal" / f"{2:010d}.jsonl").exists():
                log.info(
                    "The batch state at %s was cut while its plan was written (no manifest yet): planning again",
                    self.uri,
                )
                return None
            if snapshots or journal:
                raise StateDamaged(
                    f"{uri_of(manifest_path)} is missing, but {len(snapshots) + len(journal)} journal object(s) are there"
                )
            return None
        lines = read_json_lines(manifest_path)
        if len(lines) != 1:
            raise StateDamaged(
                f"{uri_of(manifest_path)} holds {len(lines)} JSON objects, not one (empty or overwritten)"
            )
        manifest = lines[0]
        self._sealed = bool(manifest.get("sealed"))  # states written before issue 19 have no seals
        version = manifest.get("version")
        if version != STATE_VERSION:
            raise StateDamaged(
                f"{uri_of(manifest_path)} is in state format version {version!r}; this provider reads version "
                f"{STATE_VERSION} only (written by another provider version: finish the batch with that version)"
            )
        try:
            state = BatchState(
                fingerprint=manifest["fingerprint"],
                identity=manifest["identity"],
                rounds=[Round.from_json(r) for r in manifest["rounds"]],
                input_key=manifest.get("input"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StateDamaged(
                f"{uri_of(manifest_path)} is not a batch manifest ({type(err).__name__}: {err})"
            ) from None
        snapshot_seq = 0
        if snapshots:
            snapshot_seq, path = snapshots[-1]
            self._replay(state, path)
        entries = [(seq, path) for seq, path in journal if seq > snapshot_seq]
        # A listing may lag behind the newest objects (they hold the latest creates and job names):
        # a GET of the next key finds them; without this a retry would pay again for those shards
        # and overwrite the objects it did not see.
        last = entries[-1][0] if entries else snapshot_seq
        # s3fs and gcsfs answer exists() from the listing they just cached ("not there"): forget it first
        self.root.fs.invalidate_cache(str((self.root / "journal").path))
        while (following := self.root / "journal" / f"{last + 1:010d}.jsonl").exists():
            last += 1
            entries.append((last, following))
        if not snapshots and not entries:
            raise StateDamaged(f"the manifest is there but no journal object under {uri_of(self.root / 'journal')}")
        expected = list(range(snapshot_seq + 1, snapshot_seq + 1 + len(entries)))
        if [seq for seq, _ in entries] != expected:
            missing = sorted(set(range(snapshot_seq + 1, entries[-1][0])) - {seq for seq, _ in entries})
            raise StateDamaged(
                f"journal objects {', '.join(f'{m:010d}.jsonl' for m in missing[:5])} are missing under "
                f"{uri_of(self.root / 'journal')} (a gap in the sequence after {snapshot_seq:010d})"
            )
        for _, path in entries:
            self._replay(state, path)
        self.seq = max([snapshot_seq, *(seq for seq, _ in entries)])
        self._since_snapshot = len(entries)
        return state

    @staticmethod
    def _plan_cut(journal: list[tuple[int, ObjectStoragePath]]) -> bool:
        """Whether the only journal object is the whole first one :meth:`create` writes before the
        manifest (the batch's fields, no shard): a try stopped there uploaded and paid for nothing."""
        if [seq for seq, _ in journal] != [1]:
            return False
        try:
            lines = read_json_lines(journal[0][1])
        except StateDamaged:
            return False
        return len(lines) == 2 and "meta" in lines[0] and lines[1] == {"end": 1}

    def job_names_found(self) -> list[str]:
        """Every job name any readable line of any journal object or snapshot holds (for an error
        message when the state is not whole); damaged lines are skipped."""
        names = (value.get("job_name") for value in self._readable_lines())
        return list(dict.fromkeys(name for name in names if isinstance(name, str)))

    def endpoint_found(self) -> str | None:
        """The ENDPOINT the newest readable batch fields name (the jobs of a state that is not whole
        were created on it), or None; damaged lines are skipped."""
        found = None
        for value in self._readable_lines():
            meta = value.get("meta")
            if isinstance(meta, dict) and isinstance(meta.get("endpoint"), str):
                found = meta["endpoint"]
        return found

    def _readable_lines(self) -> Iterator[dict[str, Any]]:
        """The JSON objects of every readable line of the snapshots, then the journal objects, in order."""
        for folder, prefix, suffix in ((self.root, _SNAPSHOT, ".json"), (self.root / "journal", "", ".jsonl")):
            for _, path in numbered(folder, prefix, suffix):
                try:
                    with path.open("rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                for line in data.splitlines():
                    with contextlib.suppress(ValueError):
                        value = json.loads(line)
                        if isinstance(value, dict):
                            yield value

    def _replay(self, state: BatchState, path: ObjectStoragePath) -> None:
        lines = read_json_lines(path)
        if lines and lines[-1] == {"end": len(lines) - 1}:
            lines.pop()
        elif self._sealed:  # objects of a state written before seals were kept have none
            raise StateDamaged(f"{uri_of(path)} does not end with its seal: truncated or overwritten")
        for number, line in enumerate(lines, 1):
            try:
                if "meta" in line:
                    state.apply_meta(line["meta"])
                else:
                    state.apply(ShardRecord.from_json(line))
            except (KeyError, TypeError, ValueError) as err:
                raise StateDamaged(
                    f"{uri_of(path)} record {number} is not a shard record ({type(err).__name__}: {err})"
                ) from None

    # Writing -----------------------------------------------------------------------------
    def create(self, state: BatchState) -> None:
        """Start a new state here (whatever was stored before is removed first)."""
        ownership.refuse_planned_meanwhile(self)
        self.marked = 0
        if self.on_marked is not None:  # before the old objects go: the record never runs ahead of them
            self.on_marked()
        self.remove_plan()
        self._sealed = True
        ownership.write_lease(self)
        self.seq = 0
        self._since_snapshot = 0
        self.append(state, [], meta=True)
        self._write_manifest(state)  # last: a manifest is never without its first journal object

    def add_round(self, state: BatchState, round_: Round) -> None:
        """Add the next round (request-level retries) to ``state`` and to the manifest (rewritten
        whole, atomically: once per round, so O(shards) bytes per round, not per event)."""
        ownership.check_lease(self)
        state.add_round(round_)
        self._write_manifest(state)

    def _write_manifest(self, state: BatchState) -> None:
        manifest = {
            "version": STATE_VERSION,
            "fingerprint": state.fingerprint,
            "identity": state.identity,
            "rounds": [r.to_json() for r in state.rounds],
        }
        if self._sealed:  # every journal object and snapshot ends with {"end": <lines before>}
            manifest["sealed"] = 1
        if state.input_key is not None:
            manifest["input"] = state.input_key
        self._write(self.root / _MANIFEST, dumps(manifest))

    def append(self, state: BatchState, records: list[ShardRecord], *, meta: bool = False) -> None:
        """Durably record ``records`` (already applied to ``state``), and the batch fields if ``meta``.

        Returns once the journal object is stored: a create may be sent after this returns. If it
        holds "creating" markers and ``on_marked`` then fails, raises :class:`MarkNotRecorded` (the
        object stays stored: it may hold job names too; the caller sends none of those creates).
        """
        if not records and not meta:
            return
        ownership.check_lease(self)
        lines = [dumps(record.to_json()) for record in records]
        if meta:
            lines.append(dumps({"meta": state.meta()}))
        self._write(self.root / "journal" / f"{self.seq + 1:010d}.jsonl", with_seal(lines))
        self.seq += 1  # only once stored: a failed write leaves no gap for the next one
        if self.on_marked is not None and any(r.status is ShardStatus.CREATING for r in records):
            marked, self.marked = self.marked, self.seq  # before the creates are sent: deleting it is noticed
            try:
                self.on_marked()
            except Exception as err:
                self.marked = marked
                raise MarkNotRecorded(self.seq, err) from err
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
        lines = [dumps({"meta": state.meta()})]
        lines.extend(dumps(r.to_json()) for r in state.shards.values() if r != ShardRecord(r.key))
        self._write(self.root / f"{_SNAPSHOT}{self.seq:010d}.json", with_seal(lines))
        for seq, path in numbered(self.root / "journal", "", ".jsonl"):
            if seq <= self.seq:
                path.unlink()
        for seq, path in numbered(self.root, _SNAPSHOT, ".json"):
            if seq < self.seq:
                path.unlink()
        self._since_snapshot = 0

    def keep_answers(self, endpoint: str | None = None) -> bool:
        """Before a start-over: move the downloaded results parts to ``kept/<n>/``, where the new plan
        reuses them (:meth:`kept_answers`) if it runs on ``endpoint``, the ENDPOINT that paid for them
        (None: the one the stored batch fields name), recorded in the folder first (``origin.split_kept``);
        True if there were any."""
        parts = [path for path in children(self.part_dir()) if path.name.endswith(".jsonl")]
        if not parts:
            return False
        target = self.root / _KEPT / f"{len(children(self.root / _KEPT)):04d}"
        target.mkdir(parents=True, exist_ok=True)
        write_kept_origin(target, endpoint or self.endpoint_found())
        for path in parts:
            path.fs.mv(str(path.path), str((target / path.name).path))
        return True

    def kept_answers(self) -> list[ObjectStoragePath]:
        """The results parts an abandoned plan of this batch downloaded (see :meth:`keep_answers`)."""
        return sorted(
            (p for folder in children(self.root / _KEPT) for p in children(folder) if p.name.endswith(".jsonl")),
            key=lambda p: (p.parent.name, p.name),
        )

    def remove_plan(self) -> None:
        """Delete the state but the answers kept from earlier plans (:meth:`keep_answers`)."""
        self.remove(keep=(_KEPT,))

    def remove(self, *, keep: tuple[str, ...] = ()) -> None:
        """Delete the whole state, results parts included, but the children named in ``keep``."""
        if keep:
            for child in children(self.root):
                if child.name not in keep:
                    child.fs.rm(str(child.path), recursive=True)
            return
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
