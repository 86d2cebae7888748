"""The settings of a batch run, read by every try: :class:`BatchSettings` carries the settings of one
try (templated fields rendered) to the modules that plan, resume and merge the batch; the earlier
results to reuse are resolved and checked once per try (:attr:`BatchSettings.reuse_files`), as they
may change between tries.

Imported by the first execute, not where the DAG is parsed (its dataclass alone cost ~3 ms there):
the operator's defaults and the checks of its parameters are in :mod:`~airflow_provider_maas.batch.parameters`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.cost.estimates import DEFAULT_MAX_OUTPUT_TOKENS
from airflow_provider_maas.exceptions import MaaSInputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.batch.inputs.rewrite import Rewrite
    from airflow_provider_maas.batch.inputs.shards import ShardPlan


def reuse_paths(reuse_results: Any) -> list[ObjectStoragePath]:
    """The results files of ``reuse_results`` (one or a list; None and blank strings are none),
    each checked to be a file."""
    from airflow_provider_maas.storage import to_path, uri_of  # run time only, as the methods below

    items = reuse_results if isinstance(reuse_results, (list, tuple)) else [reuse_results]
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


@dataclass(frozen=True)
class BatchSettings:
    """What one try of a batch needs to know; the fields are the operator's parameters of the same
    name (each passed by name: ``MaaSBatchPredictionOperator._settings``), except ``should_retry`` (``retry_failures`` as a predicate, see :func:`~airflow_provider_maas.batch.parameters.retry_rule_and_prices`)."""

    source: Any
    destination: Any
    reuse_results: Any
    deduplicate: bool
    should_retry: Callable[[str], bool]
    prices: dict[str, float] | None
    request_retries: int
    max_requests_per_file: int
    max_bytes_per_file: int
    max_active_jobs: int
    timeout: float | None
    poll_interval: float
    shard_retries: int
    max_parallel_transfers: int
    max_consecutive_poll_errors: int
    fail_on_partial: bool
    canary_requests: int = 0  # issue 22: round 0's shard 0 holds the first N requests (batch.cost.canary)
    #: Discard a batch state that is not whole (a person's choice; see ``batch/record/recovery.py``).
    start_over: bool = False
    #: The answers an abandoned plan of this batch downloaded (``BatchJournal.kept_answers``).
    kept_answers: Callable[[], list[ObjectStoragePath]] | None = None
    #: Reuse answers of results files another ENDPOINT (another model) wrote.
    reuse_other_models: bool = False
    #: Gives the ENDPOINT the batch runs on (looked up when first needed: :attr:`endpoint`).
    endpoint_of: Callable[[], str | None] | None = None

    @cached_property
    def endpoint(self) -> str | None:
        """The ENDPOINT the batch runs on (its model): the results it writes are recorded as its."""
        return self.endpoint_of() if self.endpoint_of is not None else None

    response_schema: Any = None  # issue 22: answers reused from reuse_results are checked against it
    #: Send invalid answers' requests again (with ``response_schema``; see :meth:`retries`).
    retry_invalid: bool = False
    #: Ask for ``response_schema`` in the requests sent (``batch.inputs.rewrite``).
    set_response_schema: bool = True
    # issue 22 (batch.cost.budget): the cap and what a worst case counts where a request does not say
    max_cost_usd: float | None = None
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    max_tokens_per_file_part: int | None = None
    max_cached_content_tokens: int | None = None
    #: The fraction of the canary's requests that may fail (``batch.cost.canary``).
    canary_max_failed: float = 0.5
    #: The operator's source as the user gave it, when ``source`` is it rewritten (``batch.inputs.rewrite``).
    given_source: Any = None
    #: What the requests sent add to the user's (``batch.inputs.rewrite``): the requests of the answers
    #: reused get it too before they are matched (an answer paid for without the cap is reused under it).
    rewrite: Rewrite | None = None

    @cached_property
    def retries(self) -> Callable[[str], bool]:
        """Whether a failed answer with a status is sent again: :attr:`should_retry`, where an invalid
        answer (``response_schema``) is retried if (and only if) ``retry_invalid``."""
        if self.response_schema is None:
            return self.should_retry
        from airflow_provider_maas.batch.answers.schema import retry_rule  # run time only, as the methods below

        return retry_rule(self.should_retry, self.retry_invalid)

    def reuse_paths(self) -> list[ObjectStoragePath]:
        """The results files to reuse: those of ``reuse_results`` another ENDPOINT did not write
        (unless ``reuse_other_models``; see :mod:`~airflow_provider_maas.batch.record.origin`), then the
        answers kept from an abandoned plan of this batch on this ENDPOINT (the same rule). A file
        without a record of its ENDPOINT stops the task (``MaaSInputError``) unless ``reuse_other_models``."""
        return self._reusable + self._kept()[0]

    def _kept(self) -> tuple[list[ObjectStoragePath], list[ObjectStoragePath]]:
        """The answers kept from abandoned plans (``kept_answers``): of this ENDPOINT, of others."""
        kept = self.kept_answers() if self.kept_answers else []
        if not kept or self.reuse_other_models or self.endpoint is None:
            return kept, []
        from airflow_provider_maas.batch.record.origin import split_kept  # run time only (matching: not at parse)

        return split_kept(kept, self.endpoint)

    @cached_property
    def reuse_files(self) -> list[ObjectStoragePath]:
        """The files of ``reuse_results``, resolved and checked once per try (:func:`reuse_paths`)."""
        return reuse_paths(self.reuse_results)

    @cached_property
    def _reusable(self) -> list[ObjectStoragePath]:
        """:attr:`reuse_files` of this ENDPOINT, their records checked once per try."""
        paths = self.reuse_files
        if paths and not self.reuse_other_models and self.endpoint is not None:
            from airflow_provider_maas.batch.record.origin import refuse_unknown_origin

            refuse_unknown_origin(paths)
        others = self.reuse_of_other_models()
        return [path for path in paths if path not in others]

    def reuse_of_other_models(self) -> list[ObjectStoragePath]:
        """The files of ``reuse_results``, and the answers kept by a start-over, left unused because
        another ENDPOINT (model) wrote them."""
        return self._other_models + self._kept()[1]

    @cached_property
    def _other_models(self) -> list[ObjectStoragePath]:
        if self.reuse_other_models or not self.reuse_files:
            return []
        from airflow_provider_maas.batch.record.origin import of_other_models

        return of_other_models(self.reuse_files, self.endpoint)

    def plan(self, handle: Any, *, validated: bool = False) -> list[ShardPlan]:
        """Shards of the requests in ``handle`` within the per-file limits (``validated``: see
        :func:`~airflow_provider_maas.batch.inputs.shards.plan_shards`)."""
        from airflow_provider_maas.batch.inputs.shards import plan_shards

        return plan_shards(
            handle, max_requests=self.max_requests_per_file, max_bytes=self.max_bytes_per_file, validated=validated
        )

    def plan_first_round(self, handle: Any, *, validated: bool = False) -> list[ShardPlan]:
        """Round 0's shards: :meth:`plan`, with the canary (``canary_requests``) as shard 0."""
        from airflow_provider_maas.batch.cost.canary import split_first

        return split_first(handle, self.plan(handle, validated=validated), self.canary_requests)

    def new_deadline(self) -> float | None:
        """The absolute ``timeout`` deadline of a wait that starts now (epoch seconds), or None."""
        return time.time() + self.timeout if self.timeout else None
