"""Where bytes come from and go to: local paths, URIs and ``ObjectStoragePath``, checked before anything is paid for.

Tasks of one DAG may run on different machines, so everything handed between tasks is a URI
(``file:///...``, ``s3://conn@bucket/key``) or an ``ObjectStoragePath``; a URI keeps its connection id
(:func:`uri_of`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from airflow.sdk import ObjectStoragePath

from airflow_provider_maas.exceptions import MaaSError, MaaSInputError
from airflow_provider_maas.redaction import UNSAFE, neutralise

try:
    from airflow.sdk.io.fs import has_fs
except ImportError:  # Airflow 3.0
    from airflow.io import has_fs  # type: ignore[no-redef,attr-defined,unused-ignore]

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

#: Chunk size for streamed copies (reads, writes, HTTP bodies).
CHUNK_SIZE = 1024 * 1024
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
_HTTP = frozenset({"http", "https"})


def to_path(target: Any, *, what: str = "path") -> ObjectStoragePath:
    """Turn a local path, URI or ``ObjectStoragePath`` into an ``ObjectStoragePath``.

    Relative local paths are made absolute; ``..`` segments are refused (path traversal);
    ``file://localhost/x`` is ``/x``. A connection id in the URI (``s3://my_conn@bucket/key``) is kept;
    credentials there (``KEY:SECRET@``) are refused. Nothing is stripped: a path with a control
    character is refused (:func:`_check_text`).
    """
    if isinstance(target, ObjectStoragePath):
        path = target
        _check_text(str(path.path), what)
        if ":" in (conn_id_of(path) or "") or "%" in (conn_id_of(path) or ""):
            raise _credentials_error(what, path.protocol or "?")
    elif isinstance(target, (str, os.PathLike)):
        text = os.fspath(target)
        if not isinstance(text, str) or not text.strip():
            raise MaaSInputError(f"The {what} is empty: give a local path, a URI or an ObjectStoragePath.")
        _check_text(text, what)
        if text[0].isspace():  # a URI would lose it (ObjectStoragePath strips it), "/abs" would become relative
            raise MaaSInputError(
                f"The {what} {neutralise(shown_uri(text.lstrip()), 300)!r} starts with a space: paths are used "
                "exactly as given, and this one would be read as another path; remove the space."
            )
        if ".." in text.replace("\\", "/").split("/"):
            raise MaaSInputError(f"The {what} {shown_uri(text)!r} contains a '..' segment; give a normalised path.")
        if "://" in text:
            _check_userinfo(text, what)
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
            raise MaaSInputError(f"The {what} {shown_uri(text)!r} is not a usable path or URI: {scrub(err)}.") from None
    else:
        raise MaaSInputError(
            f"The {what} must be a local path, a URI or an ObjectStoragePath, got {type(target).__name__}."
        )
    if ".." in str(path.path).split("/"):
        raise MaaSInputError(f"The {what} {uri_of(path)!r} contains a '..' segment; give a normalised path.")
    return path


def _check_text(text: str, what: str) -> None:
    """Paths are used exactly as given: one with a control character (or a line separator, a
    bidirectional or zero-width control) is refused, never silently changed."""
    bad = UNSAFE.search(text)
    if bad is not None:
        raise MaaSInputError(
            f"The {what} {neutralise(shown_uri(text), 300)!r} contains the control character "
            f"{neutralise(bad.group())} at position {bad.start()}; paths are used exactly as given: "
            "remove it (a newline or tab pasted with the path?)."
        )


def _secret_userinfo(uri: str) -> str | None:
    """The user part of ``uri`` (between ``://`` and its ``@``) when it holds a secret, else None.

    A secret is a user part with ``:`` (``KEY:SECRET``) or ``%`` (``KEY%3ASECRET``: no connection id
    holds one), or any user part of an http(s) URL. A secret may hold ``/``, ``?`` or ``#`` (AWS
    secret keys often have a ``/``): ``s3://KEY:abc/def@bucket/key`` has its ``@`` after a ``/``, so
    an authority ``KEY:abc`` whose ``:`` is not followed by a port number, with an ``@`` further on,
    is a user part too (the text up to its last ``@``: showing too little is safe).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    authority = re.split(r"[/?#\\]", rest, maxsplit=1)[0]
    if "@" in authority:
        userinfo = authority.rsplit("@", 1)[0]
        return userinfo if ":" in userinfo or "%" in userinfo or scheme.lower() in _HTTP else None
    if "@" in rest and ":" in authority and not re.fullmatch(r"[^:]*:[0-9]*", authority):
        return rest.rsplit("@", 1)[0]
    return None


def _check_userinfo(text: str, what: str) -> None:
    """Refuse a URI whose user part holds a secret (:func:`_secret_userinfo`). The message never repeats it."""
    if _secret_userinfo(text) is not None:
        raise _credentials_error(what, text.partition("://")[0])


def _credentials_error(what: str, scheme: str) -> MaaSInputError:
    if scheme.lower() in _HTTP:
        fix = "give the URL without them"
    else:
        fix = f"put them in an Airflow connection and name its id there instead: '{scheme}://my_conn_id@bucket/key'"
    return MaaSInputError(
        f"The {what} ({scheme}://...) holds credentials before its '@': they would be written to XCom, logs "
        f"and errors; {fix}."
    )


def shown_uri(uri: str) -> str:
    """``uri`` as messages may show it: an http(s) URL without its user part, query string and
    fragment (signatures, tokens), marked ``?...``; a ``scheme://user:secret@`` user part as
    ``scheme://...@``. Anything else as it is."""
    if "://" not in uri:
        return uri
    userinfo = _secret_userinfo(uri)
    if userinfo is not None:
        scheme, _, rest = uri.partition("://")
        uri = f"{scheme}://...@{rest[len(userinfo) + 1 :]}"
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc and (":" in netloc.rsplit("@", 1)[0] or parts.scheme.lower() in _HTTP):
        netloc = "...@" + netloc.rsplit("@", 1)[1]
    if parts.scheme.lower() in _HTTP:
        hidden = "?..." if parts.query or parts.fragment else ""
        return f"{parts.scheme}://{netloc}{parts.path}{hidden}"
    return uri if netloc == parts.netloc else uri.replace(parts.netloc, netloc, 1)


_URL_SECRETS = re.compile(r"(\w+://)[^/\s'\"@]*:[^/\s'\"@]*@|(https?://[^\s'\"?#]*)[?#][^\s'\"]*", re.IGNORECASE)


def scrub(err: BaseException | str) -> str:
    """The text of a filesystem's error, neutralised, without what a URL in it may carry: a user
    part with a secret (``s3://KEY:SECRET@``) and an http(s) query string (a signature)."""
    text = _URL_SECRETS.sub(lambda m: f"{m[1]}...@" if m[1] else f"{m[2]}?...", str(err))
    return neutralise(text, 500)


def conn_id_of(path: ObjectStoragePath) -> str | None:
    """The Airflow connection of ``path``: ``.conn_id`` on task SDK >= 1.1, a storage option on 1.0."""
    conn_id = getattr(path, "conn_id", None)
    if conn_id is None:
        conn_id = (getattr(path, "storage_options", None) or {}).get("conn_id")
    return conn_id or None


def uri_of(path: ObjectStoragePath) -> str:
    """A URI for ``path`` that keeps its connection: ``file:///data/r.jsonl``, ``s3://my_conn@bucket/key``.

    ``to_path(uri_of(p))`` has the protocol, bucket, key and connection id of ``p``. Every URI the
    provider writes to XCom, logs, summaries or state comes from here. An http(s) URL is itself,
    without its query string and fragment (signatures, tokens: :func:`shown_uri`), never
    ``https://https://...``.
    """
    protocol = path.protocol or "file"
    if protocol in _LOCAL:
        return "file://" + str(path.path)
    if protocol in _HTTP:  # its path is the whole URL
        return shown_uri(str(path.path))
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
        f"({type(err).__name__}: {scrub(err)}); check the connection (the id goes before '@' in the URI)."
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
            f"The {what} {uri!r} cannot be read: permission denied ({scrub(err)}); check the credentials of "
            f"its connection {conn_id_of(path)!r}."
        ) from None
    except Exception as err:  # network or service: may pass on a retry
        raise MaaSError(f"The {what} {uri!r} could not be checked ({type(err).__name__}: {scrub(err)}).") from None
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


def untracked(handle: IO[bytes]) -> IO[bytes]:
    """The file under Airflow's lineage wrapper of an opened ``ObjectStoragePath``, for many small reads.

    The wrapper records the file as an input asset on every ``read`` call (and renders the path each
    time): ~8 us a call, 8 s of a merge of 1,000,000 answers read one by one. Call it once the file
    was read through the wrapper (its lineage recorded); any other file object is returned as is.
    """
    if type(handle).__name__ == "_TrackingFileWrapper":
        inner = vars(handle).get("_obj")
        if inner is not None and callable(getattr(inner, "read", None)) and callable(getattr(inner, "seek", None)):
            return inner
    return handle


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
