"""The one reading of a yes/no setting given as text: a connection's extra (``allow_insecure_http``)
or an operator's rendered template (``start_over``). What is not one of :data:`TRUE` or :data:`FALSE`
is refused, never read as false: a typo ("ture") must not turn a safeguard off or on by itself.
Imports nothing of the package but its errors (and the redaction, for a refused value only: the
batch operator imports this module where the DAG is parsed), so ``client/`` and ``batch/`` may both
use it. (``verify`` is read more strictly still: only true, false or a CA bundle's path, by
``client/config.py`` ``parse_verify``: a blank must not turn TLS checks off.)
"""

from __future__ import annotations

from typing import Any

from airflow_provider_maas.exceptions import MaaSError, MaaSInputError

#: The spellings of true and of false (any case, blanks around them ignored).
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off", "", "none")


def is_true(value: Any, *, what: str, error: type[MaaSError] = MaaSInputError, secret: str | None = None) -> bool:
    """``value`` of setting ``what`` as a flag: a bool, None (false), or one of the spellings of
    :data:`TRUE` and :data:`FALSE`; anything else raises ``error`` naming ``what``, the value (with
    ``secret``, the connection's API key, taken out of it: a key pasted into the wrong field) and the
    spellings taken."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    from airflow_provider_maas.redaction import redact

    raise error(
        f"{what} must be true or false, got {redact(repr(value), secret)}; "
        f"write one of {', '.join(TRUE)} for true, or one of {', '.join(f or '(blank)' for f in FALSE)} for false"
    )
