"""Storage-object resources, timestamps, hashes and upload validation of the emulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

import google_crc32c

if TYPE_CHECKING:
    from aiohttp import web

#: Bytes per read when the emulator serves a results file (its own: it never imports the provider's storage,
#: which imports Airflow).
SERVE_BLOCK = 256 * 1024


def rfc3339_ms(ts: float) -> str:
    """``2026-05-26T08:51:53.742Z`` (storage objects)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rfc3339_us(ts: float) -> str:
    """``2026-05-28T08:39:00.803441Z`` (jobs)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_offset_us(ts: float) -> str:
    """``2026-01-29T02:15:47.048543+00:00`` (``processed_time`` of result lines)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="microseconds")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def etag(generation: int, metageneration: int = 1) -> str:
    """Cloud Storage's etag: base64 of the protobuf ``{1: generation, 2: metageneration}``."""
    return b64(b"\x08" + _varint(generation) + b"\x10" + _varint(metageneration))


def object_resource(
    *,
    generation: int,
    size: int,
    crc32c: bytes,
    created: float,
    name: str | None = None,
    md5: bytes | None = None,
    component_count: int | None = None,
) -> dict[str, Any]:
    """A Cloud Storage object resource shaped like the documented examples (numbers as strings)."""
    stamp = rfc3339_ms(created)
    res: dict[str, Any] = {"kind": "storage#object", "id": str(generation)}
    if name is not None:
        res["name"] = name
    res.update(
        {
            "generation": str(generation),
            "metageneration": "1",
            "contentType": "application/octet-stream",
            "storageClass": "STANDARD",
            "size": str(size),
        }
    )
    if md5 is not None:
        res["md5Hash"] = b64(md5)
    res["crc32c"] = b64(crc32c)
    if component_count is not None:
        res["componentCount"] = component_count
    res.update(
        {
            "etag": etag(generation),
            "timeCreated": stamp,
            "updated": stamp,
            "timeStorageClassUpdated": stamp,
            "timeFinalized": stamp,
        }
    )
    return res


class HashingWriter:
    """Writes chunks to a file while computing size, MD5 and CRC32C (run it off the event loop)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.size = 0
        self._md5 = hashlib.md5()
        self._crc = google_crc32c.Checksum()

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self._md5.update(data)
        self._crc.update(data)
        self.size += len(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    @property
    def crc32c(self) -> bytes:
        return self._crc.digest()


class UploadRejected(ValueError):
    """The uploaded JSONL breaks a documented rule (message is for the client)."""


def request_line_offsets(path: str) -> list[int]:
    """Byte offsets of the request lines of a JSONL file (blank lines are not requests)."""
    offsets: list[int] = []
    pos = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                offsets.append(pos)
            pos += len(line)
    return offsets


def validate_jsonl(path: str, max_requests: int) -> int:
    """Check every line is a JSON object with a ``request`` object; return the number of requests.

    Blank lines (e.g. a trailing newline) are not requests and are skipped.
    """
    count = 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            count += 1
            if count > max_requests:
                raise UploadRejected(
                    f"The file holds more than {max_requests} requests (JSONL lines); "
                    f"at most {max_requests} are allowed per file."
                )
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise UploadRejected(f"Line {number} is not valid JSON: {exc}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("request"), dict):
                raise UploadRejected(f'Line {number} is not a JSON object with a "request" object.')
    if count == 0:
        raise UploadRejected("The file holds no requests.")
    return count


_FLUSH_BYTES = 1024 * 1024


def too_big_message(max_bytes: int) -> str:
    return f"Request payload size exceeds the limit: {max_bytes} bytes."


def _finish(writer: HashingWriter, tail: bytes, max_requests: int) -> int:
    if tail:
        writer.write(tail)
    writer.close()
    return validate_jsonl(writer.path, max_requests)


async def receive_upload(
    request: web.Request, path: str, max_bytes: int, max_requests: int
) -> tuple[HashingWriter, int]:
    """Stream the request body to ``path`` (hashing it) and validate it; return the writer and request count.

    Chunks are batched (~1 MB) and hashed + written in a worker thread, so the event loop never
    does the heavy work and the body is never held whole in memory. Raises ``UploadRejected``
    (the file is then deleted).
    """
    loop = asyncio.get_running_loop()
    writer: HashingWriter | None = None
    buf: list[bytes] = []
    buffered = total = 0
    try:
        async for chunk in request.content.iter_chunked(256 * 1024):
            total += len(chunk)
            if total > max_bytes:
                raise UploadRejected(too_big_message(max_bytes))
            buf.append(chunk)
            buffered += len(chunk)
            if buffered >= _FLUSH_BYTES:
                if writer is None:
                    writer = await loop.run_in_executor(None, HashingWriter, path)
                await loop.run_in_executor(None, writer.write, b"".join(buf))
                buf, buffered = [], 0
        if writer is None:
            writer = await loop.run_in_executor(None, HashingWriter, path)
        count = await loop.run_in_executor(None, _finish, writer, b"".join(buf), max_requests)
    except BaseException:
        if writer is not None:
            await asyncio.shield(loop.run_in_executor(None, writer.discard))
        raise
    return writer, count
