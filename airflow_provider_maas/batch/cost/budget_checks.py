"""The budget's checks before anything is created: its settings, and the prices a batch's spend is counted at.

:func:`check_cost_control` checks the operator's cost settings where the DAG is parsed;
:func:`check_budget` refuses a cap without prices, or a cap, default output or bound that is not a
positive number; :func:`check_same_prices` refuses to count new jobs at prices other than those of
the spend a state holds (and prices, at this try's prices, the worst case that tries without
prices kept in tokens: :func:`usd_of_tokens`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_maas.batch.int_settings import check_int
from airflow_provider_maas.exceptions import MaaSInputError

if TYPE_CHECKING:
    from airflow_provider_maas.batch.record.state import BatchState


#: Most requests a canary may hold (one job).
MAX_CANARY_REQUESTS = 100


def usd_of_tokens(tokens: dict[str, int], prices: dict[str, float]) -> float:
    """What worst-case ``tokens`` (``tokens_before``) cost at ``prices``: output at the dearer output price."""
    from airflow_provider_maas.batch.cost.estimates import Tokens, worst_case_usd  # run time only

    bound = Tokens(worst_prompt=tokens.get("prompt", 0), max_output=tokens.get("candidates", 0))
    return round(worst_case_usd(bound, prices), 9)


def check_same_prices(state: BatchState, prices: dict[str, float], where: str) -> bool:
    """Before this try counts USD at ``prices`` in ``state``: the amounts it holds must be at the
    same prices. A state holding none takes ``prices`` (True: store its batch fields), its
    ``tokens_before`` (kept by tries without prices) becoming ``spent_before_usd`` at them; one holding
    amounts at other prices, or at prices it did not keep (written before they were), is refused
    before anything is created: the cap would add new worst cases to a spend counted at other prices.

    :raises MaaSInputError: naming the prices of the spend, the new ones and the way on.
    """
    if state.prices == prices:
        return False
    if not state.spent_before_usd and not any(r.cost_usd or r.lost_usd or r.reserve_usd for r in state.shards.values()):
        state.prices = dict(prices)
        if state.tokens_before:  # jobs of replaced states, kept in tokens: counted once, at these prices
            state.spent_before_usd, state.tokens_before = usd_of_tokens(state.tokens_before, prices), None
        return True
    recorded = state.prices if state.prices is not None else "not recorded (a state written by an older provider)"
    raise MaaSInputError(
        f"prices changed since this batch counted its spend: the spend in its state is at prices {recorded}, "
        f"this try has prices {prices}. Counting new jobs at the new prices on top of a spend at the old ones "
        "could pass max_cost_usd, so nothing is created. Run it again with the prices the spend was counted at; "
        "or, to use the new prices, start a new DAG run with this destination as its reuse_results and a "
        f"destination of its own (the answers already paid for are reused, not paid again). Batch state: {where}"
    )


def check_budget(
    max_cost_usd: Any,
    prices: Any,
    default_max_output_tokens: Any,
    max_tokens_per_file_part: Any = None,
    max_cached_content_tokens: Any = None,
) -> None:
    """Refuse a cap without prices, or a cap, default output or bound that is not a positive number."""
    if max_cost_usd is not None:
        if isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, (int, float)) or not max_cost_usd >= 0:
            raise MaaSInputError(f"max_cost_usd must be a number of USD >= 0, got {max_cost_usd!r}")
        if prices is None:
            raise MaaSInputError(
                'max_cost_usd needs prices= (USD per 1,000,000 tokens, e.g. {"prompt": 0.15, "candidates": 0.60}) '
                "to turn token counts into USD"
            )
    check_int("default_max_output_tokens", default_max_output_tokens, 1)
    for name, value in (
        ("max_tokens_per_file_part", max_tokens_per_file_part),
        ("max_cached_content_tokens", max_cached_content_tokens),
    ):
        if value is not None:  # None: not given
            check_int(name, value, 1)


def check_cost_control(
    *,
    max_cost_usd: Any,
    prices: Any,
    default_max_output_tokens: Any,
    max_tokens_per_file_part: Any,
    max_cached_content_tokens: Any,
    canary_requests: Any,
    canary_max_failed: Any,
    response_schema: Any,
) -> None:
    """Refuse bad cost-control settings where the DAG is parsed (before anything is paid): the
    budget's (:func:`check_budget`), the canary's, a schema that is not one."""
    check_budget(max_cost_usd, prices, default_max_output_tokens, max_tokens_per_file_part, max_cached_content_tokens)
    check_canary(canary_requests, canary_max_failed)
    if response_schema is not None:  # a bad schema fails here (jsonschema is imported only then)
        from airflow_provider_maas.batch.answers.schema import AnswerCheck

        AnswerCheck(response_schema)


def check_canary(canary_requests: object, canary_max_failed: object) -> None:
    """Refuse a canary setting out of bounds, naming it."""
    if isinstance(canary_requests, bool) or not isinstance(canary_requests, int):
        raise MaaSInputError(f"canary_requests must be an integer, got {canary_requests!r}")
    if not 0 <= canary_requests <= MAX_CANARY_REQUESTS:
        raise MaaSInputError(
            f"canary_requests must be between 0 (no canary) and {MAX_CANARY_REQUESTS} (one job), got {canary_requests}"
        )
    if isinstance(canary_max_failed, bool) or not isinstance(canary_max_failed, (int, float)):
        raise MaaSInputError(f"canary_max_failed must be a fraction between 0 and 1, got {canary_max_failed!r}")
    if not 0 <= canary_max_failed <= 1:
        raise MaaSInputError(f"canary_max_failed must be a fraction between 0 and 1, got {canary_max_failed}")
