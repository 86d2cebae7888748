"""The one engine that matches result lines to requests, and its one definition of each leftover.

An :class:`AnswerStore` indexes results files by the digest of their normalised request
(``results.request_digest``, so an echoed request finds its input line) and pairs each input
request with its best answer, in input order (:meth:`AnswerStore.match`): a successful one if any
(first indexed first), else the failure indexed last (the latest round's reason). Used by every
reader that pairs: the download and merge operators' merges, the batch's shard-by-shard merge, and
the passes over the input of ``answer_passes`` (reuse, identical requests, retries, final merge).

What is left once every request is paired (:meth:`AnswerStore.leftovers`), defined here only:

- **unmatched**: a result line no input request asks for (its request is another, or it has none);
- **duplicate**: a successful result line of a request that did not use it (a second answer:
  beyond the first when identical requests share one answer, beyond the number of identical
  requests when each gets its own). A failure superseded by a success is neither. Without the input
  (a download without ``requests=``) only a line repeating an earlier one byte for byte can be told
  a duplicate (:meth:`AnswerStore.repeats_a_line`).

The index lives in a temporary SQLite file, not in Python objects: memory stays flat (SQLite's
page cache, ``cache_mib``: 16 MiB by default, and a fixed 8 MiB Bloom filter of the requests seen) whatever
the number of results, and a 1,000,000-line index is about 60 MB of temporary disk. Requests are paired in
blocks of a few statements each (no Python per lookup); a request is looked up among those seen before only
when the Bloom filter holds its digest. Lines are never kept: only a digest and a location (source, byte
offset, length). No Airflow import.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

from airflow_provider_maas.batch.answers.answer_lines import Answer, parse_result_line
from airflow_provider_maas.batch.answers.results import request_digest
from airflow_provider_maas.batch.inputs.lines import iter_lines

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

#: SQLite's "database or disk is full" (``sqlite3.SQLITE_FULL`` from Python 3.11).
_SQLITE_FULL = 13
#: Rows inserted per ``executemany``.
_BATCH = 20_000
#: Requests paired per query, held in memory with their parsed request until written. Small: the more
#: parsed requests are held, the slower everything around them (the garbage collector's young
#: generations, the CPU's caches): the dedupe pass over 200,000 requests took 5.5 s of CPU in blocks of
#: 1,000, 4.4-4.9 s in blocks of 250, 3.2-3.3 s in blocks of 100 (a batch shard is one block). Two bound
#: values a request (SQLite before 3.32 takes at most 999 in one statement).
_MATCH_BLOCK = 100
#: The digest of a result line without a ``request`` object: no request has it (always unmatched).
NO_REQUEST = b""
#: Requests matched so far are counted in memory (digest -> count) and added to the seen table, in key
#: order, once this many digests are held: one sorted pass over its B-tree rather than a lookup per request
#: (at 1,000,000 requests the table outgrows the page cache, and random lookups read pages back from disk).
_SEEN_FLUSH = 32_768
#: A Bloom filter of every digest counted since the last clear(), 8 MiB (2**26 bits, two bits a digest): a
#: request whose digest is not in it was never seen (no lookup). False positives, which cost one lookup
#: each: 0.1% at 1,000,000 distinct requests, 8% at 10,000,000. Allocated on the second block after a
#: clear() (a shard's requests are one block: never).
_BLOOM_BITS = 1 << 26
_BLOOM_MASK = _BLOOM_BITS - 1

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`AnswerStore.add` indexed from one file: result lines, those that succeeded."""

    lines: int
    succeeded: int


@dataclass(frozen=True, slots=True)
class Leftovers:
    """Result lines no request used (see the module docstring): ``unmatched``, ``duplicates``, and
    ``(source, line)`` of the first unmatched one."""

    unmatched: int
    duplicates: int
    first_unmatched: tuple[int, int] | None


class _Db(sqlite3.Connection):
    """The index's connection: a full disk becomes an ``OSError(ENOSPC)`` naming the file and what to do
    (SQLite only says "database or disk is full")."""

    path = ""

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return self._guarded(super().execute, args)

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        return self._guarded(super().executemany, args)

    # try/except, not a context manager: called for every block of requests and every shard, where entering
    # a generator-based context manager cost 1.8 s of CPU per 1,000,000 calls.
    def _guarded(self, call: Callable[..., sqlite3.Cursor], args: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return call(*args)
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
    ``match()`` the requests in input order, then ``leftovers()``; ``clear()`` starts over in the
    same file (the shard-by-shard merge).

    :param directory: Where the temporary file goes (default: the system's temporary directory).
    :param cache_mib: SQLite's page cache, the memory the index may hold (see the module docstring).
    """

    def __init__(self, directory: str | None = None, *, cache_mib: int = 16) -> None:
        handle, self.path = tempfile.mkstemp(prefix="maas-answers-", suffix=".sqlite", dir=directory)
        os.close(handle)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, factory=_Db)
        self._db.path = self.path
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{cache_mib * 1024}", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute(
            "CREATE TABLE answers (digest BLOB NOT NULL, ok INTEGER NOT NULL, source INTEGER NOT NULL,"
            " line INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL)"
        )
        # How many requests of each digest were matched so far (the k-th identical request gets the k-th success).
        # Written only when read: before a second block of requests, or when leftovers() must ask the file. A
        # shard's requests are one block whose leftovers are known without a query: its counts stay in memory.
        self._db.execute("CREATE TABLE seen (digest BLOB PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
        self._db.execute("CREATE TABLE lines (digest BLOB PRIMARY KEY) WITHOUT ROWID")
        # One transaction for the store's life: no commit (a write of every changed page) per statement. The
        # file is scratch (no journal): it is never read again once closed, whatever state it is in.
        self._db.execute("BEGIN")
        self._indexed = False
        self._rows = 0  # answers rows since the last clear()
        self._given = 0  # answers rows given out, each counted once (a lower bound: see match())
        self._unseen: dict[bytes, int] = {}  # requests matched per digest, not yet added to the seen table
        self._seen_rows = False  # the seen table has rows (since the last clear())
        self._bloom: bytearray | None = None  # every digest counted since the last clear() (see _BLOOM_BITS)
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

        :param label: Names the file in errors (``<label> line N: ...``).
        :param successes_only: Index only the lines that succeeded (earlier results to reuse).
        :raises ResultsFormatError: a line is not a JSON object, naming the file and line.
        """
        source = len(self.sources)
        self.sources.append(label)
        decode = json.JSONDecoder().raw_decode
        rows: list[tuple[bytes, int, int, int, int, int]] = []
        lines = succeeded = 0
        db = self._db
        for line_number, offset, line in iter_lines(fileobj, label):
            lines += 1
            request, ok = parse_result_line(decode, line, label, line_number)
            succeeded += ok
            if ok or not successes_only:
                digest = NO_REQUEST if request is None else request_digest(request)
                rows.append((digest, ok, source, line_number, offset, len(line)))
                if len(rows) >= _BATCH:
                    db.executemany("INSERT INTO answers VALUES (?,?,?,?,?,?)", rows)
                    self._rows += len(rows)
                    rows.clear()
        db.executemany("INSERT INTO answers VALUES (?,?,?,?,?,?)", rows)
        self._rows += len(rows)
        self.added.append(Added(lines, succeeded))
        return self.added[-1]

    def build_index(self) -> None:
        """Build the lookup index now (:meth:`match` builds it first otherwise): after the bulk insert."""
        if not self._indexed:  # after the first bulk insert (a sort), then kept up to date by SQLite
            self._db.execute("CREATE INDEX IF NOT EXISTS by_digest ON answers (digest, ok)")  # no ANALYZE: one index
            self._indexed = True

    def clear(self) -> None:
        """Forget every answer and every request matched (the file and its sources numbering stay)."""
        if self._rows:
            self._db.execute("DELETE FROM answers")
        if self._seen_rows:
            self._db.execute("DELETE FROM seen")
        self._rows, self._given, self._unseen, self._seen_rows, self._bloom = 0, 0, {}, False, None

    def _write_seen(self) -> None:
        """Add the requests matched since the last call to the seen table (which the queries read)."""
        if self._unseen:
            self._db.executemany(_ADD_SEEN.format(rows="(?,?)"), sorted(self._unseen.items()))
            self._unseen, self._seen_rows = {}, True

    # Asking ---------------------------------------------------------------------------------
    def match(
        self, items: Iterable[_T], digest: Callable[[_T], bytes], *, shared: bool
    ) -> Iterator[tuple[_T, Answer | None, bool]]:
        """Pair each item (a request, ``digest(item)`` its digest) with its best answer, in order.

        Yields ``(item, answer or None, repeated)``: ``repeated`` when an identical request came
        before. The best answer is a success if there is one, else the failure indexed last.

        :param shared: Identical requests share the first success (else the k-th identical request
            gets the k-th success, and a failure when they run out). A failure is always shared.
        """
        self.build_index()
        db = self._db
        items = iter(items)
        while block := list(itertools.islice(items, _MATCH_BLOCK)):
            digests = [digest(item) for item in block]
            counts: dict[bytes, int] = {}
            ranks = []
            for key in digests:
                counts[key] = rank = counts.get(key, 0) + 1
                ranks.append(rank)
            before = self._count_seen(counts)
            ks = [before.get(key, 0) + rank for key, rank in zip(digests, ranks, strict=True)]
            if not self._rows:  # nothing indexed (the dedupe pass without reuse_results): no answer to look up
                for item, k in zip(block, ks, strict=True):
                    yield item, None, k > 1
                continue
            asked: list[bytes | int] = []
            for key, k in zip(digests, ks, strict=True):
                asked += (key, shared or k == 1)
            rows = db.execute(_pair_query(len(block)), asked).fetchall()
            for item, key, k, found in zip(block, digests, ks, rows, strict=True):
                if k > 1 and not shared:  # the k-th identical request: the k-th success, if there is one
                    found = db.execute(_KTH_SUCCESS, (key, k - 1)).fetchone() or found
                source, line, offset, length, ok = found
                # A row is given for the first time to the first of identical requests, or as the k-th success.
                if source is not None and (k == 1 or (ok and not shared)):
                    self._given += 1
                yield item, None if source is None else Answer(source, line, offset, length, bool(ok)), k > 1

    def _count_seen(self, counts: dict[bytes, int]) -> dict[bytes, int]:
        """Add a block's requests (``counts``: how many of each digest) to those matched so far; return
        how many of each came before the block (absent: none). The first block after :meth:`clear` stays
        in memory (a shard's requests: no statement at all); later ones are looked up only when the Bloom
        filter holds their digest, in memory first, then in the seen table, which is written in sorted
        batches (:data:`_SEEN_FLUSH`)."""
        unseen = self._unseen
        bloom = self._bloom
        if bloom is None:
            if not unseen and not self._seen_rows:
                self._unseen = dict(counts)
                return {}
            self._bloom = bloom = bytearray(_BLOOM_BITS // 8)
            # Until now at most one block was counted (in memory, or written by leftovers()): cheap to read back.
            for (key,) in self._db.execute("SELECT digest FROM seen") if self._seen_rows else ():
                _bloom_add(bloom, key)
            for key in unseen:
                _bloom_add(bloom, key)
        maybe = []
        for key in counts:
            h = hash(key)
            low, high = h & _BLOOM_MASK, (h >> 32) & _BLOOM_MASK
            if bloom[low >> 3] >> (low & 7) & 1 and bloom[high >> 3] >> (high & 7) & 1:
                maybe.append(key)
            else:
                bloom[low >> 3] |= 1 << (low & 7)
                bloom[high >> 3] |= 1 << (high & 7)
        before: dict[bytes, int] = {}
        if maybe:
            if self._seen_rows:
                query = f"SELECT digest, n FROM seen WHERE digest IN ({','.join('?' * len(maybe))})"
                before = dict(self._db.execute(query, maybe).fetchall())
            for key in maybe:
                if key in unseen:
                    before[key] = before.get(key, 0) + unseen[key]
        for key, count in counts.items():
            unseen[key] = unseen.get(key, 0) + count
        if len(unseen) >= _SEEN_FLUSH:
            self._write_seen()
        return before

    def repeats_a_line(self, line: bytes) -> bool:
        """True if a byte-identical line was passed here before (and remember this one): the duplicates
        of a results file read without its input."""
        digest = hashlib.blake2b(line, digest_size=16).digest()
        return self._db.execute("INSERT OR IGNORE INTO lines VALUES (?)", (digest,)).rowcount == 0

    def leftovers(self, first_source: int = 0, *, shared: bool) -> Leftovers:
        """Result lines of sources ``first_source`` on that no request used, once :meth:`match` ran
        over every request: ``unmatched`` and ``duplicates`` as the module docstring defines them;
        ``first_unmatched`` is ``(source, line)`` of the first unmatched line, or None."""
        if self._given == self._rows:
            return Leftovers(0, 0, None)  # every line was given to a request (the usual case)
        self._write_seen()
        query = f"SELECT (SELECT count(*) {_UNMATCHED}), ({_DUPLICATES})"
        unmatched, duplicates = self._db.execute(query, (first_source, int(shared))).fetchone()
        first = None
        if unmatched:
            first = self._db.execute(
                f"SELECT source, line {_UNMATCHED} ORDER BY rowid LIMIT 1", (first_source,)
            ).fetchone()
        return Leftovers(unmatched, duplicates, None if first is None else tuple(first))


@functools.lru_cache(maxsize=32)
def _pair_query(requests: int) -> str:
    """The one query pairing a block of ``requests`` requests, bound as ``digest, first`` each
    (``first``: a success may be given, the first one): :data:`_PAIR` with the block in it."""
    return _PAIR.format(asked=",".join(f"({pos},?,?)" for pos in range(requests)))


#: Each asked request's answer: the first success (if ``first``: shared, or the first of identical
#: requests), else the last failure; :data:`_KTH_SUCCESS` for the others.
#: One statement a block: the requests are bound in its ``VALUES`` (no table to fill and empty first).
_PAIR = """
WITH asked (pos, digest, first) AS (VALUES {asked}), chosen AS (
    SELECT pos, COALESCE(
        CASE WHEN first THEN
            (SELECT rowid FROM answers WHERE answers.digest = asked.digest AND ok = 1 ORDER BY rowid LIMIT 1)
        END,
        (SELECT rowid FROM answers WHERE answers.digest = asked.digest AND ok = 0 ORDER BY rowid DESC LIMIT 1)
    ) AS id
    FROM asked
)
SELECT a.source, a.line, a.offset, a.length, a.ok
FROM chosen LEFT JOIN answers AS a ON a.rowid = chosen.id
ORDER BY chosen.pos
"""
_KTH_SUCCESS = (
    "SELECT source, line, offset, length, ok FROM answers WHERE digest = ? AND ok = 1 ORDER BY rowid LIMIT 1 OFFSET ?"
)
_ADD_SEEN = "INSERT INTO seen VALUES {rows} ON CONFLICT (digest) DO UPDATE SET n = n + excluded.n"
_UNMATCHED = "FROM answers WHERE source >= ?1 AND digest NOT IN (SELECT digest FROM seen)"
#: Successes of asked requests beyond those used: the first (shared), or as many as identical requests.
_DUPLICATES = """
SELECT count(*) FROM (
    SELECT answers.source, seen.n,
           ROW_NUMBER() OVER (PARTITION BY answers.digest ORDER BY answers.rowid) AS r
    FROM answers JOIN seen ON seen.digest = answers.digest WHERE answers.ok = 1
) WHERE r > CASE WHEN ?2 THEN 1 ELSE n END AND source >= ?1
"""


def _bloom_add(bloom: bytearray, key: bytes) -> None:
    """Set ``key``'s two bits in ``bloom`` (the same two :meth:`AnswerStore._count_seen` tests)."""
    h = hash(key)
    low, high = h & _BLOOM_MASK, (h >> 32) & _BLOOM_MASK
    bloom[low >> 3] |= 1 << (low & 7)
    bloom[high >> 3] |= 1 << (high & 7)
