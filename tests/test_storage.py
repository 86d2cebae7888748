"""storage.py: every path function on ``memory://`` (an object store registered in ObjectStoragePath)
and on local files: URIs keep the connection id, destinations are checked before anything is paid
for, writes are atomic with no leftovers, stale ``.part`` files of killed writers are removed."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_maas import storage
from airflow_provider_maas.exceptions import MaaSError, MaaSInputError
from airflow_provider_maas.storage import (
    atomic_writer,
    check_destination,
    check_within,
    conn_id_of,
    open_source,
    remove_stale_parts,
    to_path,
    uri_of,
)


@pytest.fixture
def memfs():
    """``memory://`` attached without a connection and as connection ``my_conn`` (one shared store)."""
    from airflow.sdk.io import attach
    from airflow.sdk.io.store import _STORE_CACHE

    fs = MemoryFileSystem()
    for alias in ("memory", "memory-my_conn"):  # a path built earlier may have cached one without fs
        _STORE_CACHE.pop(alias, None)
    attach("memory", fs=fs)
    attach("memory", conn_id="my_conn", fs=fs)
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def _keys(fs: MemoryFileSystem) -> list[str]:
    return sorted(fs.store)


# --- URIs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://my_conn@bucket/dir/key.jsonl",
        "s3://bucket/dir/key.jsonl",
        "gs://other_conn@b/k",
        "memory://my_conn@bucket/a/b.jsonl",
        "memory://bucket/a/b.jsonl",
    ],
)
def test_uri_of_round_trips_protocol_bucket_key_and_connection(uri: str):
    path = to_path(uri)
    assert uri_of(path) == uri
    again = to_path(uri_of(path))
    assert (again.protocol, again.bucket, again.key, conn_id_of(again)) == (
        path.protocol,
        path.bucket,
        path.key,
        conn_id_of(path),
    )


def test_uri_of_keeps_a_conn_id_given_as_argument_and_through_joins():
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath("s3://bucket/out", conn_id="my_conn")
    assert uri_of(path) == "s3://my_conn@bucket/out"
    assert uri_of(path / "shards" / "part-00000.jsonl") == "s3://my_conn@bucket/out/shards/part-00000.jsonl"
    assert uri_of((path / "x.jsonl").parent) == "s3://my_conn@bucket/out"
    assert conn_id_of(to_path(uri_of(path / "x"))) == "my_conn"


def test_local_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert uri_of(to_path("data/x.jsonl")) == f"file://{tmp_path}/data/x.jsonl"
    assert uri_of(to_path(f"file://{tmp_path}/x")) == f"file://{tmp_path}/x"
    assert uri_of(to_path(tmp_path / "y")) == f"file://{tmp_path}/y"


def test_file_localhost_is_the_root_not_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert str(to_path("file://localhost/data/x.jsonl").path) == "/data/x.jsonl"
    assert str(to_path("FILE://LOCALHOST/data/x.jsonl").path) == "/data/x.jsonl"
    with pytest.raises(MaaSInputError, match="names the host 'fileserver'"):
        to_path("file://fileserver/data/x.jsonl")


@pytest.mark.parametrize("bad", ["", "  ", "a/../b", "s3://bucket/a/../b"])
def test_to_path_refuses(bad: str):
    with pytest.raises(MaaSInputError):
        to_path(bad)


@pytest.mark.parametrize("uri", ["nosuchfs://bucket/x", "oci://b/k"])
def test_unknown_schemes_are_input_errors(uri: str):
    # refused by to_path (newer universal-pathlib) or when the filesystem is looked up (Airflow 3.0)
    with pytest.raises(MaaSInputError):
        check_destination(uri)


def test_check_within_compares_paths_and_the_prefix_connection():
    check_within(to_path("s3://c@bucket/out/x.jsonl"), "s3://bucket/out", what="destination")
    check_within(to_path("s3://c@bucket/out/x.jsonl"), "s3://c@bucket/out/", what="destination")
    for allowed in ["s3://bucket/other", "s3://d@bucket/out", "gs://bucket/out", "s3://bucket/ou"]:
        with pytest.raises(MaaSInputError, match="outside the allowed prefix"):
            check_within(to_path("s3://c@bucket/out/x.jsonl"), allowed, what="destination")


# --- check_destination -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "install"),
    [
        ("s3://my_conn@bucket/out/results.jsonl", "pip install 'apache-airflow-providers-amazon[s3fs]'"),
        ("gs://bucket/out/results.jsonl", "pip install apache-airflow-providers-google"),
        ("abfs://container/x.jsonl", "apache-airflow-providers-microsoft-azure"),
        ("az://container/x.jsonl", "registers the az:// filesystem"),
    ],
)
@pytest.mark.usefixtures("without_store_providers")
def test_check_destination_names_what_to_install(uri: str, install: str):
    with pytest.raises(MaaSInputError, match="no filesystem is registered") as err:
        check_destination(uri)
    assert install in str(err.value)
    assert uri in str(err.value)  # the connection id too


def test_check_destination_local(tmp_path: Path):
    path = check_destination(tmp_path / "new" / "deeper" / "results.jsonl")
    assert uri_of(path) == f"file://{tmp_path}/new/deeper/results.jsonl"
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(MaaSInputError, match="is an existing directory"):
        check_destination(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MaaSInputError, match="is a file, not a folder"):
        check_destination(tmp_path / "afile" / "results.jsonl")
    with pytest.raises(MaaSInputError, match="existing file, not a folder"):
        check_destination(tmp_path / "afile", what="destination prefix", folder=True)
    assert check_destination(tmp_path, folder=True) == to_path(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_destination_read_only_folder(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(MaaSInputError, match="no write permission"):
            check_destination(folder / "x" / "results.jsonl")
    finally:
        folder.chmod(0o700)


def test_check_destination_on_an_object_store(memfs: MemoryFileSystem):
    memfs.pipe("/bucket/out/existing/file.jsonl", b"{}\n")
    assert uri_of(check_destination("memory://my_conn@bucket/out/r.jsonl")) == "memory://my_conn@bucket/out/r.jsonl"
    with pytest.raises(MaaSInputError, match="is an existing directory"):
        check_destination("memory://bucket/out/existing")
    with pytest.raises(MaaSInputError, match="existing file, not a folder"):
        check_destination("memory://bucket/out/existing/file.jsonl", folder=True)
    assert _keys(memfs) == ["/bucket/out/existing/file.jsonl"]


def test_check_destination_maps_store_errors(memfs: MemoryFileSystem, monkeypatch: pytest.MonkeyPatch):
    def denied(path):
        raise PermissionError("AccessDenied")

    monkeypatch.setattr(memfs, "isdir", denied)
    with pytest.raises(MaaSInputError, match="permission denied"):
        check_destination("memory://bucket/r.jsonl")

    def unreachable(path):
        raise ConnectionError("endpoint unreachable")

    monkeypatch.setattr(memfs, "isdir", unreachable)
    with pytest.raises(MaaSError, match="could not be checked") as err:
        check_destination("memory://bucket/r.jsonl")
    assert not isinstance(err.value, MaaSInputError)  # may pass on a retry


@pytest.mark.usefixtures("without_store_providers")
def test_open_source_on_an_object_store(memfs: MemoryFileSystem):
    memfs.pipe("/bucket/in.jsonl", b'{"request": {}}\n')
    with open_source("memory://my_conn@bucket/in.jsonl") as handle:
        assert handle.read() == b'{"request": {}}\n'
    with pytest.raises(MaaSInputError, match="does not exist"), open_source("memory://bucket/missing.jsonl"):
        pass
    with pytest.raises(MaaSInputError, match="apache-airflow-providers-amazon"), open_source("s3://bucket/in.jsonl"):
        pass


# --- atomic writes ---------------------------------------------------------------------------------


def test_atomic_write_to_an_object_store_is_invisible_until_complete(memfs: MemoryFileSystem):
    dest = to_path("memory://my_conn@bucket/out/results.jsonl")
    with atomic_writer(dest) as out:
        out.write(b"first half\n")
        out.flush()
        assert "/bucket/out/results.jsonl" not in memfs.store
        out.write(b"second half\n")
        assert "/bucket/out/results.jsonl" not in memfs.store
    assert _keys(memfs) == ["/bucket/out/results.jsonl"]
    assert memfs.cat("/bucket/out/results.jsonl") == b"first half\nsecond half\n"


def test_atomic_write_to_an_object_store_leaves_nothing_after_a_failure(memfs: MemoryFileSystem):
    memfs.pipe("/bucket/out/results.jsonl", b"old\n")
    dest = to_path("memory://bucket/out/results.jsonl")
    with pytest.raises(RuntimeError), atomic_writer(dest) as out:
        out.write(b"new but broken\n")
        raise RuntimeError("transfer broke off")
    assert _keys(memfs) == ["/bucket/out/results.jsonl"]
    assert memfs.cat("/bucket/out/results.jsonl") == b"old\n"


def test_stale_object_store_parts_are_removed_by_the_next_write(memfs: MemoryFileSystem):
    old = "/bucket/out/.results.jsonl.maas-0123456789abcdef0123456789abcdef.part"
    fresh = "/bucket/out/.results.jsonl.maas-fedcba9876543210fedcba9876543210.part"
    other = "/bucket/out/.other.jsonl.maas-0123456789abcdef0123456789abcdef.part"
    for key in (old, fresh, other):
        memfs.pipe(key, b"partial")
    long_ago = datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(hours=1)
    for key in (old, other):
        memfs.store[key].modified = long_ago
    with atomic_writer(to_path("memory://bucket/out/results.jsonl")) as out:
        out.write(b"x\n")
    # the old part of this destination is gone; a recent one (a live writer's) and another file's stay
    assert _keys(memfs) == sorted(["/bucket/out/results.jsonl", fresh, other])
    assert remove_stale_parts(to_path("memory://bucket/out")) == 1  # a folder: every stale part
    assert _keys(memfs) == sorted(["/bucket/out/results.jsonl", fresh])


def test_local_atomic_write_honours_the_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        with atomic_writer(to_path(tmp_path / "results.jsonl")) as out:
            out.write(b"x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.jsonl").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_local_atomic_write_failure_keeps_the_old_file(tmp_path: Path):
    dest = tmp_path / "results.jsonl"
    dest.write_bytes(b"old\n")
    with pytest.raises(RuntimeError), atomic_writer(to_path(dest)) as out:
        out.write(b"new\n")
        raise RuntimeError("broke off")
    assert dest.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


KILLED_WRITER = """
import os, sys
from airflow_provider_maas.storage import atomic_writer, to_path
with atomic_writer(to_path(sys.argv[1])) as out:
    out.write(b"partial\\n")
    out.flush()
    os.kill(os.getpid(), 9)
"""


def test_parts_of_a_killed_writer_are_removed_by_the_next_write(tmp_path: Path):
    dest = tmp_path / "results.jsonl"
    for _ in range(2):  # the second writer removes the part of the first
        run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(dest)], check=False)
        assert run.returncode == -9
        parts = [p.name for p in tmp_path.iterdir()]
        assert len(parts) == 1 and parts[0].startswith(".results.jsonl.") and parts[0].endswith(".part")
    lookalike = tmp_path / ".results.jsonl.ab_cd123.part"  # not a name this package writes: a user's file
    lookalike.write_bytes(b"partial")
    other = tmp_path / ".other.jsonl.maas-0123456789ab.part"
    other.write_bytes(b"partial")
    with atomic_writer(to_path(dest)) as out:
        out.write(b"complete\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, lookalike.name, "results.jsonl"]
    assert dest.read_bytes() == b"complete\n"


def test_a_live_writers_part_is_never_removed(tmp_path: Path):
    dest = to_path(tmp_path / "results.jsonl")
    with atomic_writer(dest) as first:
        first.write(b"first\n")
        first.flush()
        with atomic_writer(dest) as second:  # cleans: must leave the first writer's part alone
            second.write(b"second\n")
        assert remove_stale_parts(to_path(tmp_path)) == 0
    assert (tmp_path / "results.jsonl").read_bytes() == b"first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_cleanup_errors_never_fail_a_write(memfs: MemoryFileSystem, monkeypatch: pytest.MonkeyPatch):
    def broken(*args, **kwargs):
        raise OSError("listing failed")

    monkeypatch.setattr(memfs, "ls", broken)
    with atomic_writer(to_path("memory://bucket/r.jsonl")) as out:
        out.write(b"x\n")
    assert memfs.cat("/bucket/r.jsonl") == b"x\n"


def test_stale_part_age_is_minutes():
    assert 60 <= storage.STALE_PART_SECONDS <= 15 * 60


# --- URIs with a connection id round-trip through the operators ------------------------------------


def test_split_download_and_merge_hand_on_uris_that_keep_the_connection(memfs, emulator, tmp_path):
    from airflow.sdk.io.store import _STORE_CACHE

    from airflow_provider_maas.hooks.maas import MaaSHook
    from airflow_provider_maas.operators.maas import (
        MaaSDownloadResultsOperator,
        MaaSMergeResultsOperator,
        MaaSSplitRequestsOperator,
    )
    from tests.helpers import make_context, write_requests

    _STORE_CACHE.pop("memory")  # only memory:// WITH connection my_conn works: a dropped conn id fails
    memfs.pipe("/bucket/in/requests.jsonl", write_requests(tmp_path / "r.jsonl", 150).read_bytes())
    requests = "memory://my_conn@bucket/in/requests.jsonl"
    shards = MaaSSplitRequestsOperator(
        task_id="split", source=requests, destination_prefix="memory://my_conn@bucket/work/shards"
    ).execute(make_context())
    assert shards == [f"memory://my_conn@bucket/work/shards/part-0000{i}.jsonl" for i in range(2)]
    hook = MaaSHook()
    results = []
    for i, shard in enumerate(shards):
        job = hook.create_batch_job(hook.upload_file(shard, f"s{i}.jsonl")["name"], f"s{i}")
        hook.wait_for_batch_job(job["name"], poll_interval=0.05, timeout=30)
        context = make_context(map_index=i)
        uri = MaaSDownloadResultsOperator(
            task_id="download", job_name=job["name"], destination=f"memory://my_conn@bucket/work/results-{i}.jsonl"
        ).execute(context)
        assert uri == f"memory://my_conn@bucket/work/results-{i}.jsonl"
        assert context["ti"].xcom["summary"]["failed_uri"] is None  # none failed: no failed file
        results.append(uri)
    context = make_context()
    merged = MaaSMergeResultsOperator(
        task_id="merge", results=results, source=requests, destination="memory://my_conn@bucket/out/results.jsonl"
    ).execute(context)
    assert merged == "memory://my_conn@bucket/out/results.jsonl"
    summary = context["ti"].xcom["summary"]
    assert (summary["requests"], summary["succeeded"]) == (150, 150)
    assert summary["failed_uri"] is None and "/bucket/out/results.failed.jsonl" not in memfs.store
    assert not [key for key in memfs.store if key.endswith(".part")]


# Issue 20: credentials, signatures, exact paths, exact part names --------------------------------


@pytest.mark.parametrize(
    "uri", ["s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x.jsonl", "gs://user:token@bucket/x", "https://user:pw@host/x.jsonl"]
)
def test_credentials_in_a_uri_are_refused_and_never_repeated(uri):
    with pytest.raises(MaaSInputError) as info:
        to_path(uri, what="source")
    message = str(info.value)
    assert "credentials" in message and "wJalrXUtnFEMI" not in message and "token" not in message
    assert "pw" not in message.replace("https://...", "") and "AKIAEXAMPLE" not in message
    if not uri.startswith("https"):
        assert "connection" in message and "@bucket/key" in message


def test_an_object_storage_path_with_credentials_is_refused_too():
    from airflow.sdk import ObjectStoragePath

    with pytest.raises(MaaSInputError, match="credentials"):
        to_path(ObjectStoragePath("s3://KEY:SECRET@bucket/x"), what="destination")


def test_a_presigned_url_round_trips_without_a_doubled_scheme_or_its_signature():
    url = "https://bucket.s3.amazonaws.com/in/x.jsonl?X-Amz-Credential=AKIA&X-Amz-Signature=abc123"
    path = to_path(url)
    assert str(path.path) == url  # the path itself keeps it: reading works
    shown = uri_of(path)
    assert shown == "https://bucket.s3.amazonaws.com/in/x.jsonl?..."
    assert "Signature" not in shown and "https://https://" not in shown
    assert uri_of(to_path("http://example.com/a.jsonl")) == "http://example.com/a.jsonl"


def test_a_connection_id_is_still_kept():
    assert uri_of(to_path("s3://my_conn@bucket/key.jsonl")) == "s3://my_conn@bucket/key.jsonl"


def test_paths_are_kept_exactly(tmp_path):
    spaced = tmp_path / "res.jsonl "
    with atomic_writer(to_path(str(spaced))) as out:
        out.write(b"x\n")
    assert spaced.read_bytes() == b"x\n" and not (tmp_path / "res.jsonl").exists()
    assert str(to_path(str(spaced)).path).endswith("res.jsonl ")


@pytest.mark.parametrize(
    "bad", ["new\nline.jsonl", "tab\there.jsonl", "cr\rx.jsonl", "a\u2028b.jsonl", "x\u202e.jsonl"]
)
def test_a_path_with_a_control_character_is_refused(tmp_path, bad):
    with pytest.raises(MaaSInputError, match="control character") as info:
        to_path(str(tmp_path / bad), what="destination")
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_cleanup_keeps_files_that_only_look_like_parts(tmp_path):
    dest = tmp_path / "res.jsonl"
    users = [".res.jsonl.backup_20260101.part", ".res.jsonl.mycopy01.part", ".res.jsonl.ABCDEF012345.part"]
    for name in users:
        (tmp_path / name).write_bytes(b"mine")
    ours = [".res.jsonl.maas-0123456789ab.part", f".res.jsonl.maas-{'f' * 32}.part"]  # local and object-store names
    for name in ours:
        (tmp_path / name).write_bytes(b"stale")
    with atomic_writer(to_path(dest)) as out:
        out.write(b"ok\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "res.jsonl"])


def test_a_filesystem_error_quoted_in_a_message_carries_no_secret():
    from airflow_provider_maas.storage.paths import scrub

    text = scrub("HTTP 403 for https://b.example/x.jsonl?X-Amz-Signature=abc&t=1 via s3://AK:SEC@bucket/x\n[FAKE]")
    assert "Signature" not in text and "SEC" not in text and "\n" not in text
    assert "https://b.example/x.jsonl?..." in text and "s3://...@bucket/x" in text


def test_a_missing_presigned_source_is_named_without_its_signature():
    from tests.service_stub import stub_service

    with stub_service() as service:  # answers 404 to anything it does not know
        url = f"{service.base_url}/in/x.jsonl?X-Amz-Signature=secret-signature"
        with pytest.raises(MaaSInputError) as info, storage.open_source(url):
            pass
    assert "secret-signature" not in str(info.value) and "/in/x.jsonl?..." in str(info.value)
