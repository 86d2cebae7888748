"""MaaSBatchPredictionOperator: input of any size, upload, create, wait, download, merge, in one task.

The Airflow side only: parameters, deferral, XCom, lineage. What the batch does is in ``batch/``:
its settings (``settings``), the plan and resume decisions (``resume``), the files of each round
(``round_files``), the transfers (``driver``), when to wake up (``pacing``), the outputs and the
summary (``summary``).
"""

from __future__ import annotations

import functools
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_maas._compat import conf
from airflow_provider_maas.batch.create_guard import clear_round
from airflow_provider_maas.batch.driver import BatchDriver, ShardNames
from airflow_provider_maas.batch.journal import BatchJournal
from airflow_provider_maas.batch.ownership import check_lease, record_writer
from airflow_provider_maas.batch.pacing import MAX_NAMED_JOBS, check_deadline, fire_after, past_deadline
from airflow_provider_maas.batch.plan import DEFAULT_MAX_OUTPUT_TOKENS
from airflow_provider_maas.batch.recovery import finished_meanwhile, remember, save_job_names
from airflow_provider_maas.batch.request_lines import MAX_BYTES_PER_FILE, MAX_REQUESTS_PER_FILE
from airflow_provider_maas.batch.resume import resume_after_deferral, start_or_resume
from airflow_provider_maas.batch.round_files import next_round
from airflow_provider_maas.batch.settings import (
    LIMITS,
    BatchSettings,
    check_limits,
    is_true,
    retry_rule_and_prices,
    reuse_paths,
)
from airflow_provider_maas.batch.summary import check_outcome, write_outputs
from airflow_provider_maas.client.naming import display_name, task_identity, upload_name
from airflow_provider_maas.exceptions import MaaSError, MaaSTimeoutError
from airflow_provider_maas.hooks.connection import DEFAULT_CONN_ID
from airflow_provider_maas.operators import _metrics as metrics
from airflow_provider_maas.operators._common import MaaSBaseOperator, publish_summary
from airflow_provider_maas.operators._cost import CostControl
from airflow_provider_maas.plugins.links import MaaSProgressLink, announce
from airflow_provider_maas.storage import check_destination, to_path, uri_of
from airflow_provider_maas.triggers.maas import DEFAULT_MAX_CONSECUTIVE_ERRORS, BatchJobsEvent, MaaSBatchJobsTrigger

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from airflow_provider_maas.batch.budget import SpendGate
    from airflow_provider_maas.batch.shards import ShardPlan
    from airflow_provider_maas.batch.state import BatchState, ShardKey


class MaaSBatchPredictionOperator(CostControl, MaaSBaseOperator):
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
    ``summary``) counts ``reused`` and ``deduplicated`` answers, requests ``sent`` (every send,
    retries included), ``retry_rounds`` (``[{"round", "retried", "succeeded"}]``), the tokens per category (``prompt_tokens``,
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
    :param start_over: Discard a batch state that is not whole (missing, damaged, of another format
        version, pointed at by ``task_state_store`` but gone) and plan the batch again (templated:
        ``True``, ``"true"``, ``"1"``...). A person's explicit choice, named by the error that stops the
        task in that case: the jobs the state recorded are abandoned (they keep running and are billed);
        answers already downloaded are kept and reused. Applied after a person's clear only: an automatic
        retry in the clear round the batch last ran in ignores it (on Airflow >= 3.3, where the round is
        recorded), so a value left set never pays again on its own. Set it back afterwards.
    :param reuse_other_models: Also reuse the answers of ``reuse_results`` files written by
        another ENDPOINT (another model). By default they are left unused (the summary's
        ``reuse_skipped_other_model`` counts them); the ENDPOINT is recorded beside each results file.
    :param prices: USD per 1,000,000 tokens, ``{"prompt": ..., "candidates": ..., "thoughts": ...}``
        (``thoughts`` defaults to ``candidates``): the summary then gives ``cost_usd`` and the
        ``cost_avoided_usd`` by reuse and deduplication.
    :param dry_run: Plan without paying: validate, match ``reuse_results``, deduplicate, estimate
        and plan the shards; nothing is uploaded, no job created. Pushes XCom ``plan`` (also the
        return value) and logs it as a table. See "Cost control" in the README.
    :param max_cost_usd: A hard cap in USD (needs ``prices``) on what this batch spends, across
        every try, resume and retry round: a create whose worst case would pass it, added to what
        was spent and what is reserved for jobs in flight, is not sent; the jobs in flight finish,
        then the task fails with :class:`~airflow_provider_maas.exceptions.MaaSBudgetExceededError`.
    :param default_max_output_tokens: Output tokens assumed for a request without
        ``generationConfig.maxOutputTokens`` (estimates and worst case).
    :param canary_requests: Send the first N requests (<= 100) as one job first; the rest waits
        for its answers (its failures, and its measured cost against ``max_cost_usd``). 0: none.
    :param canary_max_failed: Fraction of the canary's requests that may fail (or be invalid)
        before nothing more is sent (:class:`~airflow_provider_maas.exceptions.MaaSCanaryFailedError`).
    :param response_schema: A JSON Schema (dict) or a Pydantic model class each answer's text must
        match (as JSON); an answer that does not is placed with a ``status`` saying why
        (``INVALID_OUTPUT: ...``), goes to the failed file and is counted as ``invalid_output``.
    :param retry_invalid: Send invalid answers' requests again within ``request_retries``.
    :param set_response_schema: Add ``responseMimeType: application/json`` and the schema (in
        Gemini's ``responseSchema`` form) to requests that ask for no schema of their own.
    """

    template_fields = (
        "source",
        "destination",
        "display_name",
        "endpoint",
        "maas_conn_id",
        "reuse_results",
        "start_over",
    )
    operator_extra_links = (MaaSProgressLink(),)

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
        maas_conn_id: str = DEFAULT_CONN_ID,
        endpoint: str | None = None,
        reuse_results: Any = None,
        deduplicate: bool = True,
        request_retries: int = 1,
        retry_failures: list[str] | Callable[[str], bool] | None = None,
        prices: dict[str, float] | None = None,
        dry_run: bool = False,
        max_cost_usd: float | None = None,
        default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        canary_requests: int = 0,
        canary_max_failed: float = 0.5,
        response_schema: dict[str, object] | type | None = None,
        retry_invalid: bool = False,
        set_response_schema: bool = True,
        start_over: str | bool = False,
        reuse_other_models: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(maas_conn_id=maas_conn_id, endpoint=endpoint, **kwargs)
        self._should_retry, self.prices = retry_rule_and_prices(retry_failures, prices)
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
        self.reuse_results = reuse_results
        self.reuse_other_models = reuse_other_models
        self.deduplicate = deduplicate
        self.request_retries = request_retries
        self.retry_failures = retry_failures
        self.plan_only = dry_run  # BaseOperator.dry_run is a method: the parameter is kept under another name
        self.max_cost_usd = max_cost_usd
        self.default_max_output_tokens = default_max_output_tokens
        self.canary_requests = canary_requests
        self.canary_max_failed = canary_max_failed
        self.response_schema = response_schema
        self.retry_invalid = retry_invalid
        self.set_response_schema = set_response_schema
        self.start_over = start_over
        check_limits({name: getattr(self, name) for name in LIMITS})
        self._check_cost_control()

    def _settings(self, journal: BatchJournal | None = None, source: Any = None) -> BatchSettings:
        """This try's settings (templated fields rendered); ``source``: the requests to send, if
        not the operator's (the schema added); ``journal``: None for a dry run."""
        given = {"source": source} if source is not None else {}
        return BatchSettings.of(
            self,
            should_retry=self._retry_rule(self._should_retry),
            start_over=is_true(self.start_over, what="start_over"),
            kept_answers=journal.kept_answers if journal is not None else None,
            endpoint_of=lambda: self.hook.config.endpoint,
            **given,
        )

    # Entry points ---------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        if self.plan_only:
            return self._plan_only(context, self._settings)
        dest = check_destination(self.destination, what="destination")
        journal = BatchJournal.for_task(dest, context)
        if finished_meanwhile(context, journal, this_round=True):  # Airflow did not record that try's success
            self.log.warning(
                "An earlier try of this task instance finished this batch in this clear round (its success was "
                "not recorded: a worker lost after it, or a zombie's retry): the results are at %s. Nothing is "
                "paid again; clear the task to run the batch again.",
                uri_of(dest),
            )
            return uri_of(dest)
        settings = self._settings(journal, self._requests_to_plan(journal, write=True))
        state = start_or_resume(context, journal, settings)
        announce(context, journal, self.prices)  # where the progress page finds the state
        return self._run(context, journal, state, settings)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Resume after the trigger: record the ended jobs, then go on."""
        resumed = BatchJobsEvent.from_event(event)
        journal = BatchJournal.for_task(self.destination, context)
        if finished_meanwhile(context, journal):  # another live try (a zombie's retry, 'tasks test') did it
            dest_uri = uri_of(to_path(self.destination, what="destination"))
            self.log.warning(
                "Another try of this task instance finished the batch while this one was deferred: the results "
                "are at %s. Nothing is left to do, and nothing was paid again.",
                dest_uri,
            )
            return dest_uri
        settings = self._settings(journal, self._requests_to_plan(journal, write=False))
        known = [o.job_name for o in resumed.ended] + list(resumed.running)  # named if the state is gone
        state = resume_after_deferral(context, journal, settings, known)
        if resumed.status == "timeout":
            running = list(state.by_job())
            raise MaaSTimeoutError(f"{resumed.message} Still running: {', '.join(running[:MAX_NAMED_JOBS])}")
        if resumed.status == "error":
            raise MaaSError(f"Waiting for the batch jobs failed: {resumed.message}")
        return self._run(context, journal, state, settings, resumed)

    # Running --------------------------------------------------------------------------------
    def _names(self, context: Context) -> ShardNames:
        def names(key: ShardKey, plan: ShardPlan) -> tuple[str, str]:
            # ``#<shard>`` in round 0, ``#<round>.<shard>`` after: no two shards of a batch share a name
            shown = f"{self.display_name or display_name(context)}#{key}"
            return upload_name(context, plan.sha256, shard=key.index), shown

        return names

    def _run(
        self,
        context: Context,
        journal: BatchJournal,
        state: BatchState,
        settings: BatchSettings,
        resumed: BatchJobsEvent | None = None,
    ) -> str:
        self.hook.get_conn()  # the connection is looked up once, before the pool threads share the hook
        gate = self._gate(journal, settings.source)
        with BatchDriver(
            hook=metrics.CountingCreates(self.hook, context),
            journal=journal,
            state=state,
            source=settings.source,
            names=self._names(context),
            max_active_jobs=self.max_active_jobs,
            max_parallel_transfers=self.max_parallel_transfers,
            shard_retries=self.shard_retries,
            clear_round=clear_round(context),
            max_consecutive_poll_errors=self.max_consecutive_poll_errors,
            gate=gate,
            save_job_names=functools.partial(save_job_names, context, journal.uri),
        ) as driver:
            if resumed is not None:
                driver.mark_seen(driver.running_jobs())  # the trigger saw them running just now
                driver.handle(resumed.ended)
            if gate is not None and self.canary_requests:
                driver.refetch_lost_parts()  # the canary's verdict is read from its part: it must be there
            while True:
                driver.pump()
                running = driver.running_jobs()
                metrics.jobs_active(context, len(running))
                if not running and state.finished:
                    if driver.refetch_lost_parts():
                        continue
                    if (gate is None or not gate.stopped(state)) and (added := next_round(settings, journal, state)):
                        driver.enqueue(added)
                        continue
                    break
                stale = driver.stale_jobs(self.poll_interval) if past_deadline(state) else []
                if stale and (ended := driver.poll(stale)):  # a retry after wait_timeout: ended since?
                    driver.handle(ended)
                    continue
                check_deadline(state, running, wait_timeout=self.wait_timeout)
                wake = fire_after(
                    state, running, max_active_jobs=self.max_active_jobs, rate_limited=driver.rate_limited
                )
                if self.deferrable and running:
                    stale = driver.stale_jobs(self.poll_interval)
                    ended = driver.poll(stale) if stale else []
                    if ended:  # never defer on jobs already seen ended
                        driver.handle(ended)
                        continue
                    if driver.running_jobs() != running:  # a gone job's shard is due again
                        continue
                    if driver.doubted():  # a job answered 404: polled again here, not in the trigger
                        time.sleep(self.poll_interval)
                        continue
                    driver.preupload(wake or 0)
                    journal.settle(state)
                    self._defer(state, running, wake)
                if not running:
                    self.log.warning(
                        "The service refused every create for now (429); trying again in %ss", self.poll_interval
                    )
                else:
                    driver.preupload(wake or 0)
                time.sleep(self.poll_interval)
                driver.handle(driver.poll(running))
        return self._finish(context, journal, state, settings, gate)

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
                max_parallel_polls=self.max_parallel_transfers,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(1.0, deadline - time.time()) + 60) if deadline else None,
        )

    # Results --------------------------------------------------------------------------------
    def _finish(
        self,
        context: Context,
        journal: BatchJournal,
        state: BatchState,
        settings: BatchSettings,
        gate: SpendGate | None = None,
    ) -> str:
        check_lease(journal)  # another live try took the state over: it writes the results, not this one
        summary = write_outputs(settings, journal, state)
        if gate is not None:
            summary.update(self._cost_summary(context, gate, state, settings))
        dest_uri = uri_of(to_path(self.destination, what="destination"))
        publish_summary(self, context, summary, dest_uri)
        metrics.batch_finished(context, summary)
        self.record_lineage([self.source, *reuse_paths(settings.reuse_results)], [dest_uri, summary["failed_uri"]])
        if gate is not None and (stopped := gate.stop_error(state, summary)) is not None:
            raise stopped  # the state stays: a retry finds the spend and creates nothing that does not fit
        check_outcome(summary, dest_uri, fail_on_partial=self.fail_on_partial)
        self._remove_schema_requests(journal)
        remember(context, journal, finished=True)  # first: a state gone on purpose is not "lost"
        record_writer(journal, task_identity(context))
        try:
            journal.remove()
        except OSError as err:  # the results are written: a retry would find a half-removed state
            self.log.warning(
                "The results are written, but removing the batch state at %s failed (%s): delete that folder "
                "by hand (it is not needed any more)",
                journal.uri,
                err,
            )
        return dest_uri
