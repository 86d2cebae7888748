"""The requests as sent: the one place where the operator changes the user's request lines.

Two rewrites, both in each request's ``generationConfig`` (or ``generation_config``, whichever the
request uses; a key the request spells in either case counts as set):

- ``response_schema`` with ``set_response_schema``: a request that asks for no schema of its own
  gets ``responseMimeType: application/json`` (unless it sets a MIME type) and ``responseSchema``;
- ``max_cost_usd``: a request without ``maxOutputTokens`` gets the output ceiling its worst case
  is counted at (:func:`~airflow_provider_maas.batch.cost.estimates.max_output_tokens`:
  ``default_max_output_tokens``, or its own ``thinkingBudget`` if larger), so the service bounds
  the answer the cap admitted; one that sets a ceiling that is not a whole number >= 1 is refused.

:func:`write_rewritten` copies a requests file with both applied; :func:`as_sent` writes the
requests a try sends beside the batch state (:func:`remove_sent` removes them with it),
:func:`as_sent_locally` to a temporary copy for the dry run. The rewritten file is what the
batch sends, deduplicates, matches against ``reuse_results`` and places results by: the service
echoes the request as sent, and its line numbers are the input's (a blank line stays a blank
line; a line that is not JSON is copied as it is, for the input check to name).

An answer in ``reuse_results`` echoes the request as the earlier run sent it: without the ceiling
(or the schema) when that run had no cap (or none). :func:`write_rewritten` (``reused=True``) gives
the requests of those answers this run's rewrite before they are matched, so an answer paid for by a
run without the cap is reused by one with it; a request that already has the additions is left
as it is (an answer of a run with the same cap or schema matches as before).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.schema import json_schema_of, to_gemini_schema
from airflow_provider_maas.batch.cost.estimates import _count, max_output_tokens
from airflow_provider_maas.batch.inputs.lines import iter_lines
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import atomic_writer, open_source, to_path

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_maas.batch.record.journal import BatchJournal
    from airflow_provider_maas.batch.settings import BatchSettings

log = logging.getLogger(__name__)

#: Keys of ``generationConfig`` that already ask for a shape.
_OWN_SCHEMA = ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema")
_MIME_TYPE = ("responseMimeType", "response_mime_type")
_CEILING = ("maxOutputTokens", "max_output_tokens")


@dataclass(frozen=True)
class Rewrite:
    """What to add to each request: ``gemini_schema`` (Gemini's ``responseSchema`` form) and/or
    an output ceiling at ``default_max_output`` (None: neither)."""

    gemini_schema: dict[str, Any] | None = None
    default_max_output: int | None = None

    def __bool__(self) -> bool:
        return self.gemini_schema is not None or self.default_max_output is not None

    def apply(self, request: dict[str, Any], line_number: int = 0) -> bool:
        """Rewrite ``request`` in place; True if it was changed."""
        # the spelling the estimate reads (estimates._config): a null camelCase one is not set
        snake = request.get("generationConfig") is None and request.get("generation_config") is not None
        key = "generation_config" if snake else "generationConfig"
        given = request.get(key)
        config = dict(given) if isinstance(given, dict) else {}
        changed = False
        if self.gemini_schema is not None and not any(k in config for k in _OWN_SCHEMA):
            if not any(k in config for k in _MIME_TYPE):
                config["responseMimeType"] = "application/json"
            config["responseSchema"] = self.gemini_schema
            changed = True
        if self.default_max_output is not None:
            changed = self._bound_output(request, config, line_number) or changed
        if changed:
            request[key] = config
        return changed

    def _bound_output(self, request: dict[str, Any], config: dict[str, Any], line_number: int) -> bool:
        name = next((k for k in _CEILING if k in config and config[k] is not None), None)
        if name is not None:
            if _count(config[name]) is None:
                raise MaaSInputError(
                    f"requests line {line_number}: generationConfig.{name} is {config[name]!r}, not a whole number "
                    ">= 1: under max_cost_usd every answer must have a ceiling the cap can count; set it, or remove "
                    "it (default_max_output_tokens is then sent)"
                )
            return False
        assert self.default_max_output is not None
        name = next((k for k in _CEILING if k in config), "maxOutputTokens")  # an explicit null is replaced
        config[name] = max_output_tokens(request, self.default_max_output)
        return True


def write_rewritten(source: IO[bytes], out: IO[bytes], rewrite: Rewrite, *, reused: bool = False) -> int:
    """Copy request lines with ``rewrite`` applied; returns how many changed. Lines left alone are
    copied byte for byte, blank lines stay blank (line numbers are the input's).

    :param reused: ``source`` is a results file of ``reuse_results``: each line's ``request`` is
        rewritten, the rest kept; a ceiling this run refuses leaves the line as it is (no request
        this run sends can match it) instead of stopping the task.
    """
    changed = 0
    written = 0  # lines written so far
    for line_number, _, line in iter_lines(source, "reuse_results" if reused else "requests"):
        out.write(b"\n" * (line_number - 1 - written))
        written = line_number
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # the input check (the reuse pass) names it, with this line number
            obj = None
        request = obj.get("request") if isinstance(obj, dict) else None
        try:
            rewritten = isinstance(request, dict) and rewrite.apply(request, line_number)
        except MaaSInputError:
            if not reused:
                raise
            rewritten = False
        if rewritten:
            changed += 1
            with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: the input check refuses the line
                line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        out.write(line + b"\n")
    return changed


def write_source_rewritten(source: Any, target: Any, rewrite: Rewrite) -> int:
    """Write ``source``'s requests to ``target`` (atomically), rewritten (see :func:`write_rewritten`)."""
    with open_source(source) as handle, atomic_writer(target) as out:
        return write_rewritten(handle, out, rewrite)


def rewrite_of(settings: BatchSettings) -> Rewrite:
    """What the requests sent add to the source's: the schema (``response_schema`` with
    ``set_response_schema``), the output ceiling (``max_cost_usd``); empty: nothing."""
    asks_schema = settings.response_schema is not None and settings.set_response_schema
    return Rewrite(
        gemini_schema=to_gemini_schema(json_schema_of(settings.response_schema)) if asks_schema else None,
        default_max_output=settings.default_max_output_tokens if settings.max_cost_usd is not None else None,
    )


def sent_requests(journal: BatchJournal) -> ObjectStoragePath:
    """Beside the batch state: the input as sent (rewritten)."""
    return journal.root.parent / f"{journal.root.name}.requests.jsonl"


def as_sent(settings: BatchSettings, journal: BatchJournal, *, write: bool) -> BatchSettings:
    """``settings`` with the requests this try sends: the source, or the source rewritten
    (:func:`rewrite_of`) beside the state, written again by each try (``write``) so a changed input
    is seen, and by a resume that finds none (a cap or schema added meanwhile: shards whose requests
    it changed are then refused as a changed input, before they are sent)."""
    rewrite = rewrite_of(settings)
    sent = replace(settings, rewrite=rewrite, given_source=settings.source)
    if not rewrite:
        return sent
    target = sent_requests(journal)
    if write or not target.exists():
        changed = write_source_rewritten(settings.source, target, rewrite)
        log.info(
            "%d requests rewritten to be sent (response_schema added: %s; maxOutputTokens %s added where none is set)",
            changed,
            rewrite.gemini_schema is not None,
            rewrite.default_max_output or "not",
        )
    return replace(sent, source=target)


def remove_sent(settings: BatchSettings, journal: BatchJournal) -> None:
    """Remove the requests as sent (:func:`as_sent`), if they were rewritten."""
    if settings.rewrite:
        with contextlib.suppress(FileNotFoundError, OSError):
            sent_requests(journal).unlink()


@contextlib.contextmanager
def as_sent_locally(settings: BatchSettings) -> Iterator[BatchSettings]:
    """:func:`as_sent` for the dry run: the rewritten requests in a local temporary copy (a dry run
    writes nothing beside the destination)."""
    rewrite = rewrite_of(settings)
    sent = replace(settings, rewrite=rewrite, given_source=settings.source)
    if not rewrite:
        yield sent
        return
    with tempfile.TemporaryDirectory(prefix="maas-plan-") as folder:
        path = os.path.join(folder, "requests.jsonl")
        write_source_rewritten(settings.source, to_path(path, what="requests"), rewrite)
        yield replace(sent, source=path)
