"""Upload and download streams of :class:`~airflow_provider_maas.hooks.maas.MaaSHook`: a reader
that hashes what it sends, and progress lines for large transfers."""

from __future__ import annotations

import logging
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_maas.client.errors import MAX_ERROR_BODY
from airflow_provider_maas.client.integrity import StreamHasher
from airflow_provider_maas.exceptions import MaaSApiError
from airflow_provider_maas.storage import CHUNK_SIZE, source_size

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("airflow_provider_maas.hooks.maas")


class Progress:
    """Logs ``<verb> N of M bytes (P%)`` about every 10% of a large transfer (>= 10 MB); quiet otherwise."""

    MIN_SIZE = 10 * CHUNK_SIZE

    def __init__(self, verb: str, total: int | None) -> None:
        self.verb = verb
        self.total = total if total and total >= self.MIN_SIZE else None
        self.next_mark = 0.1

    def update(self, done: int) -> None:
        if self.total is None or done < self.total * self.next_mark:
            return
        log.info("%s %d of %d bytes (%.0f%%)", self.verb, done, self.total, 100.0 * done / self.total)
        while self.next_mark <= done / self.total:
            self.next_mark += 0.1


class HashingReader:
    """Wraps a binary file object: hashes what is read (md5 + crc32c) so the upload is verified
    without a second pass over the bytes. ``len()`` gives the Content-Length."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.rewindable = handle.seekable()
        self._start = handle.tell() if self.rewindable else 0
        self._size = source_size(handle)
        self.hasher = StreamHasher(md5=True, crc32c=False)
        self._progress = Progress("Uploaded", self._size)

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk:
            self.hasher.update(chunk)
            self._progress.update(self.hasher.size)
        return chunk

    def __len__(self) -> int:
        if self._size is None:
            raise TypeError("size unknown")
        return self._size

    def payload(self) -> Any:
        """The request body: this reader (sent with Content-Length) when the size is known, else
        an iterator of chunks (sent with chunked transfer encoding; a non-seekable source)."""
        return self if self._size is not None else self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk

    def rewind(self) -> None:
        """Start over before an attempt (the first included)."""
        if self.hasher.size:
            if not self.rewindable:
                raise MaaSApiError("The upload failed midway and its source cannot be re-read; retry the task.")
            self._handle.seek(self._start)
            self.hasher = StreamHasher(md5=True, crc32c=False)
            self._progress = Progress("Uploaded", self._size)


def read_head(chunks: Iterator[bytes]) -> bytes:
    """The start of an error answer: at most one byte more than ``MAX_ERROR_BODY`` (so a cut
    shows), however long the body is."""
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) > MAX_ERROR_BODY:
            break
    return bytes(head[: MAX_ERROR_BODY + 1])


async def aread_head(stream: Any) -> bytes:
    """:func:`read_head` of an aiohttp body stream (``response.content``)."""
    head = bytearray()
    while len(head) <= MAX_ERROR_BODY:
        chunk = await stream.read(MAX_ERROR_BODY + 1 - len(head))
        if not chunk:
            break
        head += chunk
    return bytes(head)
