"""The cost-control side of :class:`~airflow_provider_maas.operators.batch.MaaSBatchPredictionOperator`
(issue 22): the dry run, the budget cap, the canary, answers checked against a schema.

Only the Airflow side (parameters, XCom, the task log); the decisions are in ``batch/``: ``plan``
(estimates, the dry run), ``budget`` (the reservation rule, :class:`SpendGate`), ``canary``,
``schema``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.budget import SpendGate, check_budget
from airflow_provider_maas.batch.canary import check_canary
from airflow_provider_maas.batch.plan import dry_run
from airflow_provider_maas.batch.schema import AnswerCheck, count_invalid, retry_rule, write_source_with_schema
from airflow_provider_maas.storage import open_source, to_path

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_maas.batch.journal import BatchJournal
    from airflow_provider_maas.batch.settings import BatchSettings


class CostControl:
    """Mixed into the batch operator; reads the operator's attributes of the same names."""

    source: Any
    log: Any
    prices: dict[str, float] | None
    plan_only: bool
    max_cost_usd: float | None
    default_max_output_tokens: int
    canary_requests: int
    canary_max_failed: float
    response_schema: Any
    retry_invalid: bool
    set_response_schema: bool

    def _check_cost_control(self) -> None:
        """Refuse bad settings where the DAG is parsed (before anything is paid)."""
        check_budget(self.max_cost_usd, self.prices, self.default_max_output_tokens)
        check_canary(self.canary_requests, self.canary_max_failed)
        if self.response_schema is not None:
            AnswerCheck(self.response_schema)  # a bad schema fails here

    def _retry_rule(self, should_retry: Callable[[str], bool]) -> Callable[[str], bool]:
        """``retry_failures``' rule, where an invalid answer is retried only with ``retry_invalid``."""
        return retry_rule(should_retry, self.retry_invalid) if self.response_schema is not None else should_retry

    # Where the requests are -------------------------------------------------------------------
    def _asks_schema(self) -> bool:
        return self.response_schema is not None and self.set_response_schema

    def _schema_requests(self, journal: BatchJournal) -> ObjectStoragePath:
        """Beside the batch state: the input, each request asked for ``response_schema``."""
        return journal.root.parent / f"{journal.root.name}.requests.jsonl"

    def _requests_to_plan(self, journal: BatchJournal, *, write: bool) -> Any:
        """The requests this try sends: the source, or (``set_response_schema``) the source with
        the schema added, written again by each try (``write``) so a changed input is seen."""
        if not self._asks_schema():
            return self.source
        target = self._schema_requests(journal)
        if write:
            changed = write_source_with_schema(self.source, target, self.response_schema)
            self.log.info("response_schema added to %d requests (responseMimeType application/json)", changed)
        return target

    def _remove_schema_requests(self, journal: BatchJournal) -> None:
        if self._asks_schema():
            with contextlib.suppress(FileNotFoundError, OSError):
                self._schema_requests(journal).unlink()

    # Dry run ---------------------------------------------------------------------------------
    def _plan_only(self, context: Context, settings: Callable[..., BatchSettings]) -> dict[str, Any]:
        """Plan without paying: XCom ``plan``, and one table in the log."""
        with self._local_requests() as source:
            plan = dry_run(
                settings(source=source),
                default_max_output=self.default_max_output_tokens,
                budget_usd=self.max_cost_usd,
            )
        self.log.info("Dry run: nothing uploaded, no job created. The plan:\n%s", plan.table())
        context["ti"].xcom_push(key="plan", value=plan.as_dict())
        return plan.as_dict()

    @contextlib.contextmanager
    def _local_requests(self) -> Iterator[Any]:
        """The requests a run would send, for the dry run: a local temporary copy when the schema
        is added (a dry run writes nothing beside the destination)."""
        if not self._asks_schema():
            yield self.source
            return
        with tempfile.TemporaryDirectory(prefix="maas-plan-") as folder:
            path = os.path.join(folder, "requests.jsonl")
            write_source_with_schema(self.source, to_path(path, what="requests"), self.response_schema)
            yield path

    # The run ---------------------------------------------------------------------------------
    def _gate(self, journal: BatchJournal, source: Any) -> SpendGate | None:
        """The budget cap, canary and answer checks of this batch, if any is asked for."""
        if self.max_cost_usd is None and not self.canary_requests and self.response_schema is None:
            return None
        return SpendGate(
            source=source,
            parts=journal.part,
            prices=self.prices,
            max_cost_usd=self.max_cost_usd,
            default_max_output_tokens=self.default_max_output_tokens,
            canary_requests=self.canary_requests,
            canary_max_failed=self.canary_max_failed,
            check=AnswerCheck(self.response_schema) if self.response_schema is not None else None,
        )

    def _cost_summary(
        self, context: Context, gate: SpendGate | None, state: Any, settings: BatchSettings
    ) -> dict[str, Any]:
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
