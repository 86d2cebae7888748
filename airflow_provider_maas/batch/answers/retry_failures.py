"""Which failed requests a batch sends again (``retry_failures``): the default patterns, and the
predicate a setting is turned into. Small on purpose: the operator checks ``retry_failures`` where
the DAG is parsed (``parameters.check_parameters``), the retry rounds (``rounds.py``) apply it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_maas.exceptions import MaaSInputError

#: Statuses retried by default (``re.search``, case-sensitive codes, case-insensitive words): what
#: a user expects to pass on its own. A client error (400 INVALID_ARGUMENT, 403, 404, a safety
#: block) is not retried: sending the same request again gets the same answer.
DEFAULT_RETRY_FAILURES: tuple[str, ...] = (
    r"\b(RESOURCE_EXHAUSTED|UNAVAILABLE|INTERNAL|DEADLINE_EXCEEDED|ABORTED)\b",
    r"\"code\":\s*(429|5\d\d)\b",
    r"^\s*(HTTP\s*)?(429|5\d\d)\b",
    r"(?i)\b(too many requests|rate.?limit(ed)?|internal (server )?error|service unavailable|"
    r"bad gateway|gateway timeout|timed out|deadline exceeded|try again|overloaded)\b",
)


def retry_predicate(retry_failures: Any) -> Callable[[str], bool]:
    """``should_retry(status) -> bool`` from ``retry_failures``: None (the default patterns), a list
    of regular expressions (``re.search`` on the status), or a callable taking the status text.

    :raises MaaSInputError: a bad pattern or type, saying what to give instead.
    """
    if retry_failures is None:
        retry_failures = DEFAULT_RETRY_FAILURES
    if callable(retry_failures):
        return retry_failures  # type: ignore[no-any-return]
    if isinstance(retry_failures, (str, bytes)) or not isinstance(retry_failures, Iterable):
        raise MaaSInputError(
            f"retry_failures must be a list of regular expressions or a callable(status) -> bool, "
            f"got {retry_failures!r} (a single pattern goes in a list: [{retry_failures!r}])"
        )
    compiled = []
    for pattern in retry_failures:
        if not isinstance(pattern, str):
            raise MaaSInputError(
                f"retry_failures holds {pattern!r}, not a regular expression string; give strings such as "
                r"r'\bUNAVAILABLE\b', or a callable(status) -> bool"
            )
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise MaaSInputError(
                f"retry_failures pattern {pattern!r} is not a valid regular expression ({err}); fix it, or escape "
                "it with re.escape() to match the text as it is"
            ) from None
    return lambda status: any(p.search(status) for p in compiled)
