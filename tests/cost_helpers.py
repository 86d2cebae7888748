"""What the cost tests (issue 22: ``test_cost_*.py``, ``test_trial_cost*.py``, ``test_trial_22_*.py``)
share: their prices, their requests, their operator, and the event of a deferred try whose jobs ended."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.compat import TaskDeferred
from tests.helpers import batch_operator, make_context

#: Prompt tokens free, output at $1 per 1,000,000 tokens: a job's cost is its output tokens. Where the
#: service's output is exactly ``maxOutputTokens`` (the emulator's is), a job costs its worst case.
PRICES = {"prompt": 0.0, "candidates": 1.0}
#: Requests a shard of :func:`shard_operator`.
SHARD = 5
#: The emulator answers a :data:`QUESTION` asking for at most this many output tokens with exactly as many.
EMULATOR_MAX_OUT = 16

#: The prompts of :func:`write_priced_requests`: the emulator's tests ask a question, the stub's name an item.
QUESTION = "Question {n}: what is {n} + {n}?"
ITEM = "Item {n}"


def job_worst(max_out: int) -> float:
    """The worst case at :data:`PRICES` of a job of :data:`SHARD` requests of ``max_out`` output tokens each."""
    return SHARD * max_out * PRICES["candidates"] / 1_000_000


def write_priced_requests(
    path: Path, numbers: Iterable[int], *, config: dict[str, Any] | None, prompt: str = QUESTION
) -> Path:
    """A requests file of one request per number in ``numbers`` (a number again: the same request again),
    each with ``generationConfig`` ``config`` (None or empty: none)."""
    with path.open("w") as handle:
        for n in numbers:
            request: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt.format(n=n)}]}]}
            if config:
                request["generationConfig"] = config
            handle.write(json.dumps({"request": request}) + "\n")
    return path


def shard_operator(source: Path, dest: Path, **kwargs: Any) -> Any:
    """:func:`~tests.helpers.batch_operator` with :data:`SHARD` requests a shard."""
    return batch_operator(source, dest, **{"max_requests_per_file": SHARD, **kwargs})


def succeeded_event(handle: Any, deferred: Any) -> dict[str, Any]:
    """The trigger's event of the ``TaskDeferred`` ``deferred`` once the emulator of ``handle`` has
    ended every job it waits for SUCCEEDED."""
    for name in deferred.trigger.job_names:
        handle.emulator.set_job_state(name, "JOB_STATE_SUCCEEDED")
    return asyncio.run(anext(deferred.trigger.run())).payload


def deferred_event(handle: Any, operator: Any) -> dict[str, Any]:
    """Run ``operator`` (deferrable) until it defers, then :func:`succeeded_event`: the event its
    resume gets once the jobs it created have succeeded."""
    with pytest.raises(TaskDeferred) as info:
        operator.execute(make_context())
    return succeeded_event(handle, info.value)
