"""The cost-control side of :class:`~airflow_provider_maas.operators.batch.MaaSBatchPredictionOperator`
(issue 22): the dry run, the budget cap, the canary, answers checked against a schema.

Only the Airflow side (parameters, XCom, the task log); the decisions are in ``batch/``:
``estimates`` and ``bounds`` (what a request counts), ``dry_run`` (the plan), ``budget`` (the
reservation rule, :class:`SpendGate`), ``budget_checks`` (the cap's settings and prices),
``canary``, ``schema``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.bounds import Bounds, refuse_unbounded
from airflow_provider_maas.batch.budget import SpendGate
from airflow_provider_maas.batch.budget_checks import check_budget, check_same_prices
from airflow_provider_maas.batch.canary import check_canary
from airflow_provider_maas.batch.dry_run import dry_run
from airflow_provider_maas.batch.rewrite import Rewrite, write_source_rewritten
from airflow_provider_maas.batch.schema import AnswerCheck, count_invalid, json_schema_of, retry_rule, to_gemini_schema
from airflow_provider_maas.storage import open_source, to_path

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_maas.batch.journal import BatchJournal
    from airflow_provider_maas.batch.settings import BatchSettings
    from airflow_provider_maas.batch.state import BatchState
    from airflow_provider_maas.batch.summary_types import CostFields


class CostControl:
    """Mixed into the batch operator; reads the operator's attributes of the same names."""

    source: Any
    log: Any
    prices: dict[str, float] | None
    plan_only: bool
    max_cost_usd: float | None
    default_max_output_tokens: int
    max_tokens_per_file_part: int | None
    max_cached_content_tokens: int | None
    canary_requests: int
    canary_max_failed: float
    response_schema: Any
    retry_invalid: bool
    set_response_schema: bool

    def _check_cost_control(self) -> None:
        """Refuse bad settings where the DAG is parsed (before anything is paid)."""
        check_budget(
            self.max_cost_usd,
            self.prices,
            self.default_max_output_tokens,
            self.max_tokens_per_file_part,
            self.max_cached_content_tokens,
        )
        check_canary(self.canary_requests, self.canary_max_failed)
        if self.response_schema is not None:
            AnswerCheck(self.response_schema)  # a bad schema fails here

    def _bounds(self) -> Bounds:
        return Bounds(self.default_max_output_tokens, self.max_tokens_per_file_part, self.max_cached_content_tokens)

    def _refuse_unbounded(self) -> None:
        """With a cap: a request with a file part or a ``cachedContent`` and no bound for it stops
        the task here, before anything is uploaded (``MaaSInputError`` naming its line)."""
        if self.max_cost_usd is not None:
            refuse_unbounded(
                self.source,
                max_tokens_per_file_part=self.max_tokens_per_file_part,
                max_cached_content_tokens=self.max_cached_content_tokens,
            )

    def _retry_rule(self, should_retry: Callable[[str], bool]) -> Callable[[str], bool]:
        """``retry_failures``' rule, where an invalid answer is retried only with ``retry_invalid``."""
        return retry_rule(should_retry, self.retry_invalid) if self.response_schema is not None else should_retry

    # Where the requests are -------------------------------------------------------------------
    def _rewrite(self) -> Rewrite:
        """What the requests sent add to the source's (``batch.rewrite``): the schema
        (``set_response_schema``), the output ceiling (``max_cost_usd``); empty: nothing."""
        asks_schema = self.response_schema is not None and self.set_response_schema
        return Rewrite(
            gemini_schema=to_gemini_schema(json_schema_of(self.response_schema)) if asks_schema else None,
            default_max_output=self.default_max_output_tokens if self.max_cost_usd is not None else None,
        )

    def _sent_requests(self, journal: BatchJournal) -> ObjectStoragePath:
        """Beside the batch state: the input as sent (rewritten)."""
        return journal.root.parent / f"{journal.root.name}.requests.jsonl"

    def _requests_to_plan(self, journal: BatchJournal, *, write: bool) -> Any:
        """The requests this try sends: the source, or the source rewritten (``batch.rewrite``),
        written again by each try (``write``) so a changed input is seen, and by a resume that
        finds none (a cap or schema added meanwhile: shards whose requests it changed are then
        refused as a changed input, before they are sent)."""
        rewrite = self._rewrite()
        if not rewrite:
            return self.source
        target = self._sent_requests(journal)
        if write or not target.exists():
            changed = write_source_rewritten(self.source, target, rewrite)
            self.log.info(
                "%d requests rewritten to be sent (response_schema added: %s; maxOutputTokens %s added where none "
                "is set)",
                changed,
                rewrite.gemini_schema is not None,
                rewrite.default_max_output or "not",
            )
        return target

    def _remove_sent_requests(self, journal: BatchJournal) -> None:
        if self._rewrite():
            with contextlib.suppress(FileNotFoundError, OSError):
                self._sent_requests(journal).unlink()

    # Dry run ---------------------------------------------------------------------------------
    def _plan_only(self, context: Context, settings: Callable[..., BatchSettings]) -> dict[str, Any]:
        """Plan without paying: XCom ``plan``, and one table in the log."""
        self._refuse_unbounded()
        with self._local_requests() as source:
            plan = dry_run(settings(source=source), bounds=self._bounds(), budget_usd=self.max_cost_usd)
        self.log.info("Dry run: nothing uploaded, no job created. The plan:\n%s", plan.table())
        context["ti"].xcom_push(key="plan", value=plan.as_dict())
        return plan.as_dict()

    @contextlib.contextmanager
    def _local_requests(self) -> Iterator[Any]:
        """The requests a run would send, for the dry run: a local temporary copy when they are
        rewritten (a dry run writes nothing beside the destination)."""
        rewrite = self._rewrite()
        if not rewrite:
            yield self.source
            return
        with tempfile.TemporaryDirectory(prefix="maas-plan-") as folder:
            path = os.path.join(folder, "requests.jsonl")
            write_source_rewritten(self.source, to_path(path, what="requests"), rewrite)
            yield path

    # The run ---------------------------------------------------------------------------------
    def _gate(self, journal: BatchJournal, state: BatchState, settings: BatchSettings) -> SpendGate | None:
        """The budget cap, canary and answer checks of this batch, if any is asked for (a state
        whose spend is at other prices is refused here, before any create)."""
        if self.max_cost_usd is None and not self.canary_requests and self.response_schema is None:
            return None
        if self.prices is not None and check_same_prices(state, self.prices, journal.uri):
            journal.append(state, [], meta=True)  # the prices the spend is counted at
        return SpendGate.of(
            settings,
            journal.part,
            canary_max_failed=self.canary_max_failed,
            check=AnswerCheck(self.response_schema) if self.response_schema is not None else None,
        )

    def _cost_summary(
        self, context: Context, gate: SpendGate | None, state: Any, settings: BatchSettings
    ) -> CostFields:
        """What the summary adds: spend, reservation, cap, canary; ``invalid_output``. The canary's
        measured estimate also goes to XCom ``plan`` (as the dry run's estimate does)."""
        if gate is None:
            return {}
        fields = gate.summary_fields(state)
        if "canary" in fields:
            context["ti"].xcom_push(key="plan", value={"canary": fields["canary"], "budget_usd": self.max_cost_usd})
        if self.response_schema is not None:
            with open_source(settings.destination) as handle:
                fields["invalid_output"] = count_invalid(handle)
        return fields
