"""What a finished transfer means for its shard: the half of the batch driver that applies the pool's answers.

An upload's answer marks the shard "creating" (its create is due at once); a create's records the
job; a download's makes the shard DONE. A refusal at capacity (429) puts the shard back in line for
the next round; a download answering 404 on :data:`~.polling.NOT_FOUND_TRIES` fetches in a row (or
one 410) means its results are gone, and the shard is submitted again; any other failure is
remembered and stops the task once the transfers in flight are recorded.
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.cost.spend import count_as_lost
from airflow_provider_maas.batch.polling import NOT_FOUND_TRIES, NotFoundCount
from airflow_provider_maas.batch.record.state import ShardStatus
from airflow_provider_maas.client.failures import proves_not_created
from airflow_provider_maas.exceptions import MaaSNotFoundError, MaaSRateLimitError, MaaSResultsGoneError

if TYPE_CHECKING:
    from collections import deque
    from concurrent.futures import Future

    from airflow_provider_maas.batch.cost.budget import SpendGate
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import BatchState, ShardKey, ShardRecord

log = logging.getLogger("airflow_provider_maas.batch.driver")  # the driver's half: its messages are the driver's


class Transfer(str, Enum):
    """What a pool thread sends for a shard."""

    UPLOAD = "upload"
    CREATE = "create"
    DOWNLOAD = "download"


class TransferOutcomes:
    """The transfer half of the batch driver (a mixin, like :class:`~.polling.JobWatch`: the driver
    owns the attributes below)."""

    journal: BatchJournal
    state: BatchState
    gate: SpendGate | None
    rate_limited: bool
    _busy: set[ShardKey]
    _pending: deque[ShardKey]
    _downloading: set[ShardKey]
    _not_found: NotFoundCount  # 404s in a row on a shard's job or results
    _seen: dict[str, float]
    _fatal: BaseException | None

    def _change(self, record: ShardRecord) -> None:
        raise NotImplementedError

    def _mark_creating(self, record: ShardRecord, file_name: str, display_name: str) -> None:
        raise NotImplementedError

    def _retry_or_fail(self, record: ShardRecord, reason: str) -> None:
        raise NotImplementedError

    def _finished(self, task: Transfer, key: ShardKey, future: Future[Any]) -> bool:
        """Apply one finished transfer; True if the shard's create is due now (its marker is set)."""
        record = self.state.shards[key]
        try:
            result = future.result()
        except MaaSRateLimitError as err:
            if task is Transfer.DOWNLOAD:  # the job stays RUNNING: polled again, then downloaded again
                self._downloading.discard(key)
                log.warning("Shard %s: %s; its results are downloaded at the next poll", key, err)
                return False
            self._busy.discard(key)
            self._pending.appendleft(key)
            self.rate_limited = True
            if task is Transfer.CREATE:  # the service did not take it: no job, the attempt does not count
                self._change(record.but(status=ShardStatus.PENDING, attempts=record.attempts - 1))
            log.warning("Shard %s: %s; the service is at capacity, the shard waits for the next round", key, err)
            return False
        except MaaSNotFoundError as err:
            if task is not Transfer.DOWNLOAD:
                self._failed(task, key, record, err)
                return False
            # 410 (MaaSResultsGoneError) proves the results are gone. A 404 may be a glitch of a job
            # that ended seconds ago: the shard is polled and fetched again, and only a 404 on
            # NOT_FOUND_TRIES fetches in a row counts as gone (a new job is paid for).
            self._downloading.discard(key)
            if not isinstance(err, MaaSResultsGoneError):
                count = self._not_found.seen(key)
                if not NotFoundCount.gone(count):
                    log.warning(
                        "Shard %s: no results for job %s (%s, %d of %d); fetching them again at the next poll",
                        key,
                        record.job_name,
                        err,
                        count,
                        NOT_FOUND_TRIES,
                    )
                    return False
            log.warning(
                "Shard %s: the results of job %s are gone (%s); a new job will be created", key, record.job_name, err
            )
            # the job ran and was paid for: its cost stays spent
            record = self.gate.lost(record, self.state) if self.gate is not None else count_as_lost(record)
            self._retry_or_fail(record, f"the results of job {record.job_name} are gone")
            return False
        except Exception as err:
            self._failed(task, key, record, err)
            return False
        if task is Transfer.UPLOAD:
            if self._fatal is not None or self.rate_limited:
                self._busy.discard(key)
                self._pending.appendleft(key)
                return False
            self._mark_creating(record, *result)
            return True
        if task is Transfer.CREATE:
            self._change(
                record.but(
                    status=ShardStatus.RUNNING,
                    job_name=result["name"],
                    job_state=result.get("state"),
                    created=round(time.time(), 3),  # ms: a shorter journal line
                )
            )
            self._seen[result["name"]] = time.monotonic()
            log.info(
                "Shard %s: job %s created (%d requests, attempt %d)",
                key,
                result["name"],
                self.state.plan(key).requests,
                record.attempts,
            )
        else:
            self._downloading.discard(key)
            checked = self.gate.downloaded(record, self.journal.part(key), self.state) if self.gate is not None else {}
            self._change(record.but(status=ShardStatus.DONE, **checked))
        return False

    def _failed(self, task: Transfer, key: ShardKey, record: ShardRecord, err: Exception) -> None:
        """A transfer failed for good: remember the first such error; it stops the task once the
        transfers in flight are recorded."""
        if task is Transfer.DOWNLOAD:
            self._downloading.discard(key)  # the job stays RUNNING: the next try polls it and downloads
        elif task is Transfer.UPLOAD:
            self._busy.discard(key)
            self._pending.appendleft(key)
        elif proves_not_created(err):  # a refusal (4xx), or a connection never made: no job exists
            self._busy.discard(key)
            self._change(record.but(status=ShardStatus.PENDING, attempts=record.attempts - 1, file_name=None))
        # Otherwise an uncertain create: the marker stays, so no later try creates again on its own.
        log.error("Shard %s: %s failed: %s", key, task.value, err)
        if self._fatal is None:
            self._fatal = err
