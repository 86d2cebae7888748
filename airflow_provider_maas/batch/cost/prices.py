"""What a batch cost, from the token counts of its answers and the user's prices per million tokens.

Token totals come from ``results.ResultSummary.tokens`` (``usageMetadata``: ``promptTokenCount``,
``candidatesTokenCount``, ``thoughtsTokenCount``, ``totalTokenCount``); this module only prices
them. An answer without usable counts (``ResultSummary.usage_unknown``, the summary's
``cost_unknown_answers``) makes the cost unknown (None), never zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from airflow_provider_maas.exceptions import MaaSInputError

#: ``maxOutputTokens`` assumed for a request that sets none (the output limit of Gemini 2.5 Flash): the
#: operator's ``default_max_output_tokens``. Here, with the prices (a leaf, imported where the DAG is
#: parsed), not in ``estimates`` (which keeps the name): the checks at parse time do not import the estimates.
DEFAULT_MAX_OUTPUT_TOKENS = 65_536

#: Highest price accepted, in USD per 1,000,000 tokens (the dearest models cost a few hundred):
#: a larger one is a typing mistake (a price per token, an exponent), not a price.
MAX_PRICE = 10_000.0
#: ``prices`` key -> ``ResultSummary.tokens`` key it prices.
PRICED = {"prompt": "prompt_tokens", "candidates": "candidates_tokens", "thoughts": "thoughts_tokens"}


def check_prices(prices: Any) -> dict[str, float] | None:
    """Validate ``prices`` (USD per 1,000,000 tokens); return them with ``thoughts`` filled in.

    ``prompt`` and ``candidates`` are required; ``thoughts`` defaults to the ``candidates`` price
    (thinking tokens are billed as output tokens).

    :raises MaaSInputError: naming what is wrong and the expected shape.
    """
    if prices is None:
        return None
    shape = 'prices={"prompt": 0.15, "candidates": 0.60, "thoughts": 0.60} (USD per 1,000,000 tokens)'
    if not isinstance(prices, Mapping):
        raise MaaSInputError(f"prices must be a dict like {shape}, got {type(prices).__name__}")
    unknown = sorted(set(prices) - set(PRICED))
    if unknown:
        raise MaaSInputError(f"prices has unknown keys {unknown}; known: {sorted(PRICED)}, e.g. {shape}")
    missing = [key for key in ("prompt", "candidates") if key not in prices]
    if missing:
        raise MaaSInputError(f"prices needs {' and '.join(missing)}, e.g. {shape}")
    checked: dict[str, float] = {}
    for key, value in prices.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 <= value <= MAX_PRICE
        ):
            raise MaaSInputError(
                f"prices[{key!r}] must be a number from 0 to {MAX_PRICE:g} (USD per 1,000,000 tokens), got {value!r}"
            )
        checked[key] = float(value)
    checked.setdefault("thoughts", checked["candidates"])
    return checked


def cost_of(tokens: Mapping[str, int], prices: Mapping[str, float], *, unknown: int = 0) -> float | None:
    """USD for ``tokens`` (``ResultSummary.tokens``-shaped), rounded to 1e-9 USD (no float noise in the
    summary); None (unknown, never 0.0) when ``unknown`` answers had no usable token counts, or the
    sum is not a finite number (the summary stays strict JSON)."""
    if unknown:
        return None
    try:
        cost = sum(tokens.get(field, 0) * prices[key] for key, field in PRICED.items()) / 1_000_000
    except OverflowError:
        return None
    return round(cost, 9) if math.isfinite(cost) else None


def usd(value: float | None) -> str:
    """A cost as a log line shows it: ``$0.001234``, or ``unknown``."""
    return "unknown" if value is None else f"${value:.6f}"
