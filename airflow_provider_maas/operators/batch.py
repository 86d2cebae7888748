"""MaaSBatchPredictionOperator: input of any size, upload, create, wait, download, merge, in one task.

The Airflow side only: parameters, deferral or sleep, XCom, lineage, metrics. What the batch does is
in ``batch/``: its settings (``settings.BatchSettings``, the one carrier of the parameters) and its
steps (``run.BatchRun``: start or resume, step until only waiting is left, finish).

Only what construction needs (``batch.parameters``: the defaults and checks) is imported with the
module, where the DAG is parsed; the settings of a try (``batch.settings``), the batch's machinery
(``run``, ``dry_run``), the hook and its client, the triggers and ``storage`` are imported by the
first execute.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_maas._compat import conf
from airflow_provider_maas.batch.cost.budget_checks import check_cost_control
from airflow_provider_maas.batch.parameters import DEFAULTS, check_parameters
from airflow_provider_maas.exceptions import MaaSError, MaaSInputError
from airflow_provider_maas.flags import FlagParameters, parameter_flag
from airflow_provider_maas.hooks.connection import DEFAULT_CONN_ID
from airflow_provider_maas.operators import _metrics as metrics
from airflow_provider_maas.operators._common import MaaSBaseOperator, RenamedParameters, publish_summary, renamed
from airflow_provider_maas.plugins.links import MaaSProgressLink, announce

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from airflow_provider_maas.batch.answers.summary_types import BatchSummary
    from airflow_provider_maas.batch.inputs.shards import ShardPlan
    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.record.state import ShardKey
    from airflow_provider_maas.batch.run import BatchRun, Wait
    from airflow_provider_maas.batch.settings import BatchSettings


class MaaSBatchPredictionOperator(FlagParameters, RenamedParameters, MaaSBaseOperator):
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
    retries included), ``retry_rounds`` (``[{"round", "retried", "succeeded"}]``), the tokens per
    category (``prompt_tokens``, ``candidates_tokens``, ``thoughts_tokens``, ``total_tokens``;
    ``tokens_reused``, ``tokens_deduplicated``) and, with ``prices``, ``cost_usd`` and
    ``cost_avoided_usd``.

    Resumable on every Airflow version: the state (shards, their jobs) lives in small objects beside
    the destination, in ``.<destination name>.maas/<dag>.<task>.<run>.m<map index>/``, removed once
    the results are written. A retry finds its jobs there and does not pay for them again; a create
    whose answer was lost stops the task (no automatic second job) until a person clears it.

    Its yes/no parameters take a bool, or a string read as a flag
    (:func:`~airflow_provider_maas.flags.parameter_flag`: ``"false"`` is false, a typo is refused with
    :class:`~airflow_provider_maas.exceptions.MaaSInputError`): where the operator is made or given to
    ``.partial()`` (mapped values: when the task instance runs), ``start_over`` (templated) once rendered.

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
    :param timeout: Give up waiting after this many seconds from submission (jobs keep running: no
        cancel call), as the sensor's ``timeout``. Its old name ``wait_timeout`` is deprecated.
    :param max_requests_per_file: At most this many requests per shard (<= 100).
    :param max_bytes_per_file: At most this many bytes per shard (<= 50 MB).
    :param max_parallel_transfers: Uploads, creates, polls and downloads running at once (default
        16: with 0.1 s of API latency a shard costs about 0.4 s of calls; each upload holds at most
        8 MiB in memory, the rest of a large shard spools to a temporary file). Deferred, the
        trigger polls its running jobs as many at a time (its ``max_parallel_polls``).
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
        (:data:`~airflow_provider_maas.batch.answers.retry_failures.DEFAULT_RETRY_FAILURES`): RESOURCE_EXHAUSTED,
        UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, ABORTED, codes 429 and 5xx, "rate limit",
        "timed out", "try again", "overloaded"; not client errors (400 INVALID_ARGUMENT, 403,
        a safety block), which fail the same way again. Missing results are always retried.
    :param start_over: Discard a batch state that is not whole (missing, damaged, of another format
        version, pointed at by ``task_state_store`` but gone) and plan the batch again (templated:
        ``True``, ``"true"``, ``"1"``...). A person's explicit choice, named by the error that stops the
        task in that case: the jobs the state recorded are abandoned (they keep running and are billed);
        answers already downloaded are kept and reused on the same ENDPOINT. Applied after a person's clear only: an automatic
        retry in the clear epoch the batch last ran in ignores it (on Airflow >= 3.3, where the round is
        recorded), so a value left set never pays again on its own. Set it back afterwards.
    :param reuse_other_models: Also reuse the answers of ``reuse_results`` files written by
        another ENDPOINT (another model), and those a start-over kept from jobs on another ENDPOINT.
        By default they are left unused (the summary's ``reuse_skipped_other_model`` counts them); the
        ENDPOINT is recorded beside each results file and each folder of kept answers.
    :param prices: USD per 1,000,000 tokens, ``{"prompt": ..., "candidates": ..., "thoughts": ...}``
        (``thoughts`` defaults to ``candidates``): the summary then gives ``cost_usd`` and the
        ``cost_avoided_usd`` by reuse and deduplication.
    :param dry_run: Plan without paying: validate, match ``reuse_results``, deduplicate, estimate
        and plan the shards; nothing is uploaded, no job created. Pushes XCom ``plan`` (also the
        return value) and logs it as a table. See "Cost control" in the README. Not templated; a
        string (a Variable, a mapped value) is read strictly where the operator is made: ``"false"``
        is false, a typo is refused (``MaaSInputError``).
    :param max_cost_usd: A hard cap in USD (needs ``prices``) on what this batch spends, across
        every try, resume and retry round: a create whose worst case would pass it, added to what
        was spent and what is reserved for jobs in flight, is not sent; the jobs in flight finish,
        then the task fails with :class:`~airflow_provider_maas.exceptions.MaaSBudgetExceededError`.
    :param default_max_output_tokens: Output tokens assumed for a request without
        ``generationConfig.maxOutputTokens`` (estimates and worst case); with ``max_cost_usd`` it
        is sent as that request's ``maxOutputTokens``, so the worst case is a bound.
    :param max_tokens_per_file_part: The most tokens one file part (``fileData``/``inlineData``: an
        image, a PDF, video, audio) may count in the worst case; ``max_cached_content_tokens``: what
        a request's ``cachedContent`` may count. With ``max_cost_usd``, a request having such a part
        and no bound for it stops the task before anything is uploaded. Answers whose reported
        prompt tokens pass them are counted at their real usage (``answers_over_worst_case``).
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
    RENAMED: ClassVar[dict[str, str]] = {"wait_timeout": "timeout"}
    FLAGS = (
        "deferrable",
        "fail_on_partial",
        "deduplicate",
        "dry_run",
        "retry_invalid",
        "set_response_schema",
        "reuse_other_models",
    )

    def __init__(
        self,
        *,
        source: Any,
        destination: Any,
        display_name: str | None = None,
        poll_interval: float = 60,
        deferrable: bool | str = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_active_jobs: int = 100,
        shard_retries: int = 2,
        fail_on_partial: bool | str = False,
        timeout: float | None = None,
        max_requests_per_file: int = DEFAULTS.max_requests_per_file,
        max_bytes_per_file: int = DEFAULTS.max_bytes_per_file,
        max_parallel_transfers: int = DEFAULTS.max_parallel_transfers,
        max_consecutive_poll_errors: int = DEFAULTS.max_consecutive_poll_errors,
        maas_conn_id: str = DEFAULT_CONN_ID,
        endpoint: str | None = None,
        reuse_results: Any = None,
        deduplicate: bool | str = True,
        request_retries: int = 1,
        retry_failures: list[str] | Callable[[str], bool] | None = None,
        prices: dict[str, float] | None = None,
        dry_run: bool | str = False,
        max_cost_usd: float | None = None,
        default_max_output_tokens: int = DEFAULTS.default_max_output_tokens,
        max_tokens_per_file_part: int | None = None,
        max_cached_content_tokens: int | None = None,
        canary_requests: int = 0,
        canary_max_failed: float = 0.5,
        response_schema: dict[str, object] | type | None = None,
        retry_invalid: bool | str = False,
        set_response_schema: bool | str = True,
        start_over: str | bool = False,
        reuse_other_models: bool | str = False,
        wait_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        timeout = renamed(wait_timeout, "wait_timeout", "timeout", timeout)
        super().__init__(maas_conn_id=maas_conn_id, endpoint=endpoint, **kwargs)
        self.source = source
        self.destination = destination
        self.display_name = display_name
        self.poll_interval = poll_interval
        self.deferrable = parameter_flag(deferrable, what="deferrable")
        self.max_active_jobs = max_active_jobs
        self.shard_retries = shard_retries
        self.fail_on_partial = parameter_flag(fail_on_partial, what="fail_on_partial")
        self.timeout = timeout
        self.max_requests_per_file = max_requests_per_file
        self.max_bytes_per_file = max_bytes_per_file
        self.max_parallel_transfers = max_parallel_transfers
        self.max_consecutive_poll_errors = max_consecutive_poll_errors
        self.reuse_results = reuse_results
        self.reuse_other_models = parameter_flag(reuse_other_models, what="reuse_other_models")
        self.deduplicate = parameter_flag(deduplicate, what="deduplicate")
        self.request_retries = request_retries
        self.retry_failures = retry_failures
        # BaseOperator.dry_run is a method: the parameter is kept under another name
        self.plan_only = parameter_flag(dry_run, what="dry_run")
        self.max_cost_usd = max_cost_usd
        self.default_max_output_tokens = default_max_output_tokens
        self.max_tokens_per_file_part = max_tokens_per_file_part
        self.max_cached_content_tokens = max_cached_content_tokens
        self.canary_requests = canary_requests
        self.canary_max_failed = canary_max_failed
        self.response_schema = response_schema
        self.retry_invalid = parameter_flag(retry_invalid, what="retry_invalid")
        self.set_response_schema = parameter_flag(set_response_schema, what="set_response_schema")
        self.start_over = start_over
        self._should_retry, self.prices = check_parameters(self, retry_failures, prices)
        check_cost_control(
            max_cost_usd=max_cost_usd,
            prices=self.prices,
            default_max_output_tokens=default_max_output_tokens,
            max_tokens_per_file_part=max_tokens_per_file_part,
            max_cached_content_tokens=max_cached_content_tokens,
            canary_requests=canary_requests,
            canary_max_failed=canary_max_failed,
            response_schema=response_schema,
        )

    def _settings(self, journal: BatchJournal | None = None) -> BatchSettings:
        """This try's settings (templated fields rendered); ``journal``: None for a dry run."""
        from airflow_provider_maas.batch.settings import BatchSettings

        return BatchSettings(
            source=self.source,
            destination=self.destination,
            reuse_results=self.reuse_results,
            deduplicate=self.deduplicate,
            should_retry=self._should_retry,
            prices=self.prices,
            request_retries=self.request_retries,
            max_requests_per_file=self.max_requests_per_file,
            max_bytes_per_file=self.max_bytes_per_file,
            max_active_jobs=self.max_active_jobs,
            timeout=self.timeout,
            poll_interval=self.poll_interval,
            shard_retries=self.shard_retries,
            max_parallel_transfers=self.max_parallel_transfers,
            max_consecutive_poll_errors=self.max_consecutive_poll_errors,
            fail_on_partial=self.fail_on_partial,
            canary_requests=self.canary_requests,
            start_over=parameter_flag(self.start_over, what="start_over", templated=True),  # rendered: "true"...
            kept_answers=journal.kept_answers if journal is not None else None,
            reuse_other_models=self.reuse_other_models,
            endpoint_of=lambda: self.hook.config.endpoint,
            response_schema=self.response_schema,
            retry_invalid=self.retry_invalid,
            set_response_schema=self.set_response_schema,
            max_cost_usd=self.max_cost_usd,
            default_max_output_tokens=self.default_max_output_tokens,
            max_tokens_per_file_part=self.max_tokens_per_file_part,
            max_cached_content_tokens=self.max_cached_content_tokens,
            canary_max_failed=self.canary_max_failed,
        )

    # Entry points ---------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        if self.plan_only:
            return self._plan_only(context)
        from airflow_provider_maas.batch.run import BatchJournal, BatchRun, unless_finished_elsewhere
        from airflow_provider_maas.storage import check_destination

        dest = check_destination(self.destination, what="destination")
        journal = BatchJournal.for_task(dest, context)

        def start() -> str:
            run = BatchRun.start(context, journal, self._settings(journal), **self._run_parts(context))
            announce(context, journal, self.prices)  # where the progress page finds the state
            return self._run(context, run)

        # an earlier try in this clear epoch may have finished it (Airflow did not record its success)
        return unless_finished_elsewhere(start, context, journal, dest, this_epoch=True)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Resume after the trigger: record the ended jobs, then go on."""
        from airflow_provider_maas.batch.run import BatchJournal, BatchRun, unless_finished_elsewhere
        from airflow_provider_maas.triggers.events import JobsEvent

        resumed = JobsEvent.from_event(event)
        journal = BatchJournal.for_task(self.destination, context)
        if self.plan_only:  # the DAG was changed while its jobs ran: a dry run sends nothing, now as before
            raise MaaSInputError(
                f"dry_run=True was set while this batch ran: nothing more is sent. Its jobs keep running and are "
                f"recorded in the batch state at {journal.uri}; set dry_run=False and clear the task to go on "
                "(they are reattached, not paid again)"
            )

        def resume() -> str:
            run = BatchRun.resume(
                context,
                journal,
                self._settings(journal),
                ended=resumed.ended,
                running=resumed.running,
                **self._run_parts(context),
            )
            if resumed.status == "timeout":
                raise run.timed_out(resumed.message)
            if resumed.status == "error":
                raise MaaSError(f"Waiting for the batch jobs failed: {resumed.message}")
            return self._run(context, run)

        # another live try (a zombie's retry, 'tasks test') may have finished it meanwhile
        return unless_finished_elsewhere(resume, context, journal, self.destination)

    def _plan_only(self, context: Context) -> dict[str, Any]:
        """Plan without paying (``batch/cost/dry_run.py``): XCom ``plan``, and one table in the log."""
        from airflow_provider_maas.batch.cost.dry_run import plan_batch

        plan = plan_batch(self._settings())
        self.log.info("Dry run: nothing uploaded, no job created. The plan:\n%s", plan.table())
        context["ti"].xcom_push(key="plan", value=plan.as_dict())
        return plan.as_dict()

    # Running --------------------------------------------------------------------------------
    def _run_parts(self, context: Context) -> dict[str, Any]:
        """What a :class:`BatchRun` takes from Airflow: the hook (creates counted), the names."""
        from airflow_provider_maas.client.naming import display_name, upload_name

        def names(key: ShardKey, plan: ShardPlan) -> tuple[str, str]:
            # ``#<shard>`` in round 0, ``#<round>.<shard>`` after: no two shards of a batch share a name
            shown = f"{self.display_name or display_name(context)}#{key}"
            return upload_name(context, plan.sha256, shard=key.index), shown

        return {"hook": metrics.CountingCreates(self.hook, context), "names": names}

    def _run(self, context: Context, run: BatchRun) -> str:
        """Step the batch; wait in the triggerer or by sleeping between steps; then the outputs."""
        self.hook.get_conn()  # the connection is looked up once, before the pool threads share the hook
        with run:
            while (wait := run.step(deferrable=self.deferrable)) is not None:
                metrics.jobs_active(context, len(wait.jobs))
                if wait.in_triggerer:
                    self._defer(run.settings, wait)
                time.sleep(run.settings.poll_interval)
        metrics.jobs_active(context, 0)
        return self._finish(context, run)

    def _defer(self, settings: BatchSettings, wait: Wait) -> None:
        """Wait in the triggerer until ``wait.fire_after`` of the jobs ended (or all, or the deadline)."""
        from airflow_provider_maas.triggers.maas import MaaSBatchJobsTrigger

        self.log.info(
            "Deferring on %d running jobs (resume when %s of them ended)", len(wait.jobs), wait.fire_after or "all"
        )
        self.defer(
            trigger=MaaSBatchJobsTrigger(
                job_names=wait.jobs,
                maas_conn_id=self.maas_conn_id,
                endpoint=self.endpoint,
                poll_interval=settings.poll_interval,
                end_time=wait.until,
                max_consecutive_poll_errors=settings.max_consecutive_poll_errors,
                fire_after=wait.fire_after,
                max_parallel_polls=settings.max_parallel_transfers,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=max(1.0, wait.until - time.time()) + 60) if wait.until else None,
        )

    # Results --------------------------------------------------------------------------------
    def _finish(self, context: Context, run: BatchRun) -> str:
        summary: BatchSummary = run.finish()
        if "canary" in summary:  # the canary's measured estimate, as the dry run's estimate
            plan = {"canary": summary["canary"], "budget_usd": run.settings.max_cost_usd}
            context["ti"].xcom_push(key="plan", value=plan)
        dest_uri = run.destination_uri
        publish_summary(self, context, summary, dest_uri)
        metrics.batch_finished(context, summary)
        self.record_lineage([self.source, *run.settings.reuse_files], [dest_uri, summary["failed_uri"]])
        run.check(summary)
        run.close()
        return dest_uri
