"""What a batch cost, from the token counts of its answers and the user's prices per million tokens.

Token totals come from ``results.ResultSummary.tokens`` (``usageMetadata``: ``promptTokenCount``,
``candidatesTokenCount``, ``thoughtsTokenCount``, ``totalTokenCount``); this module only prices
them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from airflow_provider_maas.exceptions import MaaSInputError

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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise MaaSInputError(f"prices[{key!r}] must be a number >= 0 (USD per 1,000,000 tokens), got {value!r}")
        checked[key] = float(value)
    checked.setdefault("thoughts", checked["candidates"])
    return checked


def cost_of(tokens: Mapping[str, int], prices: Mapping[str, float]) -> float:
    """USD for ``tokens`` (``ResultSummary.tokens``-shaped), rounded to 1e-9 USD (no float noise in the summary)."""
    return round(sum(tokens.get(field, 0) * prices[key] for key, field in PRICED.items()) / 1_000_000, 9)
