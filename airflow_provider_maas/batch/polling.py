"""The wait policy: one rule for every waiter (the sensor, both triggers, the batch driver), and
how :class:`~airflow_provider_maas.batch.driver.BatchDriver` follows its running jobs.

The rule, written once here:

- **Error budget.** A poll that still fails after the hook's own retries (408, 429, any 5xx,
  timeouts, connection errors) counts; :data:`DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS` such polls of one
  job in a row end the wait (``max_consecutive_poll_errors``, :class:`PollErrors`); an answer resets
  the count. Any other error ends the wait at once.
- **Gone after three 404s.** A job, or a finished job's results, answering 404 on
  :data:`NOT_FOUND_TRIES` reads in a row is gone, like one 410 (:class:`NotFoundCount`): a single
  404 may be a glitch of a job created or ended seconds ago, and "gone" pays for a new job. For the
  driver, after a person's clear the shard is submitted again; on an automatic try the task fails
  with :class:`~airflow_provider_maas.exceptions.MaaSJobGoneError` naming the clear.
- **First poll after a deferral** waits :func:`first_poll_delay`: one ``poll_interval``, at least
  :func:`min_first_poll_after` (both triggers).
- **Re-transfers.** An upload or download whose bytes fail their check is sent again, at most
  :data:`MAX_TRANSFERS` transfers in all (:func:`transfer_again`).
"""

from __future__ import annotations

import logging
import time
import warnings
from concurrent.futures import as_completed
from typing import TYPE_CHECKING, Any

from airflow_provider_maas._compat import conf
from airflow_provider_maas.batch.int_settings import check_int
from airflow_provider_maas.exceptions import (
    MaaSError,
    MaaSInputError,
    MaaSJobGoneError,
    MaaSNotFoundError,
    MaaSRetryableError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable
    from concurrent.futures import ThreadPoolExecutor

    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState, ShardKey, ShardRecord
    from airflow_provider_maas.client.states import JobOutcome

log = logging.getLogger(__name__)

#: Failed polls of one job in a row (each already retried by the hook) tolerated before the wait
#: fails: the one default of ``max_consecutive_poll_errors`` (sensor, triggers, batch operator).
DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS = 5
#: Calls in flight at once: the one default of the batch operator's ``max_parallel_transfers`` and of
#: the batch trigger's ``max_parallel_polls`` (the operator passes its value on). 100 GETs at the same
#: moment overflowed a real gateway's accept backlog (timeouts, retries: 166 s where 60 s was
#: possible); 16 at 0.1 s each poll 100 jobs in 0.7 s.
DEFAULT_MAX_PARALLEL_TRANSFERS = 16
#: A job or a finished job's results answering 404 this many reads in a row count as gone, like one 410.
NOT_FOUND_TRIES = 3
#: Transfers of one file (upload or download) whose bytes fail their check before the error is raised.
MAX_TRANSFERS = 3
#: The name ``max_consecutive_poll_errors`` had in the triggers' arguments (kwargs serialised by
#: earlier versions carry it): still accepted, with a deprecation warning.
OLD_POLL_ERRORS_NAME = "max_consecutive_errors"

try:
    from airflow.exceptions import AirflowProviderDeprecationWarning as _Deprecated
except ImportError:  # pragma: no cover - every Airflow 3 has it
    _Deprecated = DeprecationWarning  # type: ignore[misc,assignment]


def check_poll_errors(value: Any) -> int:
    """``max_consecutive_poll_errors`` checked: an integer >= 1 (True is not one)."""
    return check_int("max_consecutive_poll_errors", value, 1)


def poll_errors_arg(value: int | None, old: int | None, *, owner: str) -> int:
    """The one ``max_consecutive_poll_errors`` of a waiter, given as ``value`` or under its old name
    ``max_consecutive_errors`` (``old``: warned as deprecated); None: the default."""
    if old is not None:
        warnings.warn(
            f"{owner}: {OLD_POLL_ERRORS_NAME} is deprecated, use max_consecutive_poll_errors",
            _Deprecated,
            stacklevel=3,
        )
        if value not in (None, DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS, old):
            raise MaaSInputError(
                f"{owner}: max_consecutive_poll_errors={value!r} and its old name {OLD_POLL_ERRORS_NAME}={old!r} "
                "disagree; pass max_consecutive_poll_errors only"
            )
        value = old
    return check_poll_errors(DEFAULT_MAX_CONSECUTIVE_POLL_ERRORS if value is None else value)


def min_first_poll_after() -> float:
    """Least wait before a trigger's first poll: twice ``[workers] min_heartbeat_interval`` (10 s by
    default), the longest Airflow's supervisor may take to report the deferring worker's end. On
    Airflow 3.3 a trigger that fires before the scheduler has processed that end makes the scheduler
    fail the resumed try ("finished with state success, but the task instance's state attribute is
    queued")."""
    return 2.0 * conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)


def first_poll_delay(poll_interval: float, first_poll_after: float | None) -> float:
    """Seconds a trigger waits before its first poll: ``first_poll_after`` if given, else one
    ``poll_interval`` and at least :func:`min_first_poll_after` (the waiter has just seen the job running)."""
    return max(float(poll_interval), min_first_poll_after()) if first_poll_after is None else float(first_poll_after)


class PollErrors:
    """The error budget: failed polls in a row, per job."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: dict[str, int] = {}

    def failed(self, job_name: str, err: BaseException, logger: Any = log) -> str | None:
        """Count a failed poll: the message ending the wait once the budget is spent, else None (logged)."""
        errors = self._count[job_name] = self._count.get(job_name, 0) + 1
        if errors >= self.limit:
            return f"Polling job {job_name} failed {errors} times in a row: {err}"
        logger.warning("Polling job %s failed (%d in a row, giving up at %d): %s", job_name, errors, self.limit, err)
        return None

    def answered(self, job_name: str) -> None:
        self._count.pop(job_name, None)


class NotFoundCount:
    """404s in a row, per job or per shard's results: gone at :data:`NOT_FOUND_TRIES`."""

    def __init__(self) -> None:
        self._count: dict[Hashable, int] = {}

    def seen(self, key: Hashable) -> int:
        """Count one 404; the count so far (gone once it reaches :data:`NOT_FOUND_TRIES`: then reset)."""
        count = self._count[key] = self._count.get(key, 0) + 1
        if count >= NOT_FOUND_TRIES:
            self._count.pop(key, None)
        return count

    def answered(self, key: Hashable) -> None:
        self._count.pop(key, None)

    @staticmethod
    def gone(count: int) -> bool:
        return count >= NOT_FOUND_TRIES


class OneJobWait:
    """The rule as a waiter on one job at a time applies it (the sensor, the triggers, the hook's
    wait): failed polls and 404s counted, an answer resets both."""

    def __init__(self, max_consecutive_poll_errors: int) -> None:
        self.errors = PollErrors(max_consecutive_poll_errors)
        self.not_found = NotFoundCount()

    def failed(self, job_name: str, err: MaaSRetryableError | MaaSNotFoundError, logger: Any = log) -> str | None:
        """Judge a poll that raised ``err``: None to poll again (logged), or the message that ends the wait."""
        if not isinstance(err, MaaSNotFoundError):
            return self.errors.failed(job_name, err, logger)
        count = self.not_found.seen(job_name)
        if NotFoundCount.gone(count):
            return gone_message(job_name, err, count)
        logger.warning("Job %s: not found (%s, %d of %d in a row); polled again", job_name, err, count, NOT_FOUND_TRIES)
        return None

    def answered(self, job_name: str) -> None:
        self.errors.answered(job_name)
        self.not_found.answered(job_name)


def poll_job(
    get_job: Callable[[str], dict[str, Any]], job_name: str, rule: OneJobWait, logger: Any = log
) -> dict[str, Any] | None:
    """One synchronous poll under the rule (the sensor, the hook's wait): the job JSON, or None when
    the poll failed and ``rule`` says to poll again. Once it says to stop, raises the poll's transient
    error (:class:`MaaSRetryableError`: Airflow retries it) or, for a job gone, :class:`MaaSNotFoundError`."""
    try:
        job = get_job(job_name)
    except (MaaSRetryableError, MaaSNotFoundError) as err:
        ending = rule.failed(job_name, err, logger)
        if ending is None:
            return None
        if isinstance(err, MaaSRetryableError):
            raise
        raise MaaSNotFoundError(ending, status_code=err.status_code) from err
    rule.answered(job_name)
    return job


def gone_message(job_name: str, err: MaaSNotFoundError, count: int) -> str:
    """What a waiter says of a job that answered 404 on ``count`` polls in a row."""
    return (
        f"Job {job_name} answers {err.status_code} on {count} polls in a row: the service no longer knows it "
        f"(a mistyped job name, or a job gone). {err}"
    )


def transfer_again(what: str, transfer: int, max_transfers: int, err: BaseException) -> bool:
    """After transfer number ``transfer`` of ``what`` failed with ``err``: True (logged) if it is sent
    again, False once ``max_transfers`` transfers were made (the caller raises ``err``)."""
    if transfer >= max_transfers:
        return False
    log.warning("%s failed (transfer %d of %d): %s; transferring again", what, transfer, max_transfers, err)
    return True


class JobWatch:
    """The polling half of the batch driver (a mixin: the driver owns the attributes below)."""

    hook: Any
    journal: BatchJournal
    state: BatchState
    clear_epoch: int | None
    shard_retries: int
    _pool: ThreadPoolExecutor
    _busy: set[ShardKey]
    _downloading: set[ShardKey]
    _not_found: NotFoundCount  # 404s in a row on a shard's job or results
    _seen: dict[str, float]
    _last_state: dict[str, str | None]
    _poll_errors: PollErrors
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
        from airflow_provider_maas.client.states import job_outcome  # run time only: the module is read at parse

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
                if (spent := self._poll_errors.failed(name, err)) is not None:
                    raise MaaSError(spent) from err
                continue
            self._poll_errors.answered(name)
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
        cleared = record.clear_epoch is not None and self.clear_epoch not in (None, record.clear_epoch)
        count = self._not_found.seen(record.key)
        if not NotFoundCount.gone(count) and not cleared:
            self._doubted.add(name)
            log.warning("Job %s: not found (%s, %d of %d); polled again", name, err, count, NOT_FOUND_TRIES)
            return True
        self._not_found.answered(record.key)
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
