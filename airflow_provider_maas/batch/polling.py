"""How :class:`~airflow_provider_maas.batch.driver.BatchDriver` follows its running jobs: which ones
to poll, the polls, and a job that answers 404 (gone from the service).

A job the state records that answers 404 on :data:`RESULTS_NOT_FOUND_TRIES` polls in a row is gone:
after a person's clear its shard is submitted again (paid again, as for results gone with 410);
on an automatic try the task fails with :class:`~airflow_provider_maas.exceptions.MaaSJobGoneError`
naming the clear, as a retry would see the same.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import as_completed
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.client.states import RESULTS_NOT_FOUND_TRIES, JobOutcome, job_outcome
from airflow_provider_maas.exceptions import MaaSError, MaaSJobGoneError, MaaSNotFoundError, MaaSRetryableError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from concurrent.futures import ThreadPoolExecutor

    from airflow_provider_maas.batch.journal import BatchJournal
    from airflow_provider_maas.batch.state import BatchState, ShardKey, ShardRecord

log = logging.getLogger(__name__)


class JobWatch:
    """The polling half of the batch driver (a mixin: the driver owns the attributes below)."""

    hook: Any
    journal: BatchJournal
    state: BatchState
    clear_round: int | None
    shard_retries: int
    max_poll_errors: int
    _pool: ThreadPoolExecutor
    _busy: set[ShardKey]
    _downloading: set[ShardKey]
    _not_found: dict[ShardKey, int]
    _seen: dict[str, float]
    _last_state: dict[str, str | None]
    _poll_errors: dict[str, int]
    _doubted: set[str]  # jobs whose last poll answered 404, not yet judged gone

    def _retry_or_fail(self, record: ShardRecord, reason: str) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _observe(self, record: ShardRecord) -> None:
        raise NotImplementedError

    def running_jobs(self) -> list[str]:
        """Jobs not seen ended yet."""
        return [name for name, r in self.state.by_job().items() if r.key not in self._downloading]

    def doubted(self) -> bool:
        """Whether a running job answered 404 on its last poll: it is polled again by this try (which
        tells a glitch from a gone job, and names the way on), not handed to the trigger, whose 404
        would only fail the task and defer again on the retry."""
        return any(name in self._doubted for name in self.running_jobs())

    def mark_seen(self, job_names: Iterable[str]) -> None:
        """Note that these jobs were seen still running just now (e.g. by the trigger)."""
        self._seen.update(dict.fromkeys(job_names, time.monotonic()))
        self.state.last_poll = time.time()

    def stale_jobs(self, age: float) -> list[str]:
        """Running jobs not seen running in the last ``age`` seconds (they may have ended since)."""
        now = time.monotonic()
        return [name for name in self.running_jobs() if now - self._seen.get(name, float("-inf")) >= age]

    def poll(self, job_names: list[str]) -> list[JobOutcome]:
        """Poll these jobs once, in the pool; return the outcomes of those that ended.

        A running job's state (queued, running...) and the time of this poll
        (:attr:`BatchState.last_poll`) ride in the next journal write: no write of their own.
        """
        futures = {self._pool.submit(self.hook.get_batch_job, name): name for name in job_names}
        ended = []
        by_job = self.state.by_job()
        for future in as_completed(futures):
            name = futures[future]
            try:
                job = future.result()
            except MaaSNotFoundError as err:
                if self._gone(name, err):
                    continue
                raise
            except MaaSRetryableError as err:
                errors = self._poll_errors[name] = self._poll_errors.get(name, 0) + 1
                if errors >= self.max_poll_errors:
                    raise MaaSError(f"Polling job {name} failed {errors} times in a row: {err}") from err
                log.warning("Polling job %s failed (%d in a row): %s", name, errors, err)
                continue
            self._poll_errors.pop(name, None)
            self._doubted.discard(name)
            outcome = job_outcome(job, name)
            if self._last_state.get(name) != outcome.state:
                log.info("Job %s is %s", name, outcome.state)
                self._last_state[name] = outcome.state
            self._seen[name] = time.monotonic()
            self.state.last_poll = time.time()
            if outcome.ended:
                ended.append(outcome)
            elif (record := by_job.get(name)) is not None and record.job_state != outcome.state:
                self._observe(record.but(job_state=outcome.state))
        return ended

    def _gone(self, name: str, err: MaaSNotFoundError) -> bool:
        """A poll of job ``name`` answered 404/410: True if that is handled (a glitch polled again, or
        after a person's clear, the shard submitted again); else raise :class:`MaaSJobGoneError`."""
        record = self.state.by_job().get(name)
        if record is None:
            return True
        # A job created before the task was cleared is not one that was created seconds ago (whose
        # status may answer 404 for a moment): its first 404 means it is gone.
        cleared = record.clear_round is not None and self.clear_round not in (None, record.clear_round)
        count = self._not_found[record.key] = self._not_found.get(record.key, 0) + 1
        if count < RESULTS_NOT_FOUND_TRIES and not cleared:
            self._doubted.add(name)
            log.warning("Job %s: not found (%s, %d of %d); polled again", name, err, count, RESULTS_NOT_FOUND_TRIES)
            return True
        self._not_found.pop(record.key, None)
        self._doubted.discard(name)
        if cleared:
            log.warning(
                "Shard %s: job %s is gone from the service (%s); the task was cleared since: submitting it again",
                record.key,
                name,
                err,
            )
            self._busy.discard(record.key)
            self._retry_or_fail(record, f"job {name} is gone from the service ({err.status_code})")
            self._flush()
            return True
        raise MaaSJobGoneError(
            f"Job {name} (shard {record.key}) answers {err.status_code} on {count} polls in a row: the service no "
            f"longer knows it, and its results cannot be fetched. An automatic retry would see the same. To submit "
            f"its shard again (paid again), clear the task: after a clear, jobs that answer 404 are replaced (up to "
            f"shard_retries={self.shard_retries} times). Batch state: {self.journal.uri}",
            status_code=err.status_code,
        ) from err
