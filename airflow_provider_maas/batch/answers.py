"""Where the answer to each request is: earlier results to reuse, and this batch's own results.

An :class:`AnswerStore` indexes results files by the digest of their normalised request (the same
``results.request_digest`` the merge uses to match results to requests, so an echoed request
finds its input line) and says, for a request, which line holds its best answer: a successful one
if any (first indexed first), else the failure indexed last (the latest round's reason).

The index lives in a temporary SQLite file, not in Python objects: memory stays flat (SQLite's
page cache, 16 MiB at most) whatever the number of results, and a 1,000,000-line index is about
60 MB of temporary disk. A dict of digests would cost ~150 bytes per entry (150 MB at 1M), and a
hand-made table in an ``array`` would still grow with the input and need its own collision and
deletion code; SQLite is in the standard library, batches the inserts, and builds the lookup
B-tree once (``CREATE INDEX`` after the bulk insert, a sort). Lines are never kept: only a digest
and a location (source, byte offset, length). No Airflow import.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from airflow_provider_maas.batch.lines import ResultsFormatError, iter_lines
from airflow_provider_maas.batch.results import request_digest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

#: SQLite's "database or disk is full" (``sqlite3.SQLITE_FULL`` from Python 3.11).
_SQLITE_FULL = 13
#: Rows inserted per ``executemany``.
_BATCH = 20_000


class Answer(NamedTuple):
    """Where one answer is: byte ``offset`` and ``length`` (no newline) of ``line`` in ``source``."""

    source: int
    line: int
    offset: int
    length: int
    succeeded: bool


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`AnswerStore.add` indexed from one file: result lines, those that succeeded."""

    lines: int
    succeeded: int


@dataclass(frozen=True, slots=True)
class Leftovers:
    """Result lines no request used: ``unmatched`` (no input request has them), ``duplicates``
    (second successful answers to a request)."""

    unmatched: int
    duplicates: int


class _Db(sqlite3.Connection):
    """The index's connection: a full disk becomes an ``OSError(ENOSPC)`` naming the file and what to do
    (SQLite only says "database or disk is full")."""

    path = ""

    def execute(self, *args: Any) -> sqlite3.Cursor:
        with self._space():
            return super().execute(*args)

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        with self._space():
            return super().executemany(*args)

    @contextlib.contextmanager
    def _space(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", None) != _SQLITE_FULL:  # Python 3.10: never set
                raise
            raise OSError(
                errno.ENOSPC,
                f"The temporary index of answers (reuse_results, deduplication, merge) at {self.path} ran out of "
                f"space ({err}): free space in {os.path.dirname(self.path)}, or point TMPDIR at a larger disk for "
                "the worker (about 60 MB per million results). Nothing paid for is lost: a retry goes on from the "
                "batch state",
            ) from err


class AnswerStore:
    """Results files indexed by request digest, in a temporary SQLite file (see the module docstring).

    Use as a context manager (the file is removed on exit). ``add()`` each results file, then
    ``best()`` per request. ``seen()`` remembers digests (e.g. the requests already sent).

    :param directory: Where the temporary file goes (default: the system's temporary directory).
    """

    def __init__(self, directory: str | None = None) -> None:
        handle, self.path = tempfile.mkstemp(prefix="maas-answers-", suffix=".sqlite", dir=directory)
        os.close(handle)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, factory=_Db)
        self._db.path = self.path
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16384", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE answers (digest BLOB NOT NULL, ok INTEGER NOT NULL, source INTEGER NOT NULL,"
            " line INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL)"
        )
        self._db.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY) WITHOUT ROWID")
        self._indexed = False
        self.sources: list[str] = []
        self.added: list[Added] = []

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # Building -------------------------------------------------------------------------------
    def add(self, label: str, fileobj: IO[bytes], *, successes_only: bool = False) -> Added:
        """Index every result line of one results file (its source number is its order of adding).

        :param label: Names the file in errors (``results <label> line N: ...``).
        :param successes_only: Index only the lines that succeeded (earlier results to reuse).
        :raises ResultsFormatError: a line is not a JSON object, naming the file and line.
        """
        source = len(self.sources)
        self.sources.append(label)
        decode = json.JSONDecoder().raw_decode
        rows: list[tuple[bytes, int, int, int, int, int]] = []
        lines = succeeded = 0
        db = self._db
        db.execute("BEGIN")
        try:
            for line_number, offset, line in iter_lines(fileobj, f"results {label}"):
                lines += 1
                request, ok = _parse(decode, line, label, line_number)
                succeeded += ok
                if request is not None and (ok or not successes_only):
                    rows.append((request_digest(request), ok, source, line_number, offset, len(line)))
                    if len(rows) >= _BATCH:
                        db.executemany("INSERT INTO answers VALUES (?,?,?,?,?,?)", rows)
                        rows.clear()
            db.executemany("INSERT INTO answers VALUES (?,?,?,?,?,?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._indexed = False
        self.added.append(Added(lines, succeeded))
        return self.added[-1]

    def _index(self) -> None:
        if not self._indexed:
            self._db.execute("CREATE INDEX IF NOT EXISTS by_digest ON answers (digest)")
            self._db.execute("ANALYZE")
            self._indexed = True

    # Asking ---------------------------------------------------------------------------------
    def best(self, digest: bytes, *, take: bool = False, successes_only: bool = False) -> Answer | None:
        """The best answer for a request digest: the first success indexed, else the last failure.

        :param take: Remove a successful answer once given (identical requests each get their own
            answer, in the order indexed); failures stay, as the reason of every request they answer.
        :param successes_only: None rather than a failure.
        """
        self._index()
        row = self._db.execute(
            "SELECT rowid, source, line, offset, length, ok FROM answers WHERE digest = ?"
            " ORDER BY ok DESC, CASE WHEN ok THEN rowid ELSE -rowid END LIMIT 1",
            (digest,),
        ).fetchone()
        if row is None or (successes_only and not row[5]):
            return None
        if take and row[5]:
            self._db.execute("DELETE FROM answers WHERE rowid = ?", (row[0],))
        return Answer(row[1], row[2], row[3], row[4], bool(row[5]))

    def seen(self, digest: bytes) -> bool:
        """True if ``digest`` was passed to ``seen()`` before (and remember it)."""
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (digest,)).rowcount == 0

    def leftovers(self, first_source: int, *, shared: bool) -> Leftovers:
        """Result lines of sources ``first_source`` on that no request took (call after the merge,
        which passed every request digest to :meth:`seen`).

        :param shared: Answers were shared (not taken): a request's second success is a duplicate.
        """
        unmatched = self._db.execute(
            "SELECT count(*) FROM answers WHERE source >= ? AND digest NOT IN (SELECT digest FROM seen)",
            (first_source,),
        ).fetchone()[0]
        asked = "source >= ? AND ok AND digest IN (SELECT digest FROM seen)"
        if shared:
            query = f"SELECT count(*) - count(DISTINCT digest) FROM answers WHERE {asked}"
        else:
            query = f"SELECT count(*) FROM answers WHERE {asked}"
        duplicates = self._db.execute(query, (first_source,)).fetchone()[0]
        return Leftovers(unmatched, duplicates)


_HEADS = ('{"request": ', '{"request":')
_RESPONSE = (', "response": {', ',"response":{')
#: How a successful line of the service ends (bytes: see :func:`_parse` for why it is enough).
OK_TAILS = (b'"status":""}', b'"status": ""}')
_OK_TAILS = tuple(tail.decode() for tail in OK_TAILS)


def _parse(
    decode: Callable[..., tuple[object, int]], line: bytes, label: str, line_number: int
) -> tuple[dict | None, bool]:
    """``(request object or None, succeeded)`` of one results line.

    Fast path for the service's own layout (``{"request": {...}, "response": {...}, ...,
    "status": ""}``): only the request is decoded. A JSON object text that ends with
    ``"status":""}`` has ``""`` as its last top-level ``status`` (no unescaped quote can sit inside
    a string), and ``"response": {`` right after the request is a top-level object. Any other line
    (a failure, another layout) is decoded whole. The merge decodes every line it copies whole, so a
    damaged line is still reported there.
    """
    try:
        text = line.decode("utf-8")
        for head in _HEADS:
            if text.startswith(head):
                request, end = decode(text, len(head))
                if isinstance(request, dict) and text.startswith(_RESPONSE, end) and text.rstrip().endswith(_OK_TAILS):
                    return request, True
                break
        obj, end = decode(text)
        if not isinstance(obj, dict) or text[end:].strip():
            raise ValueError
    except (ValueError, RecursionError):
        raise ResultsFormatError(
            f"results {label} line {line_number}: not a JSON object; is this a MaaS results file?",
            line_number=line_number,
        ) from None
    request = obj.get("request")
    ok = obj.get("status") in ("", None) and isinstance(obj.get("response"), dict)
    return (request if isinstance(request, dict) else None), ok


def reader(files: dict[int, IO[bytes]], labels: Sequence[str]) -> Callable[[Answer], bytes]:
    """``read(answer) -> line bytes`` over seekable binary files keyed by source number (``labels``:
    :attr:`AnswerStore.sources`, naming them in errors)."""

    def read(answer: Answer) -> bytes:
        handle = files[answer.source]
        handle.seek(answer.offset)
        line = handle.read(answer.length)
        if len(line) != answer.length:
            raise ResultsFormatError(
                f"results {labels[answer.source]} line {answer.line}: read {len(line)} bytes, expected {answer.length};"
                " did the file change?",
                line_number=answer.line,
            )
        return line

    return read
