"""Uploads, creates, polls and downloads of a batch's shards, overlapped in a bounded thread pool.

The pool threads only transfer bytes and call the API; every change of the state is made by the
thread that calls :meth:`BatchDriver.pump` or :meth:`BatchDriver.handle`, and journalled by it in one
small object per batch of changes. A shard's "creating" marker is journalled before its create is
submitted. Memory is bounded by the pool (each upload spools at most 8 MiB before using a temporary
file), not by the input. What each finished transfer means for its shard is :mod:`.transfers`; how
the running jobs are polled, :class:`~.polling.JobWatch`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_maas.batch.cost.budget import Admission
from airflow_provider_maas.batch.cost.spend import count_as_lost
from airflow_provider_maas.batch.inputs.shards import ShardPlan, copy_shard, source_label
from airflow_provider_maas.batch.polling import JobWatch, NotFoundCount, PollErrors
from airflow_provider_maas.batch.record.journal import MarkNotRecorded
from airflow_provider_maas.batch.record.ownership import check_lease
from airflow_provider_maas.batch.record.state import BatchState, ShardKey, ShardRecord, ShardStatus
from airflow_provider_maas.batch.record.write_failures import after_first_error, unmarked_error, unrecorded_error
from airflow_provider_maas.batch.transfers import Transfer, TransferOutcomes
from airflow_provider_maas.exceptions import MaaSError, MaaSStateError
from airflow_provider_maas.storage import CHUNK_SIZE, open_source

if TYPE_CHECKING:
    from types import TracebackType

    from airflow_provider_maas.batch.cost.budget import SpendGate
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.settings import BatchSettings
    from airflow_provider_maas.client.states import JobOutcome

log = logging.getLogger(__name__)

#: ``names(key, plan) -> (upload file name, job display name)`` of a shard.
ShardNames = Callable[[ShardKey, ShardPlan], "tuple[str, str]"]
#: ``save(jobs) -> kept``: keeps (shard, job name) pairs a failed journal write did not store.
SaveJobNames = Callable[["list[tuple[ShardKey, str]]"], bool]


class JobService(Protocol):
    """The calls the driver makes (the hook answers them; this layer does not import it)."""

    def upload_file(self, source: Any, name: str) -> dict[str, Any]: ...
    def create_batch_job(self, file_name: str, display_name: str) -> dict[str, Any]: ...
    def get_batch_job(self, job_name: str) -> dict[str, Any]: ...
    def download_results(self, job_name: str, destination: Any) -> dict[str, Any]: ...


class BatchDriver(TransferOutcomes, JobWatch):
    """Moves the shards of ``state`` forward; use as a context manager (it owns the thread pool).

    :param settings: The batch's settings (``source``: the requests of round 0; ``max_active_jobs``,
        ``max_parallel_transfers``, ``shard_retries``, ``max_consecutive_poll_errors``).
    :param names: Upload and display names of a shard (deterministic, so a retry reuses them).
    :param clear_epoch: ``max_tries`` of this try, stored in each "creating" marker.
    :param gate: Budget cap, canary and answer checks (``batch.cost.budget``), consulted before each
        create and after each download; None: none of them.
    :param save_job_names: The second record of job names: called with the jobs a failed journal
        write did not store; True if they were kept where the next try finds them.
    """

    def __init__(
        self,
        *,
        hook: JobService,
        journal: BatchJournal,
        state: BatchState,
        settings: BatchSettings,
        names: ShardNames,
        clear_epoch: int | None,
        gate: SpendGate | None = None,
        save_job_names: SaveJobNames | None = None,
    ) -> None:
        self.hook = hook
        self.journal = journal
        self.state = state
        self.settings = settings
        self.names = names
        self.clear_epoch = clear_epoch
        self.shard_retries = settings.shard_retries  # read by the polling half too
        self.save_job_names = save_job_names
        self.rate_limited = False
        self.gate = gate
        self._pool = ThreadPoolExecutor(max_workers=settings.max_parallel_transfers, thread_name_prefix="maas-batch")
        self._futures: dict[Future[Any], tuple[Transfer, ShardKey]] = {}
        self._pending = deque(sorted(r.key for r in state.with_status(ShardStatus.PENDING)))
        # Shards holding a slot: uploading, creating or with a job not seen ended.
        self._busy = {r.key for r in state.with_status(ShardStatus.RUNNING, ShardStatus.CREATING)}
        self._downloading: set[ShardKey] = set()
        self._not_found = NotFoundCount()
        self._doubted: set[str] = set()
        self._to_download: deque[ShardKey] = deque()
        self._seen: dict[str, float] = {}
        self._last_state: dict[str, str | None] = {}
        self._poll_errors = PollErrors(settings.max_consecutive_poll_errors)
        self._changes: list[ShardRecord] = []
        self._unmarked: dict[ShardKey, ShardRecord] = {}  # each marker's shard as it was before it
        self._written_poll = state.last_poll
        self._observed: set[ShardKey] = set()
        self._fatal: BaseException | None = None

    def __enter__(self) -> BatchDriver:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        # Left while transfers were in flight (execution_timeout, SIGTERM): record the answers that
        # came, a created job's name above all (its "creating" marker would make a retry refuse).
        finished = [(f, t, k) for f, (t, k) in self._futures.items() if t is not Transfer.UPLOAD and f.done()]
        self._futures.clear()
        for future, task, key in finished:
            if not future.cancelled():
                self._finished(task, key, future)
        try:
            self._flush()
        except MaaSError as err:
            if exc[0] is None:
                raise
            first = exc[1] if isinstance(exc[1], BaseException) else None
            # Jobs created and not recorded (paid; the first error may say none exists): they are named
            raise_instead = after_first_error(first, err)
            if raise_instead is None:
                log.exception("Recording the last answers failed too (the first error is raised)")
                return
            raise raise_instead from first

    # What is running -------------------------------------------------------------------------
    def enqueue(self, keys: Iterable[ShardKey]) -> None:
        """Queue new PENDING shards (e.g. of a retry round just added to the state)."""
        self._pending.extend(sorted(keys))

    # Steps -----------------------------------------------------------------------------------
    def handle(self, outcomes: Iterable[JobOutcome]) -> None:
        """Record jobs that ended: download their results, or submit the shard again / give it up."""
        by_job = self.state.by_job()
        for outcome in outcomes:
            record = by_job.get(outcome.job_name)
            if record is None or record.key in self._downloading:
                continue  # not ours, or already handled
            self._busy.discard(record.key)
            self._seen.pop(outcome.job_name, None)
            record = record.but(job_state=outcome.state, ended=round(outcome.ended_at(time.time()), 3))
            if outcome.has_results:
                self._observe(record)  # written with the shard's DONE record
                self._downloading.add(record.key)
                self._to_download.append(record.key)  # sent after the creates this frees a slot for
            else:
                # FAILED, CANCELLED, EXPIRED: maybe billed, reports nothing
                record = self.gate.lost(record, self.state) if self.gate is not None else count_as_lost(record)
                self._retry_or_fail(record, outcome.message)
        self._flush()

    def refetch_lost_parts(self) -> bool:
        """Download again the results of done shards whose part is gone; True if there were any."""
        try:
            present = {path.name for path in self.journal.part_dir().iterdir()}
        except (FileNotFoundError, NotADirectoryError):  # no part downloaded yet
            present = set()
        lost = [r for r in self.state.with_status(ShardStatus.DONE) if self.journal.part(r.key).name not in present]
        for record in lost:
            log.warning("Shard %s: its downloaded results are gone; downloading them again", record.key)
            self._change(record.but(status=ShardStatus.RUNNING))
            self._downloading.add(record.key)
            self._to_download.append(record.key)
        self._flush()
        return bool(lost)

    def pump(self) -> None:
        """Fill the free slots (upload, then marker, then create), finish every transfer in flight;
        then raise the first error that must stop the task, if one happened.

        Creates are sent before downloads: the service's clock starts with the create.
        """
        self.rate_limited = False
        to_create = self._fill()
        while True:
            self._flush()  # the "creating" markers are stored before the creates are sent
            if to_create and not self._lease_held():
                to_create = []  # not sent: the transfers in flight are recorded, then the task stops
            for key in to_create:
                record = self.state.shards[key]
                self._submit(Transfer.CREATE, key, self.hook.create_batch_job, record.file_name, record.display_name)
            while self._to_download:
                key = self._to_download.popleft()
                job_name = self.state.shards[key].job_name
                self._submit(Transfer.DOWNLOAD, key, self.hook.download_results, job_name, self.journal.part(key))
            if not self._futures:
                break
            done, _ = wait(self._futures, return_when=FIRST_COMPLETED)
            to_create = []
            for future in done:
                task, key = self._futures.pop(future)
                if self._finished(task, key, future):
                    to_create.append(key)
            to_create.extend(self._fill())
        self._flush()
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            if isinstance(fatal, MaaSStateError):  # the lease is lost: another try, or the state removed
                fatal = unrecorded_error(self.journal, [], fatal, self.save_job_names, self.state)
            raise fatal

    def _lease_held(self) -> bool:
        """Checked after the markers are stored, before their creates are sent: a try that took the
        state over sees the markers, or this one sees its lease (see ``batch/record/ownership.py``)."""
        try:
            check_lease(self.journal)
        except MaaSStateError as err:
            self._fatal = self._fatal or err
            return False
        return True

    def preupload(self, count: int) -> None:
        """Upload the next ``count`` pending shards now, while the jobs run (uploads cost nothing):
        once slots free up, their creates go out at once. A failed upload is left for its turn."""
        keys = [
            key
            for key in self._pending
            if self.state.shards[key].status is ShardStatus.PENDING and not self.state.shards[key].file_name
        ][:count]
        futures = {self._pool.submit(self._upload, key): key for key in keys}
        for future in as_completed(futures):
            key = futures[future]
            try:
                file_name, display_name = future.result()
            except MaaSError as err:
                log.warning("Shard %s: uploading ahead failed (%s); it is uploaded again when its turn comes", key, err)
                continue
            self._change(self.state.shards[key].but(file_name=file_name, display_name=display_name))
        self._flush()

    # Internals -------------------------------------------------------------------------------
    def _submit(self, task: Transfer, key: ShardKey, fn: Callable[..., Any], *args: Any) -> None:
        self._futures[self._pool.submit(fn, *args)] = (task, key)

    def _fill(self) -> list[ShardKey]:
        """Give free slots to pending shards: upload them, or (uploaded ahead) mark them for their
        create; returns the shards marked."""
        marked: list[ShardKey] = []
        if self._fatal is not None or self.rate_limited:
            return marked
        held: list[ShardKey] = []  # issue 22: shards the gate holds back (the canary runs)
        while self._pending and len(self._busy) < self.settings.max_active_jobs:
            key = self._pending.popleft()
            record = self.state.shards[key]
            if record.status is not ShardStatus.PENDING or key in self._busy:
                continue
            if self.gate is not None and (admission := self.gate.admit(key, self.state)) is not Admission.GO:
                if admission is Admission.WAIT:
                    held.append(key)
                    continue
                not_sent = [k for k in (key, *self._pending, *held) if k not in self._busy]
                for unsent in self.gate.unsent(self.state, not_sent):  # STOP: none of them is sent
                    self._change(unsent)
                self._pending.clear()
                held = []
                break
            self._busy.add(key)
            if record.file_name and record.display_name:
                self._mark_creating(record, record.file_name, record.display_name)
                marked.append(key)
            else:
                self._submit(Transfer.UPLOAD, key, self._upload, key)
        self._pending.extendleft(reversed(held))
        return marked

    def _mark_creating(self, record: ShardRecord, file_name: str, display_name: str) -> None:
        """The "create in flight" marker: stored (by the next flush) before the create is sent."""
        self._unmarked[record.key] = record.but(file_name=file_name, display_name=display_name)  # uploaded
        self._change(
            record.but(
                status=ShardStatus.CREATING,
                file_name=file_name,
                display_name=display_name,
                job_name=None,
                clear_epoch=self.clear_epoch,
                attempts=record.attempts + 1,
                created=None,
                ended=None,
                **(self.gate.marker_fields(record.key, self.state) if self.gate is not None else {}),
            )
        )

    def _change(self, record: ShardRecord) -> None:
        self.state.apply(record)
        self._changes.append(record)

    def _observe(self, record: ShardRecord) -> None:
        """A change of what the page shows only (a job's state, its end): kept in the state and
        written with the next change, never in a journal write of its own."""
        self.state.apply(record)
        self._observed.add(record.key)

    def _flush(self) -> None:
        if not self._changes:
            return
        changes, self._changes = self._changes, []
        unmarked, self._unmarked = self._unmarked, {}
        changed = {record.key for record in changes}
        observed = [self.state.shards[key] for key in sorted(self._observed - changed)]
        self._observed.clear()
        polled = self.state.last_poll != self._written_poll  # carried in this write, never one of its own
        try:
            self.journal.append(self.state, changes + observed, meta=polled)
        except MarkNotRecorded as err:  # the markers are stored, the second record failed: none is sent
            raise self._unmark(changes, unmarked, err) from err.cause
        except Exception as err:  # names the changes only: the observed records were stored before
            raise unrecorded_error(self.journal, changes, err, self.save_job_names, self.state) from err
        self._written_poll = self.state.last_poll

    def _unmark(
        self, changes: list[ShardRecord], unmarked: dict[ShardKey, ShardRecord], err: MarkNotRecorded
    ) -> MaaSError:
        """The journal holds "creating" markers whose creates are not sent (their mark could not be
        recorded): one more journal object returns those shards to what they were before (pending,
        their uploads kept), so the next try sends them without asking for a clear."""
        undo = [unmarked[r.key] for r in changes if r.status is ShardStatus.CREATING and r.key in unmarked]
        for record in undo:
            self.state.apply(record)
        try:
            self.journal.append(self.state, undo)
        except Exception as undo_err:
            return unmarked_error(self.journal, [r.key for r in undo], err, undo_err)
        return unmarked_error(self.journal, [r.key for r in undo], err)

    def _upload(self, key: ShardKey) -> tuple[str, str]:
        plan = self.state.plan(key)
        file_name, display_name = self.names(key, plan)
        source = self.state.rounds[key.round].source or self.settings.source
        with open_source(source) as handle, tempfile.SpooledTemporaryFile(max_size=8 * CHUNK_SIZE) as tmp:
            copy_shard(handle, plan, tmp, label=source_label(source, "source"))  # checks the plan's sha256
            tmp.seek(0)
            return self.hook.upload_file(tmp, file_name)["name"], display_name

    def _retry_or_fail(self, record: ShardRecord, reason: str) -> None:
        if record.attempts <= self.shard_retries:
            log.warning(
                "Shard %s: %s; submitting it again (attempt %d of %d)",
                record.key,
                reason,
                record.attempts + 1,
                self.shard_retries + 1,
            )
            self._change(record.but(status=ShardStatus.PENDING, job_name=None, file_name=None, error=reason))
            self._pending.append(record.key)
        else:
            log.error(
                "Shard %s: %s; no retries left (shard_retries=%d): its %d requests go to the failed file",
                record.key,
                reason,
                self.shard_retries,
                self.state.plan(record.key).requests,
            )
            self._change(record.but(status=ShardStatus.FAILED, error=reason))
