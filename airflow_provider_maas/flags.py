"""The one reading of a yes/no setting given as text: a connection's extra (``allow_insecure_http``)
or an operator's yes/no parameter (:func:`parameter_flag`: ``dry_run``, ``deduplicate``, the rendered
``start_over``...). What is not one of :data:`TRUE` or :data:`FALSE`
is refused, never read as false: a typo ("ture") must not turn a safeguard off or on by itself.
Imports nothing of the package but its errors (and the redaction, for a refused value only: the
batch operator imports this module where the DAG is parsed), so ``client/`` and ``batch/`` may both
use it. (``verify`` is read more strictly still: only true, false or a CA bundle's path, by
``client/config.py`` ``parse_verify``: a blank must not turn TLS checks off.)
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow_provider_maas.exceptions import MaaSError, MaaSInputError

#: The spellings of true and of false (any case, blanks around them ignored).
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off", "", "none")
#: What to write instead of a value refused.
SPELLINGS = f"write one of {', '.join(TRUE)} for true, or one of {', '.join(f or '(blank)' for f in FALSE)} for false"


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

    raise error(f"{what} must be true or false, got {redact(repr(value), secret)}; {SPELLINGS}")


def parameter_flag(value: Any, *, what: str, templated: bool = False) -> bool:
    """The yes/no parameter ``what`` of an operator or the sensor as a bool: a bool as is, a string (a
    Variable or a param read in the DAG file, a mapped value, a rendered template) read by
    :func:`is_true`, so ``"false"`` is false; anything else (a typo, a number, None, an ``XComArg`` given
    to a parameter that is not templated) raises :class:`MaaSInputError` naming ``what``.

    Called where the operator is made for a parameter that is not templated (a mapped task is made when
    its task instance runs, with its mapped values), where a template (``{{ ... }}``) is refused; and in
    ``execute``, after rendering, for a ``templated`` one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if not templated and "{{" in value:
            raise MaaSInputError(
                f"{what} is not templated, got {value!r}: give True or False (or a string such as 'true' or "
                "'false', read as such)"
            )
        return is_true(value, what=what)
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
    hint = "" if templated else " (not templated: a value known only at run time reaches it through .expand())"
    raise MaaSInputError(
        f"{what} must be true or false, got {shown} (type {type(value).__name__}){hint}; give True or False, "
        f"or a string: {SPELLINGS}"
    )


class FlagParameters:
    """An operator (or the sensor) whose yes/no parameters :attr:`FLAGS` are not templated: its
    ``__init__`` reads each with :func:`parameter_flag`, and a value given to ``.partial()`` (or in
    its ``default_args``, the DAG's or the task group's) is read too, where the DAG is parsed (a typo is
    refused there, as for an operator that is not mapped, not by each mapped task instance); a mapped
    one (``.expand()``) is read when the mapped task is made."""

    FLAGS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        for name in cls.FLAGS:
            if name in kwargs:
                parameter_flag(kwargs[name], what=name)
        made = super().partial(**kwargs)  # type: ignore[misc]
        # default_args (the DAG's, the task group's, the task's) reach __init__ only when a mapped task is made
        defaults: dict[str, Any] = {}
        given = getattr(made, "kwargs", None) or {}
        for holder in (given.get("dag"), given.get("task_group")):
            defaults.update(getattr(holder, "default_args", None) or {})
        defaults.update(kwargs.get("default_args") or {})
        for name in cls.FLAGS:
            if name not in kwargs and name in defaults:
                parameter_flag(defaults[name], what=f"{name} (in default_args)")
        return made
