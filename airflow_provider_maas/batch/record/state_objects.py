"""One stored object of a batch state: its bytes, read back whole or refused.

Journal objects and snapshots are JSON lines ending with a seal, ``{"end": <lines before>}``
(:func:`with_seal`), so a copy cut at a line boundary is told from a whole one; :func:`read_json_lines`
reads an object and raises :class:`StateDamaged`, naming the object and the line, when it is not what
was written. :func:`numbered` and :func:`children` list a state's folders. Where each object lives
is :mod:`.journal`'s layout.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_provider_maas.exceptions import MaaSError
from airflow_provider_maas.storage import uri_of

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def dumps(value: Any) -> bytes:
    """``value`` as one compact JSON line (no trailing newline)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class StateDamaged(MaaSError):
    """The stored state is not whole: ``problem`` says what is wrong with which object."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def with_seal(lines: list[bytes]) -> bytes:
    """An object's lines and its seal, ``{"end": <lines before>}``: a copy cut at a line boundary
    (which is still valid JSON lines) is told from a whole one."""
    return b"\n".join([*lines, dumps({"end": len(lines)})]) + b"\n"


def read_json_lines(path: ObjectStoragePath) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per line; :class:`StateDamaged` naming the file and the
    line if it cannot be read or a line is not a JSON object (truncated, overwritten)."""
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise StateDamaged(f"{uri_of(path)} was listed but cannot be read (deleted meanwhile?)") from None
    except OSError as err:
        raise StateDamaged(f"{uri_of(path)} cannot be read ({type(err).__name__}: {err})") from None
    lines = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            raise StateDamaged(
                f"{uri_of(path)} line {number} is not valid JSON ({err}): truncated or overwritten"
            ) from None
        if not isinstance(value, dict):
            raise StateDamaged(f"{uri_of(path)} line {number} is not a JSON object")
        lines.append(value)
    return lines


def numbered(folder: ObjectStoragePath, prefix: str, suffix: str) -> list[tuple[int, ObjectStoragePath]]:
    """The objects of ``folder`` named ``<prefix><number><suffix>``, by number ([] if there is no folder)."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # no such folder (yet)
        return []
    found = []
    for child in entries:
        name = child.name
        if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix) : -len(suffix)].isdigit():
            found.append((int(name[len(prefix) : -len(suffix)]), child))
    return sorted(found, key=lambda item: item[0])


def children(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """What ``folder`` holds ([] if there is no such folder)."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
