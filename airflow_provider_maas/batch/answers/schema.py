"""Answers checked against a schema (``response_schema``): a JSON Schema dict or a Pydantic model class.

:class:`AnswerCheck` validates the text of each succeeded answer of a downloaded results part
(parsed as JSON, then validated) and rewrites an invalid one in place: the line keeps its response
and gets a ``status`` starting with :data:`INVALID_OUTPUT` and the first error (bounded), so the
merge places it like any failed request (the failed file, the retry rounds).

:func:`to_gemini_schema` turns a JSON Schema (Pydantic's included: ``$defs``/``$ref``,
``anyOf`` with null) into the service's (Gemini's) ``responseSchema`` form, an OpenAPI subset;
:func:`~airflow_provider_maas.batch.inputs.rewrite.write_rewritten` adds it, with
``responseMimeType: application/json``, to each request line that asks for no schema of its own.

JSON Schema validation uses ``jsonschema`` (installed with Airflow: apache-airflow-core requires
it), with the validator of the schema's own ``$schema`` (Draft 2020-12 by default); a Pydantic
model validates with ``model_validate_json``.
"""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_maas.batch.answers.results import load_result_object, result_record
from airflow_provider_maas.batch.inputs.lines import iter_lines
from airflow_provider_maas.exceptions import MaaSInputError
from airflow_provider_maas.storage import atomic_writer

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import ObjectStoragePath

#: How the status of an answer that failed the schema starts.
INVALID_OUTPUT = "INVALID_OUTPUT"
#: Longest error quoted in a status.
MAX_ERROR = 300
#: Keys of Gemini's ``Schema`` kept from a JSON Schema (others are dropped).
_KEPT = frozenset(
    {
        "format",
        "title",
        "description",
        "enum",
        "maxItems",
        "minItems",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "default",
        "example",
        "propertyOrdering",
    }
)


def _is_model(schema: Any) -> bool:
    return isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate_json")


def json_schema_of(schema: Any) -> dict[str, Any]:
    """The JSON Schema of ``response_schema`` (a dict, or a Pydantic model class)."""
    if _is_model(schema):
        return dict(schema.model_json_schema())
    if isinstance(schema, dict):
        return schema
    raise MaaSInputError(
        f"response_schema must be a JSON Schema (a dict) or a Pydantic model class, got {type(schema).__name__}"
    )


class AnswerCheck:
    """Validates answers against ``schema`` (see the module docstring).

    :raises MaaSInputError: ``schema`` is neither a dict nor a model class, or not a valid JSON Schema.
    """

    def __init__(self, schema: Any) -> None:
        self.schema = json_schema_of(schema)
        self._validate = self._model_validator(schema) if _is_model(schema) else self._json_validator(self.schema)
        self.invalid = 0

    @staticmethod
    def _model_validator(model: Any) -> Callable[[str], str | None]:
        from pydantic import ValidationError

        def validate(text: str) -> str | None:
            try:
                model.model_validate_json(text)
            except RecursionError:
                return "nested too deeply to validate"
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "the answer"
                return f"{where}: {first.get('msg')}"
            return None

        return validate

    @staticmethod
    def _json_validator(schema: dict[str, Any]) -> Callable[[str], str | None]:
        from jsonschema import exceptions, validators

        cls = validators.validator_for(schema, default=validators.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except exceptions.SchemaError as err:
            raise MaaSInputError(f"response_schema is not a valid JSON Schema: {err.message}") from None
        validator = cls(schema)

        def validate(text: str) -> str | None:
            try:
                instance = json.loads(text)
            except ValueError as err:
                return f"not JSON ({err})"
            except RecursionError:  # a hostile or broken answer, e.g. "[[[[...": not a crash of the download
                return "not JSON (nested too deeply to parse)"
            try:
                error = next(iter(validator.iter_errors(instance)), None)
            except RecursionError:
                return "nested too deeply to validate"
            if error is None:
                return None
            where = "/".join(str(p) for p in error.absolute_path) or "the answer"
            return f"{where}: {error.message}"

        return validate

    def error(self, text: str | None) -> str | None:
        """Why the answer ``text`` is invalid (bounded), or None if it is valid."""
        if text is None:
            return "the answer has no text"
        problem = self._validate(text)
        if problem is None:
            return None
        return problem if len(problem) <= MAX_ERROR else problem[: MAX_ERROR - 3] + "..."

    def check_lines(self, handle: IO[bytes], out: IO[bytes] | _Discard) -> int:
        """Copy the results lines of ``handle`` to ``out``, invalid answers rewritten; returns how many."""
        invalid = 0
        for line_number, _, line in iter_lines(handle):
            obj = load_result_object(line, f"results line {line_number}", line_number)
            record = result_record(obj, line_number)
            problem = self.error(record.text) if record.succeeded else None
            if problem is not None:
                invalid += 1
                obj.pop("status", None)
                obj["status"] = f"{INVALID_OUTPUT}: the answer does not match response_schema: {problem}"
                line = json.dumps(obj, ensure_ascii=False).encode()
            out.write(line + b"\n")
        return invalid

    def rewrite(self, part: ObjectStoragePath) -> int:
        """Check the answers of a downloaded part; rewrite it (atomically) if any is invalid."""
        with part.open("rb") as handle:
            count = self.check_lines(handle, _Discard())
        if count:
            with part.open("rb") as handle, atomic_writer(part) as out:
                self.check_lines(handle, out)
        self.invalid += count
        return count


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def is_invalid_output(status: str) -> bool:
    """True for the status of an answer rewritten by :class:`AnswerCheck`."""
    return status.startswith(INVALID_OUTPUT)


def retry_rule(should_retry: Callable[[str], bool], retry_invalid: bool) -> Callable[[str], bool]:
    """``should_retry`` where an invalid answer is retried if (and only if) ``retry_invalid``."""
    return lambda status: retry_invalid if is_invalid_output(status) else should_retry(status)


def count_invalid(results: IO[bytes]) -> int:
    """Answers in a results file (the destination) whose status says they failed the schema."""
    count = 0
    marker = INVALID_OUTPUT.encode()
    for line_number, _, line in iter_lines(results):
        if marker in line:
            obj = load_result_object(line, f"results line {line_number}", line_number)
            count += isinstance(obj.get("status"), str) and is_invalid_output(obj["status"])
    return count


# The request side ---------------------------------------------------------------------------------
def to_gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema in Gemini's ``responseSchema`` form (``$ref`` resolved from ``$defs``)."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _convert(schema, definitions, depth=0)


def _convert(node: Any, definitions: dict[str, Any], depth: int) -> dict[str, Any]:
    if depth > 32:
        raise MaaSInputError("response_schema nests deeper than 32 levels (a recursive $ref?); Gemini takes none")
    if not isinstance(node, dict):
        return {}
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name not in definitions:
            raise MaaSInputError(f"response_schema: $ref {node['$ref']!r} names no definition in $defs")
        return _convert({**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}}, definitions, depth + 1)
    out: dict[str, Any] = {key: value for key, value in node.items() if key in _KEPT}
    kind = node.get("type")
    options = node.get("anyOf", node.get("oneOf"))
    if isinstance(kind, list):  # ["string", "null"]
        out["nullable"] = "null" in kind or None
        kind = next((k for k in kind if k != "null"), None)
    if options and not kind:
        real = [option for option in options if not (isinstance(option, dict) and option.get("type") == "null")]
        if len(real) < len(options):
            out["nullable"] = True
        if len(real) == 1:
            return {**_convert(real[0], definitions, depth + 1), **out}
        out["anyOf"] = [_convert(option, definitions, depth + 1) for option in real]
    if "const" in node and "enum" not in out:
        out["enum"] = [node["const"]]
    if kind:
        out["type"] = str(kind).upper()
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: _convert(v, definitions, depth + 1) for k, v in node["properties"].items()}
        out.setdefault("propertyOrdering", list(node["properties"]))
        out.setdefault("type", "OBJECT")
    if isinstance(node.get("required"), list):
        out["required"] = list(node["required"])
    if isinstance(node.get("items"), dict):
        out["items"] = _convert(node["items"], definitions, depth + 1)
    if "enum" in out and "type" not in out:
        out["type"] = "STRING"
    return {key: value for key, value in out.items() if value is not None}
