"""Result lines read for the matching engine: the fast parse of a line (only the request of a success
in the service's own layout is decoded), where one answer is (:class:`Answer`), and reading it back
(:func:`reader`). No Airflow import."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, NamedTuple

from airflow_provider_maas.batch.answers.results import load_result_object, request_and_success
from airflow_provider_maas.batch.inputs.lines import ResultsFormatError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


class Answer(NamedTuple):
    """Where one answer is: byte ``offset`` and ``length`` (no newline) of ``line`` in ``source``."""

    source: int
    line: int
    offset: int
    length: int
    succeeded: bool


_HEADS = ('{"request": ', '{"request":')
_RESPONSE = (', "response": {', ',"response":{')
#: How a successful line of the service ends (bytes: see :func:`parse_result_line` for why it is enough).
OK_TAILS = (b'"status":""}', b'"status": ""}')


def parse_result_line(
    decode: Callable[..., tuple[object, int]], line: bytes, label: str, line_number: int
) -> tuple[dict | None, bool]:
    """``(request object or None, succeeded)`` of one results line.

    Fast path for the service's own layout (``{"request": {...}, "response": {...}, ...,
    "status": ""}``): only the request is decoded. A JSON object text that ends with
    ``"status":""}`` has ``""`` as its last top-level ``status`` (no unescaped quote can sit inside
    a string), and ``"response": {`` right after the request is a top-level object. Any other line
    (a failure, another layout) is parsed whole by the results reader (``results.load_result_object``,
    ``results.request_and_success``: one parser, one meaning of success). The merge parses every line it
    copies whole, so a damaged line is still reported there.
    """
    if line.rstrip().endswith(OK_TAILS):  # the tail first: a failure's request is not decoded twice
        try:
            text = line.decode("utf-8")
            for head in _HEADS:
                if text.startswith(head):
                    request, end = decode(text, len(head))
                    if isinstance(request, dict) and text.startswith(_RESPONSE, end):
                        return request, True
                    break
        except (ValueError, RecursionError):
            pass  # not the service's layout: the whole line is parsed below, which names what is wrong
    return request_and_success(load_result_object(line, f"{label} line {line_number}", line_number))


def reader(files: Mapping[int, IO[bytes]], labels: Sequence[str]) -> Callable[[Answer], bytes]:
    """``read(answer) -> line bytes`` over seekable binary files keyed by source number (``labels``:
    :attr:`AnswerStore.sources`, naming them in errors)."""

    # Each file's methods looked up once: a file of the storage layer (lineage tracking) wraps every lookup.
    methods = {source: (handle.seek, handle.read) for source, handle in files.items()}

    def read(answer: Answer) -> bytes:
        seek, read_bytes = methods[answer.source]
        seek(answer.offset)
        line = read_bytes(answer.length)
        if len(line) != answer.length:
            raise ResultsFormatError(
                f"{labels[answer.source]} line {answer.line}: read {len(line)} bytes, expected {answer.length};"
                " did the file change?",
                line_number=answer.line,
            )
        return line

    return read
