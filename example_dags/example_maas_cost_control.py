"""Know the bill before paying it: a dry run plans the batch and estimates its cost (nothing paid),
a branch decides, and the real run goes with a hard budget cap and a canary.

The dry run pushes XCom ``plan`` (also its return value): requests, unique, reused, to send,
shards, estimated and worst-case prompt and output tokens and USD, and how they were estimated.
The branch sends the batch only if the estimate fits the budget; the real run never passes
``max_cost_usd`` (a create whose worst case would pass it is not sent: the task fails with
MaaSBudgetExceededError, the answers paid for kept), sends the first 5 requests first (the canary)
and stops if more than half of them fail. A person can take the branch's place: an approval task
(``airflow.providers.standard.operators.hitl.ApprovalOperator`` on Airflow 3.1+)."""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task

from airflow_provider_maas.operators.maas import MaaSBatchPredictionOperator

REQUESTS = Path(__file__).parent / "data" / "example_requests.jsonl"
OUTPUT = os.environ.get("MAAS_EXAMPLE_OUTPUT", "/tmp/maas-example")
PRICES = {"prompt": 0.30, "candidates": 2.50}  # USD per 1M tokens (thoughts: as candidates)
BUDGET_USD = 0.50
FILE_PART_TOKENS = 4 * 258  # the most one file part of ours counts: an image of up to 4 tiles (needed with a cap)

with DAG(
    dag_id="example_maas_cost_control",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    schedule=None,
    catchup=False,
    tags=["maas", "example"],
    params={"source": str(REQUESTS)},
) as dag:
    results = OUTPUT + "/{{ dag.dag_id }}/{{ run_id }}/results.jsonl"
    plan = MaaSBatchPredictionOperator(
        task_id="plan",
        source="{{ params.source }}",
        destination=results,
        prices=PRICES,
        max_tokens_per_file_part=FILE_PART_TOKENS,  # the plan's worst case counts it
        dry_run=True,
    )

    @task.branch
    def decide(plan: dict) -> str:
        """Send the batch if its estimated cost fits the budget."""
        return "predict" if plan["estimated_cost_usd"] <= BUDGET_USD else "too_dear"

    predict = MaaSBatchPredictionOperator(
        task_id="predict",
        source="{{ params.source }}",
        destination=results,
        poll_interval=float(os.environ.get("MAAS_POLL_INTERVAL", 30)),
        deferrable=True,
        prices=PRICES,
        max_cost_usd=BUDGET_USD,  # never more, across every try and retry round
        max_tokens_per_file_part=FILE_PART_TOKENS,
        canary_requests=5,  # these go first; the rest waits for their answers
        default_max_output_tokens=8192,  # worst case of a request without generationConfig.maxOutputTokens
    )
    decide(plan.output) >> [predict, EmptyOperator(task_id="too_dear")]
