"""Where bytes come from and go to: local paths, URIs and ``ObjectStoragePath``.

Tasks of one DAG may run on different machines, so everything handed between tasks is a URI
(``file:///...``, ``s3://conn@bucket/key``) or an :class:`~airflow.sdk.ObjectStoragePath`; a URI
keeps the path's connection id, so :func:`to_path` of :func:`uri_of` is the same filesystem with
the same credentials. Writes are atomic: bytes go to a temporary ``.<name>.<random>.part`` beside
the destination and are moved into place only once complete and verified, so a reader never sees
a half-written or corrupt file. Destinations are checked (:func:`check_destination`) before
anything is paid for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from airflow.sdk import ObjectStoragePath

from airflow_provider_maas.exceptions import MaaSError, MaaSInputError

try:
    from airflow.sdk.io.fs import has_fs
except ImportError:  # Airflow 3.0
    from airflow.io import has_fs  # type: ignore[no-redef,attr-defined,unused-ignore]

if TYPE_CHECKING:
    from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Chunk size for streamed copies (reads, writes, HTTP bodies).
CHUNK_SIZE = 1024 * 1024
#: Bytes written between two background write-backs of a large local file (:class:`EarlyWriteback`).
WRITEBACK_BYTES = 64 * 1024 * 1024
#: An object-store ``.part`` older than this is left over by a killed writer (a live writer moves
#: its part into place as soon as the part is complete, i.e. visible). Local parts are locked by
#: their writer instead: any unlocked one is stale, whatever its age.
STALE_PART_SECONDS = 5 * 60
#: What to install for a scheme without a registered filesystem.
INSTALL_HINTS = {
    "s3": "pip install 'apache-airflow-providers-amazon[s3fs]'",
    "s3a": "pip install 'apache-airflow-providers-amazon[s3fs]'",
    "gs": "pip install apache-airflow-providers-google",
    "gcs": "pip install apache-airflow-providers-google",
    "abfs": "pip install apache-airflow-providers-microsoft-azure",
    "abfss": "pip install apache-airflow-providers-microsoft-azure",
    "adl": "pip install apache-airflow-providers-microsoft-azure",
}
_LOCAL = frozenset({"file", "local"})
#: ``.<name>.<random>.part``: ours (12 hex digits locally, 32 on object stores) and the older
#: ``tempfile.mkstemp`` names (8 characters).
_PART = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8,32}\.part")


def to_path(target: Any, *, what: str = "path") -> ObjectStoragePath:
    """Turn a local path, URI or ``ObjectStoragePath`` into an ``ObjectStoragePath``.

    Relative local paths are made absolute; ``..`` segments are refused (path traversal);
    ``file://localhost/x`` is ``/x``. A connection id in the URI (``s3://my_conn@bucket/key``) is kept.
    """
    if isinstance(target, ObjectStoragePath):
        path = target
    elif isinstance(target, (str, os.PathLike)):
        text = os.fspath(target).strip()
        if not text:
            raise MaaSInputError(f"The {what} is empty: give a local path, a URI or an ObjectStoragePath.")
        if ".." in text.replace("\\", "/").split("/"):
            raise MaaSInputError(f"The {what} {text!r} contains a '..' segment; give a normalised path.")
        if "://" not in text:
            text = "file://" + os.path.abspath(text)
        elif text[:7].lower() == "file://":
            host = urlsplit(text).netloc
            if host.lower() not in {"", "localhost"}:
                raise MaaSInputError(
                    f"The {what} {text!r} names the host {host!r}: file:// URIs are local paths, "
                    "written file:///absolute/path (or file://localhost/absolute/path)."
                )
            text = "file://" + text[7 + len(host) :]
        try:
            path = ObjectStoragePath(text)
        except (ValueError, TypeError, ImportError) as err:  # "Unsupported filesystem: 'x'", "Install ocifs"
            raise MaaSInputError(f"The {what} {text!r} is not a usable path or URI: {err}.") from None
    else:
        raise MaaSInputError(
            f"The {what} must be a local path, a URI or an ObjectStoragePath, got {type(target).__name__}."
        )
    if ".." in str(path.path).split("/"):
        raise MaaSInputError(f"The {what} {uri_of(path)!r} contains a '..' segment; give a normalised path.")
    return path


def conn_id_of(path: ObjectStoragePath) -> str | None:
    """The Airflow connection of ``path``: ``.conn_id`` on task SDK >= 1.1, a storage option on 1.0."""
    conn_id = getattr(path, "conn_id", None)
    if conn_id is None:
        conn_id = (getattr(path, "storage_options", None) or {}).get("conn_id")
    return conn_id or None


def uri_of(path: ObjectStoragePath) -> str:
    """A URI for ``path`` that keeps its connection: ``file:///data/r.jsonl``, ``s3://my_conn@bucket/key``.

    ``to_path(uri_of(p))`` has the protocol, bucket, key and connection id of ``p``. Every URI the
    provider writes to XCom, logs, summaries or state comes from here.
    """
    protocol = path.protocol or "file"
    if protocol in _LOCAL:
        return "file://" + str(path.path)
    conn_id = conn_id_of(path)
    user = f"{conn_id}@" if conn_id else ""
    return f"{protocol}://{user}{str(path.path).lstrip('/')}"


def is_local(path: ObjectStoragePath) -> bool:
    return (path.protocol or "file") in _LOCAL


def check_within(path: ObjectStoragePath, allowed_prefix: Any | None, *, what: str) -> None:
    """Refuse a destination outside ``allowed_prefix`` (when one is set).

    Compared on protocol and path; the connection too when the prefix names one.
    """
    if allowed_prefix is None:
        return
    allowed = to_path(allowed_prefix, what="allowed prefix")
    root = str(allowed.path).rstrip("/") + "/"
    inside = (
        (allowed.protocol or "file") == (path.protocol or "file")
        and str(path.path).startswith(root)
        and conn_id_of(allowed) in {None, conn_id_of(path)}
    )
    if not inside:
        raise MaaSInputError(
            f"The {what} {uri_of(path)!r} is outside the allowed prefix {uri_of(allowed).rstrip('/') + '/'!r}; "
            "write results under that prefix or change the operator's allowed_prefix."
        )


def filesystem_of(path: ObjectStoragePath, *, what: str = "path") -> Any:
    """The fsspec filesystem of ``path``; a :class:`MaaSInputError` naming what to install when its
    scheme has no filesystem registered, or when its connection cannot be used."""
    protocol = path.protocol or "file"
    try:
        return path.fs
    except ValueError as err:
        if not _has_fs(protocol):
            hint = INSTALL_HINTS.get(
                protocol,
                f"install the Airflow provider that registers the {protocol}:// filesystem, "
                "or attach one with airflow.sdk.io.attach()",
            )
            raise MaaSInputError(
                f"The {what} {uri_of(path)!r} uses {protocol}://, for which no filesystem is registered "
                f"in this Airflow installation: {hint} (on every worker), or use another path."
            ) from None
        raise _cannot_use(path, what, err) from None
    except Exception as err:  # e.g. the connection does not exist
        raise _cannot_use(path, what, err) from None


def _cannot_use(path: ObjectStoragePath, what: str, err: Exception) -> MaaSInputError:
    conn_id = conn_id_of(path)
    conn = f" with connection {conn_id!r}" if conn_id else " without a connection id"
    return MaaSInputError(
        f"The {what} {uri_of(path)!r}: its {path.protocol}:// filesystem cannot be opened{conn} "
        f"({type(err).__name__}: {err}); check the connection (the id goes before '@' in the URI)."
    )


def _has_fs(protocol: str) -> bool:
    try:
        return bool(has_fs(protocol))
    except Exception:  # a broken provider: report the scheme as unusable
        return False


def check_destination(target: Any, *, what: str = "destination", folder: bool = False) -> ObjectStoragePath:
    """Check, before anything is uploaded or created, that ``target`` can be written; return its path.

    Refuses (:class:`MaaSInputError`, saying what to install or change): a scheme without a
    registered filesystem or an unusable connection; an existing directory (or, with ``folder``,
    an existing file); locally, a parent that is a file or a folder that cannot be written. Nothing
    is created. Other errors of an object store (network) raise a retryable :class:`MaaSError`.

    :param folder: ``target`` is a folder to write files into (e.g. the split operator's prefix).
    """
    path = to_path(target, what=what)
    fs = filesystem_of(path, what=what)
    uri = uri_of(path)
    if is_local(path):
        try:
            _check_local(str(path.path), uri, what=what, folder=folder)
        except OSError as err:
            raise MaaSInputError(f"The {what} {uri!r} cannot be checked: {err.strerror or err}.") from None
        return path
    try:
        is_dir = fs.isdir(path.path)
        is_file = folder and not is_dir and fs.isfile(path.path)
    except PermissionError as err:
        raise MaaSInputError(
            f"The {what} {uri!r} cannot be read: permission denied ({err}); check the credentials of "
            f"its connection {conn_id_of(path)!r}."
        ) from None
    except Exception as err:  # network or service: may pass on a retry
        raise MaaSError(f"The {what} {uri!r} could not be checked ({type(err).__name__}: {err}).") from None
    _refuse_kind(uri, what=what, folder=folder, is_dir=is_dir, is_file=is_file)
    return path


def _check_local(target: str, uri: str, *, what: str, folder: bool) -> None:
    _refuse_kind(uri, what=what, folder=folder, is_dir=os.path.isdir(target), is_file=os.path.isfile(target))
    existing = target if folder else os.path.dirname(target)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise MaaSInputError(
            f"The {what} {uri!r} cannot be created: {existing!r} is a file, not a folder; "
            "choose another path or remove that file."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MaaSInputError(
            f"The {what} {uri!r} cannot be written: no write permission on the folder {existing!r}; "
            "choose a writable path or change the folder's permissions."
        )


def _refuse_kind(uri: str, *, what: str, folder: bool, is_dir: bool, is_file: bool) -> None:
    if is_dir and not folder:
        raise MaaSInputError(
            f"The {what} {uri!r} is an existing directory; give a file path, e.g. {uri.rstrip('/') + '/results.jsonl'!r}."
        )
    if is_file and folder:
        raise MaaSInputError(f"The {what} {uri!r} is an existing file, not a folder; give a folder path.")


@contextlib.contextmanager
def open_source(source: Any, *, what: str = "source") -> Iterator[BinaryIO]:
    """Open a source for binary reading: a path/URI/``ObjectStoragePath`` or an open binary file.

    A file object passed in is rewound when seekable and is NOT closed.
    """
    if hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        if isinstance(source, io.TextIOBase):
            raise MaaSInputError(f"The {what} file object is opened in text mode; open it with 'rb'.")
        if source.seekable():
            source.seek(0)
        yield source
        return
    path = to_path(source, what=what)
    filesystem_of(path, what=what)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise MaaSInputError(f"The {what} {uri_of(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise MaaSInputError(f"The {what} {uri_of(path)!r} is a directory, not a file.") from None
    except PermissionError:
        raise MaaSInputError(f"The {what} {uri_of(path)!r} cannot be read: permission denied.") from None
    with handle:
        yield handle


@contextlib.contextmanager
def atomic_writer(destination: ObjectStoragePath, *, clean: bool = True) -> Iterator[BinaryIO]:
    """Write ``destination`` atomically; the file gets the permissions of the umask, like any other.

    Local files: a ``.<name>.<random>.part`` in the same directory, locked by this writer, flushed
    and fsynced, then renamed over the destination. Object stores: a ``.part`` sibling object,
    then moved over the destination (nothing appears under the final key before the data is
    complete). On any error the part is removed and the destination is left as it was.

    :param clean: First remove the stale parts of earlier writers of this destination that were
        killed mid-way (:func:`remove_stale_parts`).
    """
    if clean:
        remove_stale_parts(destination.parent, destination.name)
    if is_local(destination):
        target = str(destination.path)
        directory = os.path.dirname(target) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = _create_local_part(directory, os.path.basename(target))
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK_SIZE) as handle:
                yield handle  # type: ignore[misc]
                handle.flush()
                os.fsync(handle.fileno())
                os.replace(tmp, target)  # while locked: no cleaner can take it for stale
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    fs = destination.fs
    tmp_key = f"{str(destination.parent.path).rstrip('/')}/.{destination.name}.{uuid.uuid4().hex}.part"
    try:
        # fs.open, not path.open: Airflow's hook lineage would record the part, not the destination
        with fs.open(tmp_key, "wb") as handle:
            yield handle
        fs.mv(tmp_key, str(destination.path))
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp_key)
        raise


def _create_local_part(directory: str, name: str) -> tuple[int, str]:
    """Create and lock ``directory/.<name>.<random>.part`` (mode 0666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        if fcntl is None:  # pragma: no cover
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: no cleaner can lock it either, so none removes it
            return fd, tmp
        # A cleaner may have taken the new part for stale between open and lock: then start again.
        try:
            same = os.path.samestat(os.stat(tmp), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return fd, tmp
        os.close(fd)  # pragma: no cover - needs a cleaner in that instant


def remove_stale_parts(folder: ObjectStoragePath, name: str | None = None) -> int:
    """Remove the ``.part`` files in ``folder`` left by writers killed mid-way; return how many.

    Only the parts of destination ``name`` when given, else every part in ``folder``. Locally a
    part is stale when its writer no longer holds its lock (the lock goes with the process), so a
    live writer's part is never touched; on object stores when it is older than
    :data:`STALE_PART_SECONDS`. Never raises: a failed cleanup is logged and the write goes on.
    """
    try:
        if is_local(folder):
            removed = _remove_local_parts(str(folder.path), name)
        else:
            removed = _remove_remote_parts(folder.fs, str(folder.path), name)
    except Exception as err:  # cleanup must not fail the write
        log.warning("Could not remove stale .part files in %s: %s: %s", uri_of(folder), type(err).__name__, err)
        return 0
    if removed:
        log.info("Removed %d stale .part file(s) of interrupted writes in %s", removed, uri_of(folder))
    return removed


def _is_part_of(base: str, name: str | None) -> bool:
    match = _PART.fullmatch(base)
    return match is not None and (name is None or match["name"] == name)


def _remove_local_parts(directory: str, name: str | None) -> int:
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if _is_part_of(entry.name, name) and entry.is_file(follow_symlinks=False):
            removed += _remove_local_part(entry.path)
    return removed


def _remove_local_part(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # a live writer holds it
        elif time.time() - os.fstat(fd).st_mtime < STALE_PART_SECONDS:  # pragma: no cover
            return 0
        try:
            os.unlink(path)
        except FileNotFoundError:
            return 0  # moved into place meanwhile
        return 1
    finally:
        os.close(fd)


def _remove_remote_parts(fs: Any, folder: str, name: str | None) -> int:
    try:
        entries = fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    now = time.time()
    for entry in entries:
        key = str(entry).rstrip("/")
        if not _is_part_of(key.rsplit("/", 1)[-1], name):
            continue
        try:
            age = now - fs.modified(key).timestamp()
        except (NotImplementedError, FileNotFoundError):
            continue
        if age > STALE_PART_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(key)
                removed += 1
    return removed


def source_size(fileobj: IO[bytes]) -> int | None:
    """Size of a seekable file object from its current position, or None."""
    try:
        if not fileobj.seekable():
            return None
        pos = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(pos)
        return end - pos
    except (OSError, AttributeError, ValueError):
        return None


class EarlyWriteback:
    """Writes a local file's data to disk in a helper thread while more of it is being written.

    The final ``fsync`` of :func:`atomic_writer` then has little left to do, instead of writing a
    whole large download to disk after the transfer (benchmarks: 1 GB in ~1.5 s instead of
    2.4-3.6 s on a 2-core VM where ``curl -o`` took 1.4 s). Does nothing for file objects without
    a descriptor (object stores). Call :meth:`wrote` after each write, :meth:`finish` when done
    (raises a failed write-back), and :meth:`close` in a ``finally``.
    """

    def __init__(self, handle: IO[bytes], every: int = WRITEBACK_BYTES) -> None:
        self._handle = handle
        self._every = every
        self._since = 0
        self._pool: Any = None
        self._pending: Any = None
        try:
            self._fd: int | None = handle.fileno()
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            self._fd = None

    def wrote(self, size: int) -> None:
        """Count ``size`` bytes just written; start a write-back every ``every`` bytes (one at a time)."""
        if self._fd is None:
            return
        self._since += size
        if self._since < self._every or (self._pending is not None and not self._pending.done()):
            return
        if self._pending is not None:
            self._pending.result()  # a failed write-back fails the transfer
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maas-writeback")
        self._handle.flush()
        self._pending = self._pool.submit(getattr(os, "fdatasync", os.fsync), self._fd)
        self._since = 0

    def finish(self) -> None:
        """Wait for the last write-back and raise its error, if any."""
        pending = self._pending
        self.close()
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the helper thread and stop it (never raises)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = None
