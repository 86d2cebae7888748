"""Size and checksum checks of transferred bytes, against what the service reports.

The service answers an upload with a Cloud Storage object resource (``size`` as a string,
``md5Hash`` and ``crc32c`` as base64) and describes results the same way, but without
``md5Hash`` (composite object). So uploads are checked by size and MD5 (and CRC32C if hashed),
downloads by size and CRC32C. Hash while streaming with :class:`StreamHasher`, then call
:func:`verify_upload` or :func:`verify_download`.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import google_crc32c

from airflow_provider_maas.exceptions import MaaSIntegrityError
from airflow_provider_maas.redaction import neutralise

__all__ = ["StreamHasher", "b64_crc32c", "b64_md5", "verify_download", "verify_upload"]


def b64_md5(data: bytes) -> str:
    """Base64 of the MD5 digest of ``data``, as in ``md5Hash``."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def b64_crc32c(data: bytes) -> str:
    """Base64 of the big-endian CRC32C of ``data``, as in ``crc32c``."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


class StreamHasher:
    """Counts bytes and hashes them incrementally; ``update()`` each chunk as it goes by.

    :param md5: Compute MD5 (uploads: the service reports ``md5Hash``). Costs ~1.5 s/GB.
    :param crc32c: Compute CRC32C (downloads: results only carry ``crc32c``). Nearly free.
    """

    __slots__ = ("_crc32c", "_md5", "size")

    def __init__(self, *, md5: bool = True, crc32c: bool = True) -> None:
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self._crc32c = google_crc32c.Checksum() if crc32c else None

    @property
    def has_md5(self) -> bool:
        """True if MD5 is being computed."""
        return self._md5 is not None

    @property
    def has_crc32c(self) -> bool:
        """True if CRC32C is being computed."""
        return self._crc32c is not None

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of bytes."""
        self.size += len(chunk)
        if self._md5 is not None:
            self._md5.update(chunk)
        if self._crc32c is not None:
            # google_crc32c's C extension takes read-only buffers only (not bytearray).
            self._crc32c.update(chunk if isinstance(chunk, bytes) else bytes(chunk))

    def md5_b64(self) -> str:
        """Base64 MD5 of the bytes so far (like ``md5Hash``); ValueError if not computed."""
        if self._md5 is None:
            raise ValueError("this StreamHasher does not compute MD5 (created with md5=False)")
        return base64.b64encode(self._md5.digest()).decode("ascii")

    def crc32c_b64(self) -> str:
        """Base64 CRC32C of the bytes so far (like ``crc32c``); ValueError if not computed."""
        if self._crc32c is None:
            raise ValueError("this StreamHasher does not compute CRC32C (created with crc32c=False)")
        return base64.b64encode(self._crc32c.digest()).decode("ascii")


def _compare(reported: dict[str, Any], hasher: StreamHasher, fields: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """Compare each field present on both sides; return the fields checked and a mismatch text ("" if none)."""
    checked: list[str] = []
    theirs: list[str] = []
    ours: list[str] = []
    mismatch = False
    for name in fields:
        value = reported.get(name)
        if value is None:
            continue
        if name == "size":
            mine, label = str(hasher.size), "size"
            matches = str(value).strip() == mine
        elif name == "md5Hash" and hasher.has_md5:
            mine, label = hasher.md5_b64(), "md5"
            matches = value == mine
        elif name == "crc32c" and hasher.has_crc32c:
            mine, label = hasher.crc32c_b64(), "crc32c"
            matches = value == mine
        else:
            continue
        checked.append(name)
        mismatch = mismatch or not matches
        # the service's text, bounded and neutralised; its braces escaped: the text is a format string
        theirs.append(f"{label} {neutralise(str(value), 100)}".replace("{", "{{").replace("}", "}}"))
        ours.append(f"{label} {mine}")
    return tuple(checked), f"service reports {' / '.join(theirs)}, {{}} {' / '.join(ours)}" if mismatch else ""


def verify_upload(response: dict[str, Any], hasher: StreamHasher) -> tuple[str, ...]:
    """Check an upload response (``size``, ``md5Hash``, and ``crc32c`` if the hasher has it).

    :return: The response fields that were checked, e.g. ``("size", "md5Hash")``.
    :raises MaaSIntegrityError: if a field differs from the bytes sent (upload again), or if the
        response holds nothing to check against.
    """
    what = f"uploaded file {neutralise(str(response.get('name', '?')), 200)}"
    checked, mismatch = _compare(response, hasher, ("size", "md5Hash", "crc32c"))
    if mismatch:
        raise MaaSIntegrityError(f"{what}: {mismatch.format('sent')}; the bytes changed in transit: upload again")
    if not checked:
        raise MaaSIntegrityError(
            f"{what}: the service's answer has no size and no checksum to verify the upload against "
            f"({hasher.size} bytes sent); check the service, or upload again"
        )
    return checked


def verify_download(metadata: dict[str, Any], hasher: StreamHasher, *, what: str) -> tuple[str, ...]:
    """Check downloaded bytes against the results metadata (``size`` and ``crc32c``).

    A field missing from ``metadata`` (or a hash the hasher does not compute) is skipped; the
    caller may log which checks ran. If none could run, that is an error: nothing was verified.

    :param what: What was downloaded, for messages (e.g. ``"results of job 123"``).
    :return: The metadata fields that were checked, e.g. ``("size", "crc32c")``.
    :raises MaaSIntegrityError: on a mismatch (download again), or if nothing could be checked.
    """
    checked, mismatch = _compare(metadata, hasher, ("size", "crc32c"))
    if mismatch:
        raise MaaSIntegrityError(
            f"downloaded {what}: {mismatch.format('received')}; the bytes changed in transit: download again"
        )
    if not checked:
        raise MaaSIntegrityError(
            f"downloaded {what}: the metadata has no size and no crc32c to verify the {hasher.size} bytes "
            "received against; check the service, or download again"
        )
    return checked
