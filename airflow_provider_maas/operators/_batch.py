"""MaaSBatchPredictionOperator: input of any size, upload, create, wait, download, merge, in one task."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import tempfile
import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.sdk import BaseOperator

from airflow_provider_maas._compat import conf
from airflow_provider_maas.batch.cost import check_prices
from airflow_provider_maas.batch.driver import BatchDriver
from airflow_provider_maas.batch.journal import BatchJournal
from airflow_provider_maas.batch.merge import failed_path_for, merge_shard_results
from airflow_provider_maas.batch.parts import concatenate, write_failure_part
from airflow_provider_maas.batch.request_lines import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE
from airflow_provider_maas.batch.results import ResultsFormatError
from airflow_provider_maas.batch.rounds import (
    add_origins,
    all_succeeded,
    merge_answers,
    retry_predicate,
    write_requests_to_send,
    write_retries,
)
from airflow_provider_maas.batch.shards import ShardPlan, plan_shards
from airflow_provider_maas.batch.state import (
    STATE_VERSION,
    BatchState,
    Round,
    ShardKey,
    ShardStatus,
    fingerprint,
)
from airflow_provider_maas.client.naming import display_name, task_identity, upload_name
from airflow_provider_maas.exceptions import (
    MaaSConfigError,
    MaaSError,
    MaaSInputError,
    MaaSJobFailedError,
    MaaSTimeoutError,
)
from airflow_provider_maas.hooks.maas import MaaSHook
from airflow_provider_maas.operators._common import publish_summary
from airflow_provider_maas.operators._guard import CREATING, clear_round, refuse_uncertain_create
from airflow_provider_maas.operators._lineage import LineageMixin
from airflow_provider_maas.storage import CHUNK_SIZE, atomic_writer, check_destination, open_source, to_path, uri_of
from airflow_provider_maas.triggers.maas import DEFAULT_MAX_CONSECUTIVE_ERRORS, BatchJobsEvent, MaaSBatchJobsTrigger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.sdk import Context, ObjectStoragePath

#: Key in ``context["task_state_store"]`` (Airflow >= 3.3): where the batch state is, and its format.
STATE_KEY = "maas_batch_state"
#: Shard errors quoted in the summary and in the error of a batch where nothing succeeded.
MAX_QUOTED_ERRORS = 5


class MaaSBatchPredictionOperator(LineageMixin, BaseOperator):
    """Run a whole batch in one task: split, upload, create jobs, wait, download, merge in input order.

    The input may hold any number of requests: it is split into shards that fit one upload
    (``max_requests_per_file``, ``max_bytes_per_file``), at most ``max_active_jobs`` jobs run at
    once, a shard whose job ends FAILED, CANCELLED or EXPIRED (or whose results are gone) is
    submitted again up to ``shard_retries`` times, and the results are written to ``destination``
    in the order of the input requests (matched by normalised request, as the service neither keeps
    order nor echoes requests byte for byte). Requests that failed or have no result go to
    ``<destination stem>.failed.jsonl``, ready to resubmit; those of a shard whose every job failed
    carry the job's error as their ``status`` in the results. The task fails if no request
    succeeded.

    Each answer is paid once: requests answered in ``reuse_results`` are not sent, identical
    requests are sent once (``deduplicate``), and requests that failed for a transient reason or got
    no result are sent again in new shards (``request_retries`` rounds). The summary (XCom
    ``summary``) counts ``reused``, ``deduplicated`` and ``sent`` answers, ``retry_rounds``
    (``[{"round", "retried", "succeeded"}]``), the tokens per category (``prompt_tokens``,
    ``candidates_tokens``, ``thoughts_tokens``, ``total_tokens``; ``tokens_reused``,
    ``tokens_deduplicated``) and, with ``prices``, ``cost_usd`` and ``cost_avoided_usd``.

    Resumable on every Airflow version: the state (shards, their jobs) lives in small objects beside
    the destination, in ``.<destination name>.maas/<dag>.<task>.<run>.m<map index>/``, removed once
    the results are written. A retry finds its jobs there and does not pay for them again; a create
    whose answer was lost stops the task (no automatic second job) until a person clears it.

    :param source: Requests JSONL: local path, URI or ``ObjectStoragePath`` (templated).
    :param destination: Where to write the ordered results (templated).
    :param display_name: Job display name prefix (templated). Default: dag, task, run; ``#<shard>`` is appended.
    :param poll_interval: Seconds between status polls.
    :param deferrable: Wait in the triggerer instead of holding a worker slot.
    :param max_active_jobs: At most this many jobs in flight at once (default 100: the triggerer
        polls thousands of jobs cheaply, and a service at capacity answers 429, which only delays
        a shard to the next round).
    :param shard_retries: Resubmissions of a shard whose job ended FAILED, CANCELLED or EXPIRED.
    :param fail_on_partial: Fail (after writing every output) if any request failed.
    :param wait_timeout: Give up waiting after this many seconds (jobs keep running: no cancel call).
    :param max_requests_per_file: At most this many requests per shard (<= 100).
    :param max_bytes_per_file: At most this many bytes per shard (<= 50 MB).
    :param max_parallel_transfers: Uploads, creates, polls and downloads running at once (default
        16: with 0.1 s of API latency a shard costs about 0.4 s of calls; each upload holds at most
        8 MiB in memory, the rest of a large shard spools to a temporary file).
    :param max_consecutive_poll_errors: Failed polls of a job in a row (each retried by the hook)
        tolerated before the task fails: raise it to ride out an outage of a few minutes.
    :param maas_conn_id: The Airflow connection of type ``maas``.
    :param endpoint: ENDPOINT id overriding the connection's (templated).
    :param reuse_results: Earlier results (one results file/URI or a list; templated; a blank
        string is none): a request whose normalised form has a successful answer there is not
        sent; the answer is copied to its place in the output. An input fully answered there
        creates no job.
    :param deduplicate: Send identical requests (same normalised request) once and write the
        answer at each of their places (default). False sends each one: independent samples at
        temperature > 0 (each earlier answer in ``reuse_results`` then serves one of them).
    :param request_retries: Rounds of request-level retries (default 1): once every shard is done,
        the requests that failed with a status ``retry_failures`` accepts, or have no result, are
        sent again in new shards; their answers take the place of the failures. A request failing
        every round goes to the failed file with the reason of its last attempt.
    :param retry_failures: Which failed requests are retried: a list of regular expressions
        searched in the result's ``status``, or a callable ``(status) -> bool``. Default
        (:data:`~airflow_provider_maas.batch.rounds.DEFAULT_RETRY_FAILURES`): RESOURCE_EXHAUSTED,
        UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, ABORTED, codes 429 and 5xx, "rate limit",
        "timed out", "try again", "overloaded"; not client errors (400 INVALID_ARGUMENT, 403,
        a safety block), which fail the same way again. Missing results are always retried.
    :param prices: USD per 1,000,000 tokens, ``{"prompt": ..., "candidates": ..., "thoughts": ...}``
        (``thoughts`` defaults to ``candidates``): the summary then gives ``cost_usd`` and the
        ``cost_avoided_usd`` by reuse and deduplication.
    """

    template_fields = ("source", "destination", "display_name", "endpoint", "maas_conn_id", "reuse_results")

    def __init__(
        self,
        *,
        source: Any,
        destination: Any,
        display_name: str | None = None,
        poll_interval: float = 60,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_active_jobs: int = 100,
        shard_retries: int = 2,
        fail_on_partial: bool = False,
        wait_timeout: float | None = None,
        max_requests_per_file: int = MAX_REQUESTS_PER_FILE,
        max_bytes_per_file: int = MAX_BYTES_PER_FILE,
        max_parallel_transfers: int = 16,
        max_consecutive_poll_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        maas_conn_id: str = "maas_default",
        endpoint: str | None = None,
        reuse_results: Any = None,
        deduplicate: bool = True,
        request_retries: int = 1,
        retry_failures: list[str] | Callable[[str], bool] | None = None,
        prices: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self._should_retry = retry_predicate(retry_failures)
            self.prices = check_prices(prices)
        except ValueError as err:
            raise MaaSInputError(str(err)) from None
        for name, value, low, high in (
            ("max_active_jobs", max_active_jobs, 1, None),
            ("shard_retries", shard_retries, 0, None),
            ("max_requests_per_file", max_requests_per_file, 1, MAX_REQUESTS_PER_FILE),
            ("max_bytes_per_file", max_bytes_per_file, 1, MAX_BYTES_PER_FILE),
            ("max_parallel_transfers", max_parallel_transfers, 1, None),
            ("max_consecutive_poll_errors", max_consecutive_poll_errors, 1, None),
            ("request_retries", request_retries, 0, None),
        ):
            if not isinstance(value, int) or value < low or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
                raise MaaSInputError(f"{name} must be {bounds}, got {value!r}")
        self.source = source
        self.destination = destination
        self.display_name = display_name
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.max_active_jobs = max_active_jobs
        self.shard_retries = shard_retries
        self.fail_on_partial = fail_on_partial
        self.wait_timeout = wait_timeout
        self.max_requests_per_file = max_requests_per_file
        self.max_bytes_per_file = max_bytes_per_file
        self.max_parallel_transfers = max_parallel_transfers
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.maas_conn_id = maas_conn_id
        self.endpoint = endpoint
        self.reuse_results = reuse_results
        self.deduplicate = deduplicate
        self.request_retries = request_retries
        self.retry_failures = retry_failures

    @cached_property
    def hook(self) -> MaaSHook:
        return MaaSHook(maas_conn_id=self.maas_conn_id, endpoint=self.endpoint)

    # Entry points ---------------------------------------------------------------------------
    def execute(self, context: Context) -> str:
        dest = check_destination(self.destination, what="destination")
        journal = BatchJournal.for_task(dest, context)
        with self._requests_to_send() as to_send:
            with open_source(to_send or self.source) as handle:
                empty = to_send is not None and not os.path.getsize(to_send)
                plans = [] if empty else self._plan(handle)
            round_source = journal.root / "round-0.jsonl" if to_send else None
            state = journal.load()
            if state is not None and state.fingerprint == fingerprint(plans):
                self._take_over(context, journal, state)
                self.log.info(
                    "Resuming a previous try: %d shards done, %d jobs running; no job is recreated (%d shards, state at %s)",
                    state.count(ShardStatus.DONE),
                    state.count(ShardStatus.RUNNING),
                    len(state.shards),
                    journal.uri,
                )
            else:
                if state is not None:
                    # A create left in flight by an earlier try of this clear round is refused all
                    # the same: the job it may have made is for the same requests; and so are
                    # running jobs, unless a person cleared the task since.
                    self._refuse_abandoning_jobs(context, journal, state)
                    self._take_over(context, journal, state)
                    self.log.warning(
                        "The input changed since the batch state at %s was written: starting over", journal.uri
                    )
                state = self._start(context, journal, plans, round_source)
            if to_send and round_source is not None and not round_source.exists():
                _copy_file(to_send, round_source)  # before any upload: a retry finds it
        self._remember(context, journal)
        return self._run(context, journal, state)

    def _plan(self, handle: Any) -> list[ShardPlan]:
        return plan_shards(handle, max_requests=self.max_requests_per_file, max_bytes=self.max_bytes_per_file)

    # Reuse, deduplication, retry rounds ------------------------------------------------------------
    def _reuse_sources(self) -> list[ObjectStoragePath]:
        items = self.reuse_results
        if not isinstance(items, (list, tuple)):
            items = [items]
        paths = []
        for number, item in enumerate(items):
            if item is None or (isinstance(item, str) and not item.strip()):
                continue  # e.g. a template rendering a blank param: nothing to reuse
            path = to_path(item, what=f"reuse_results[{number}]")
            if not path.is_file():
                raise MaaSInputError(
                    f"reuse_results[{number}] {uri_of(path)} is not a file; give the results file(s) of an earlier "
                    "run (its destination), or leave reuse_results out"
                )
            paths.append(path)
        return paths

    @contextlib.contextmanager
    def _requests_to_send(self) -> Iterator[str | None]:
        """Round 0's requests in a local temporary file, when reuse or deduplication leaves some out;
        None when every input request is to be sent (the source is then uploaded as it is)."""
        reuse = self._reuse_sources()
        handle, path = tempfile.mkstemp(prefix="maas-send-", suffix=".jsonl")
        try:
            with os.fdopen(handle, "wb") as out, open_source(self.source) as source:
                try:
                    coverage = write_requests_to_send(
                        source, out, reuse=reuse, opener=_open_results, deduplicate=self.deduplicate
                    )
                except ResultsFormatError as err:
                    raise MaaSInputError(f"reuse_results: {err}") from None
            if coverage.reused or coverage.deduplicated:
                self.log.info(
                    "%d requests: %d answered by reuse_results, %d identical to an earlier one (sent once), %d to send",
                    coverage.requests,
                    coverage.reused,
                    coverage.deduplicated,
                    coverage.to_send,
                )
            yield path if coverage.reused or coverage.deduplicated else None
        finally:
            os.unlink(path)

    def _round_results(self, journal: BatchJournal, state: BatchState, number: int) -> list[RoundResults]:
        """Round ``number``'s results in one file per kind: the parts its jobs answered, then (if
        any) those of its shards whose every job failed, each request carrying the job's error."""
        records = sorted((r for r in state.shards.values() if r.key.round == number), key=lambda r: r.key)
        failed = [r for r in records if r.status is ShardStatus.FAILED]
        for record in failed:
            source = state.rounds[number].source or self.source
            write_failure_part(
                source, state.plan(record.key), record.error or "the job failed", journal.part(record.key)
            )
        files = []
        for kind, chosen in (
            ("answered", [r for r in records if r.status is not ShardStatus.FAILED]),
            ("failed", failed),
        ):
            if chosen or kind == "answered":
                combined = journal.root / f"results-r{number}-{kind}.jsonl"
                concatenate((journal.part(r.key) for r in chosen), combined)
                files.append(RoundResults(number, combined, jobs_failed=kind == "failed"))
        return files

    def _next_round(self, journal: BatchJournal, state: BatchState, driver: BatchDriver) -> bool:
        """Once every shard is done: gather the requests to retry into a new round; True if one was added."""
        number = len(state.rounds)
        if number > self.request_retries:
            return False
        results = [item for n in range(number) for item in self._round_results(journal, state, n)]
        last = results[-1]  # the last round's answered results; a failed shard adds a file after it
        with open_source(last.path) as handle_last:
            if not last.jobs_failed and all_succeeded(handle_last, sum(p.requests for p in state.rounds[-1].plans)):
                return False  # every request of the last round answered: nothing to retry
        handle, path = tempfile.mkstemp(prefix="maas-retry-", suffix=".jsonl")
        try:
            with os.fdopen(handle, "wb") as out, open_source(self.source) as source:
                count = write_retries(
                    source,
                    out,
                    reuse=self._reuse_sources(),
                    results=[item.path for item in results],
                    opener=_open_results,
                    should_retry=self._should_retry,
                    final=[index for index, item in enumerate(results) if item.jobs_failed],
                    deduplicate=self.deduplicate,
                )
            if not count:
                return False
            with open(path, "rb") as handle_in:
                plans = self._plan(handle_in)
            target = journal.root / f"round-{number}.jsonl"
            _copy_file(path, target)
        finally:
            os.unlink(path)
        journal.add_round(state, Round(number, tuple(plans), source=uri_of(target)))
        self.log.warning(
            "Retry round %d of %d: %d failed or missing requests sent again in %d shards",
            number,
            self.request_retries,
            count,
            len(plans),
        )
        driver.enqueue(ShardKey(number, plan.index) for plan in plans)
        return True

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Resume after the trigger: record the ended jobs, then go on."""
        resumed = BatchJobsEvent.from_event(event)
        journal = BatchJournal.for_task(self.destination, context)
        state = journal.load()
        if state is None:
            # Not retried automatically: a retry would find no state either and pay for every shard again.
            raise MaaSConfigError(
                f"Resumed, but the batch state at {journal.uri} is gone (removed by hand, or a destination on "
                "one worker's local disk while the task resumed on another?); its jobs exist on the service. "
                "Clear the task to start the batch over (every shard is paid again)."
            )
        state.resumes += 1
        self._take_over(context, journal, state)
        if resumed.status == "timeout":
            running = [name for name in state.by_job()]
            raise MaaSTimeoutError(f"{resumed.message} Still running: {', '.join(running[:10])}")
        if resumed.status == "error":
            raise MaaSError(f"Waiting for the batch jobs failed: {resumed.message}")
        return self._run(context, journal, state, resumed)

    # State ----------------------------------------------------------------------------------
    def _start(
        self, context: Context, journal: BatchJournal, plans: list[ShardPlan], source: ObjectStoragePath | None
    ) -> BatchState:
        state = BatchState(
            fingerprint=fingerprint(plans),
            identity=".".join(task_identity(context)),
            rounds=[Round(0, tuple(plans), source=uri_of(source) if source is not None else None)],
            deadline=self._new_deadline(),
            clear_round=clear_round(context),
        )
        journal.create(state)
        self.log.info(
            "Planned %d shards for %d requests; state at %s", len(plans), sum(p.requests for p in plans), journal.uri
        )
        return state

    def _new_deadline(self) -> float | None:
        return time.time() + self.wait_timeout if self.wait_timeout else None

    @staticmethod
    def _cleared_since(context: Context, state: BatchState) -> bool:
        """Whether a person cleared the task since the state was last taken over."""
        now = clear_round(context)
        return state.clear_round is not None and now is not None and now != state.clear_round

    def _refuse_abandoning_jobs(self, context: Context, journal: BatchJournal, state: BatchState) -> None:
        """The input or the shard settings changed since an earlier try of this clear round: its
        running jobs would be abandoned and their requests paid for again, so stop and say so."""
        running = sorted(state.with_status(ShardStatus.RUNNING), key=lambda r: r.key)
        if not running or self._cleared_since(context, state):
            return
        raise MaaSInputError(
            f"The input or the shard settings (max_requests_per_file, max_bytes_per_file) changed since an "
            f"earlier try of this task created {len(running)} job(s) that are still running (e.g. job "
            f"{running[0].job_name} for shard {running[0].key}); starting over would pay for the same requests "
            f"again. Restore the input and settings to reattach to them, or clear the task to start over (the "
            f"running jobs keep running and are billed). Batch state: {journal.uri}"
        )

    def _take_over(self, context: Context, journal: BatchJournal, state: BatchState) -> None:
        """Make the stored state this try's: refuse creates left in flight (unless the task was
        cleared since); after a clear, failed shards get a new chance and wait_timeout restarts."""
        now = clear_round(context)
        cleared = self._cleared_since(context, state)
        creating = sorted(state.with_status(ShardStatus.CREATING), key=lambda r: r.key)
        changes = []
        for record in creating:
            others = f" ({len(creating) - 1} more shard(s) are in the same case)" if len(creating) > 1 else ""
            marker = {
                "status": CREATING,
                "file_name": record.file_name,
                "display_name": record.display_name,
                "round": record.clear_round,
            }
            refuse_uncertain_create(marker, context, what=f"shard {record.key} (file {record.file_name!r}){others}")
            changes.append(record.but(status=ShardStatus.PENDING))
        if cleared:
            self.log.info("The task was cleared since the last try: failed shards are submitted again")
            changes.extend(
                r.but(status=ShardStatus.PENDING, attempts=0, error=None) for r in state.with_status(ShardStatus.FAILED)
            )
            state.deadline = self._new_deadline()
        state.clear_round = now
        for record in changes:
            state.apply(record)
        journal.append(state, changes, meta=True)

    @staticmethod
    def _remember(context: Context, journal: BatchJournal) -> None:
        """Record where the state is in ``task_state_store`` (Airflow >= 3.3): a few hundred bytes."""
        store: Any = context.get("task_state_store")  # absent before Airflow 3.3
        value = {"location": journal.uri, "version": STATE_VERSION}
        if store is not None and store.get(STATE_KEY) != value:
            store.set(STATE_KEY, value)

    # Running --------------------------------------------------------------------------------
    def _names(self, context: Context) -> Any:
        def names(key: ShardKey, plan: ShardPlan) -> tuple[str, str]:
            # ``#<shard>`` in round 0, ``#<round>.<shard>`` after: no two shards of a batch share a name
            shown = f"{self.display_name or display_name(context)}#{key}"
            return upload_name(context, plan.sha256, shard=key.index), shown

        return names

    def _run(
        self, context: Context, journal: BatchJournal, state: BatchState, resumed: BatchJobsEvent | None = None
    ) -> str:
        self.hook.get_conn()  # the connection is looked up once, before the pool threads share the hook
        with BatchDriver(
            hook=self.hook,
            journal=journal,
            state=state,
            source=self.source,
            names=self._names(context),
            max_active_jobs=self.max_active_jobs,
            max_parallel_transfers=self.max_parallel_transfers,
            shard_retries=self.shard_retries,
            clear_round=clear_round(context),
            max_consecutive_poll_errors=self.max_consecutive_poll_errors,
        ) as driver:
            if resumed is not None:
                driver.mark_seen(driver.running_jobs())  # the trigger saw them running just now
                driver.handle(resumed.ended)
            while True:
                driver.pump()
                running = driver.running_jobs()
                if not running and state.finished:
                    if driver.refetch_lost_parts() or self._next_round(journal, state, driver):
                        continue
                    break
                self._check_deadline(state, running)
                if self.deferrable and running:
                    stale = driver.stale_jobs(self.poll_interval)
                    ended = driver.poll(stale) if stale else []
                    if ended:  # never defer on jobs already seen ended
                        driver.handle(ended)
                        continue
                    fire_after = self._fire_after(state, running, rate_limited=driver.rate_limited)
                    driver.preupload(fire_after or 0)
                    journal.settle(state)
                    self._defer(state, running, fire_after)
                if not running:
                    self.log.warning(
                        "The service refused every create for now (429); trying again in %ss", self.poll_interval
                    )
                else:
                    driver.preupload(self._fire_after(state, running, rate_limited=driver.rate_limited) or 0)
                time.sleep(self.poll_interval)
                driver.handle(driver.poll(running))
        return self._finish(context, journal, state)

    def _fire_after(self, state: BatchState, running: list[str], *, rate_limited: bool) -> int | None:
        """How many jobs must end before a resume is worth it; None: all of them.

        With shards pending, that is when half of ``max_active_jobs`` slots are free (half of the
        running jobs if the service refused creates); otherwise when every job ended. Resumes are
        thus about 2 x shards / max_active_jobs.
        """
        if not state.count(ShardStatus.PENDING):
            return None
        free = self.max_active_jobs - len(running)
        wanted = math.ceil(len(running) / 2) if rate_limited else math.ceil(self.max_active_jobs / 2) - free
        return min(len(running), max(1, wanted))

    def _defer(self, state: BatchState, running: list[str], fire_after: int | None) -> None:
        """Wait in the triggerer until ``fire_after`` of the running jobs ended (or all, or the deadline)."""
        deadline = state.deadline
        self.log.info("Deferring on %d running jobs (resume when %s of them ended)", len(running), fire_after or "all")
        self.defer(
            trigger=MaaSBatchJobsTrigger(
                job_names=running,
                maas_conn_id=self.maas_conn_id,
                endpoint=self.endpoint,
                poll_interval=self.poll_interval,
                end_time=deadline,
                max_consecutive_errors=self.max_consecutive_poll_errors,
                fire_after=fire_after,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(1.0, deadline - time.time()) + 60) if deadline else None,
        )

    def _check_deadline(self, state: BatchState, running: list[str]) -> None:
        if state.deadline and time.time() > state.deadline:
            raise MaaSTimeoutError(
                f"Jobs still running after wait_timeout={self.wait_timeout}s: {', '.join(running[:10])}"
                f"{' ...' if len(running) > 10 else ''}; they keep running on the service (no cancel call)."
            )

    # Results --------------------------------------------------------------------------------
    def _finish(self, context: Context, journal: BatchJournal, state: BatchState) -> str:
        records = sorted(state.shards.values(), key=lambda r: r.key)
        failed = [r for r in records if r.status is ShardStatus.FAILED]
        if len(state.rounds) == 1 and state.rounds[0].source is None:
            # Every input request was sent, once, in round 0: the shard-by-shard merge (memory
            # follows the largest shard) suffices.
            for record in failed:
                write_failure_part(
                    self.source, state.plan(record.key), record.error or "the job failed", journal.part(record.key)
                )
            plans = ((journal.part(r.key), state.plan(r.key)) for r in records)
            parts = ((part, plan.first_line, plan.last_line) for part, plan in plans)
            summary = merge_shard_results(parts, self.source, self.destination)
            add_origins(summary, prices=self.prices)
            summary["round_succeeded"] = [summary["succeeded"]]
        else:
            results = [item for n in range(len(state.rounds)) for item in self._round_results(journal, state, n)]
            summary = self._merge(results)
        reasons = [f"shard {r.key}: {r.error}" for r in failed[:MAX_QUOTED_ERRORS]]
        summary.update(
            shards=len(records),
            failed_shards=len(failed),
            shard_errors=reasons,
            jobs=sum(r.attempts for r in records),
            resumes=state.resumes,
            retry_rounds=[
                {"round": n, "retried": sum(p.requests for p in state.rounds[n].plans), "succeeded": succeeded}
                for n, succeeded in enumerate(summary.pop("round_succeeded"))
                if n
            ],
        )
        dest_uri = uri_of(to_path(self.destination, what="destination"))
        publish_summary(self, context, summary, dest_uri)
        self.record_lineage([self.source, *self._reuse_sources()], [dest_uri, summary["failed_uri"]])
        if failed:
            self.log.error("%d of %d shards failed: %s", len(failed), len(records), "; ".join(reasons))
        if summary["requests"] and not summary["succeeded"]:
            raise MaaSJobFailedError(
                f"No request succeeded: {len(failed)} of {len(records)} shards failed ({'; '.join(reasons)}). "
                f"Every request is in {summary['failed_uri']} with its reason in {dest_uri}. Clearing the task "
                "submits the failed shards again."
            )
        if self.fail_on_partial and summary["failed"]:
            raise MaaSJobFailedError(
                f"{summary['failed']} of {summary['requests']} requests failed (fail_on_partial=True); "
                f"results are in {dest_uri}, failed requests in {summary['failed_uri']}"
            )
        journal.remove()
        return dest_uri

    def _merge(self, results: list[RoundResults]) -> dict[str, Any]:
        """Every request's best answer in input order (see ``rounds.merge_answers``), atomically."""
        dest = to_path(self.destination, what="destination")
        failed = failed_path_for(dest)
        with (
            open_source(self.source) as source,
            atomic_writer(dest) as out,
            atomic_writer(failed) as failed_out,
        ):
            summary = merge_answers(
                source,
                out,
                failed_out,
                reuse=self._reuse_sources(),
                results=[item.path for item in results],
                rounds=[item.round for item in results],
                opener=_open_results,
                deduplicate=self.deduplicate,
                prices=self.prices,
            )
        summary["failed_uri"] = uri_of(failed)
        if summary["unmatched"]:
            self.log.warning(
                "%d result lines match no request of the input; they are not in %s", summary["unmatched"], uri_of(dest)
            )
        if summary["failed"]:
            self.log.warning(
                "%d of %d requests failed or are missing; they are in %s",
                summary["failed"],
                summary["requests"],
                summary["failed_uri"],
            )
        if summary["reused"] or summary["deduplicated"]:
            self.log.info(
                "Answers: %d sent, %d reused from reuse_results, %d shared by identical requests",
                summary["sent"],
                summary["reused"],
                summary["deduplicated"],
            )
        if "cost_usd" in summary:
            avoided = summary["cost_avoided_usd"]
            self.log.info(
                "Cost at the given prices: $%.6f (avoided: $%.6f by reuse, $%.6f by sending identical requests once)",
                summary["cost_usd"],
                avoided["reused"],
                avoided["deduplicated"],
            )
        return summary


class RoundResults(NamedTuple):
    """One results file of a round: what its jobs answered, or (``jobs_failed``) the requests of
    its shards whose every job failed."""

    round: int
    path: ObjectStoragePath
    jobs_failed: bool


_open_results = functools.partial(open_source, what="results file")


def _copy_file(local: str, target: ObjectStoragePath) -> None:
    with open(local, "rb") as handle, atomic_writer(target) as out:
        shutil.copyfileobj(handle, out, CHUNK_SIZE)
