"""One contract for every storage backend, run against real files and a real S3 API (moto over HTTP).

A backup is only as good as the guarantee that a half-written object is never taken for a
whole one, so the failure paths are tested as carefully as the happy ones.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat as stat_mod
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from dr_pipelines.core.errors import ConfigError, ObjectNotFoundError, StorageError
from dr_pipelines.core.storage import Storage, open_storage
from dr_pipelines.core.storage.base import TEMP_SUFFIX
from dr_pipelines.core.storage.local import DIRECT_MIN, LocalStorage
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines_tests.support.backup import leave_partial_upload, partial_uploads
from dr_pipelines_tests.support.faultproxy import fault_proxy
from dr_pipelines_tests.support.s3 import MotoServer, free_port, run_moto_server

MiB = 1024 * 1024
PART = 5 * MiB  # S3's minimum part size: a 12 MiB object takes three parts


class Boom(Exception):
    """Raised by a test's chunk iterator, standing in for a dump that dies midway."""


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keys(storage: Storage, prefix: str = "") -> list[str]:
    return [info.key for info in storage.list(prefix)]


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "repo")
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return S3Storage(bucket, "repo/prefix", part_size=PART, **server.storage_kwargs())


# -- contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 12 * MiB + 123], ids=["empty", "small", "multipart"])
def test_round_trip(storage: Storage, size: int) -> None:
    data = data_of(size)
    chunks = (data[i : i + MiB] for i in range(0, size, MiB))
    result = storage.put_stream("backups/t1/obj.bin", chunks)
    assert (result.key, result.size, result.sha256) == ("backups/t1/obj.bin", size, sha(data))
    assert storage.get_bytes("backups/t1/obj.bin") == data
    streamed = hashlib.sha256()
    for chunk in storage.iter_chunks("backups/t1/obj.bin", chunk_size=300_000):
        assert 0 < len(chunk) <= 300_000
        streamed.update(chunk)
    assert streamed.hexdigest() == sha(data)
    assert storage.stat("backups/t1/obj.bin").size == size


def test_odd_chunks_and_no_chunks(storage: Storage) -> None:
    chunks = [b"", b"a", b"", data_of(7, 1), data_of(PART + 3, 2), b"", data_of(13, 3)]
    result = storage.put_stream("odd", iter(chunks))
    assert result.sha256 == sha(b"".join(chunks))
    assert storage.get_bytes("odd") == b"".join(chunks)

    result = storage.put_stream("none", iter([]))
    assert (result.size, result.sha256) == (0, sha(b""))
    assert storage.get_bytes("none") == b""


def test_open_is_a_streaming_context_manager(storage: Storage) -> None:
    storage.put_bytes("r", b"0123456789")
    with storage.open("r") as reader:
        assert reader.read(3) == b"012"
        assert reader.read(4) == b"3456"
        assert reader.read() == b"789"
        assert reader.read(5) == b""
    assert reader.closed


def test_overwrite_replaces(storage: Storage) -> None:
    storage.put_bytes("k", b"old content, longer")
    storage.put_bytes("k", b"new")
    assert storage.get_bytes("k") == b"new"
    assert storage.stat("k").size == 3
    assert keys(storage) == ["k"]


def test_list_is_sorted_recursive_and_prefix_based(storage: Storage) -> None:
    names = ["b/c", "a/y0", "ab", "a/y/z", "a-b", "ac/d", "a/x"]
    for i, name in enumerate(names):
        storage.put_bytes(name, b"x" * i)
    before = datetime.now(UTC) - timedelta(minutes=5)

    assert keys(storage) == sorted(names)
    assert keys(storage, "a/") == ["a/x", "a/y/z", "a/y0"]
    assert keys(storage, "a") == ["a-b", "a/x", "a/y/z", "a/y0", "ab", "ac/d"]
    assert keys(storage, "a/y") == ["a/y/z", "a/y0"]
    assert keys(storage, "ab") == ["ab"]
    assert keys(storage, "b/") == ["b/c"]
    assert keys(storage, "zzz") == []
    for info in storage.list():
        assert info.size == names.index(info.key)
        assert info.modified.utcoffset() == timedelta(0)
        assert before < info.modified < datetime.now(UTC) + timedelta(minutes=5)


def test_stat_exists_delete(storage: Storage) -> None:
    storage.put_bytes("dir/sub/k", b"12345")
    info = storage.stat("dir/sub/k")
    assert (info.key, info.size) == ("dir/sub/k", 5)
    assert storage.exists("dir/sub/k")
    assert not storage.exists("dir/sub")  # a "directory" is not an object

    storage.delete("dir/sub/k")
    assert not storage.exists("dir/sub/k")
    storage.delete("dir/sub/k")  # idempotent
    storage.delete("never/was")
    assert keys(storage) == []


def test_missing_key_raises_object_not_found(storage: Storage) -> None:
    for action in (storage.open, storage.stat, storage.get_bytes):
        with pytest.raises(ObjectNotFoundError, match="missing/key"):
            action("missing/key")
    with pytest.raises(ObjectNotFoundError):
        list(storage.iter_chunks("missing/key"))


BAD_KEYS = ["", "/abs", "a//b", "a/./b", "../x", "a/..", ".", "a/", "a\\b", "a\x00b", f"x{TEMP_SUFFIX}"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_invalid_keys_are_refused(storage: Storage, key: str) -> None:
    actions = [
        lambda: storage.put_bytes(key, b"x"),
        lambda: storage.put_stream(key, iter([b"x"])),
        lambda: storage.open(key),
        lambda: storage.get_bytes(key),
        lambda: storage.stat(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
    ]
    for action in actions:
        with pytest.raises(StorageError) as info:
            action()
        assert not isinstance(info.value, ObjectNotFoundError)
        assert repr(key) in str(info.value)
        assert info.value.fix
    assert keys(storage) == []


@pytest.mark.parametrize("prefix", ["/abs", "../", "a/../b", "a\\"])
def test_invalid_list_prefix_is_refused(storage: Storage, prefix: str) -> None:
    with pytest.raises(StorageError, match="prefix"):
        list(storage.list(prefix))


@pytest.mark.parametrize("fail_after", [2 * MiB, 11 * MiB], ids=["in-first-part", "after-two-parts"])
def test_failing_chunk_iterator_leaves_nothing(storage: Storage, fail_after: int) -> None:
    storage.put_bytes("t/dump", b"previous good backup")
    block = data_of(MiB)

    def dump_that_dies() -> Iterator[bytes]:
        for _ in range(fail_after // MiB):
            yield block
        raise Boom("pg_dump exited with status 1")

    with pytest.raises(Boom, match="pg_dump exited"):
        storage.put_stream("t/dump", dump_that_dies())
    with pytest.raises(Boom):
        storage.put_stream("t/new", dump_that_dies())

    assert keys(storage) == ["t/dump"]
    assert storage.get_bytes("t/dump") == b"previous good backup"
    assert not storage.exists("t/new")
    assert partial_uploads(storage) == []


def test_cleanup_incomplete_is_scoped_to_its_prefix_and_to_dead_writers(storage: Storage) -> None:
    storage.put_bytes("sub/keep", b"complete")
    for key in ("sub/obj", "subway/obj", "other/obj"):
        leave_partial_upload(storage, key)
    assert partial_uploads(storage) == ["other/obj", "sub/obj", "subway/obj"]
    assert keys(storage) == ["sub/keep"]

    # Written to just now: their writers may still be running. (moto dates every upload's
    # start in 2010: on S3 it is the part just uploaded that shows the writer is alive.)
    assert storage.cleanup_incomplete("") == 0
    assert storage.cleanup_incomplete("", older_than=timedelta(days=36500)) == 0
    assert len(partial_uploads(storage)) == 3

    # A caller that knows a writer is dead (it holds the lock that writer held) removes its upload only.
    assert storage.cleanup_incomplete("sub/", dead=lambda key: key.startswith("sub/")) == 1
    assert partial_uploads(storage) == ["other/obj", "subway/obj"]

    time.sleep(0.01)
    assert storage.cleanup_incomplete("other/", older_than=timedelta(0)) == 1
    assert partial_uploads(storage) == ["subway/obj"]
    assert storage.get_bytes("sub/keep") == b"complete"


def test_put_stream_memory_does_not_grow_with_object_size(storage: Storage) -> None:
    block = data_of(MiB)
    count = 64

    def generate() -> Iterator[bytes]:
        for _ in range(count):
            yield block

    tracemalloc.start()
    try:
        result = storage.put_stream("big", generate())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB, f"put_stream peaked at {peak / MiB:.1f} MiB for a {count} MiB object"
    assert result.size == storage.stat("big").size == count * MiB
    assert result.sha256 == sha(block * count)


def test_check_passes(storage: Storage) -> None:
    storage.check()
    assert keys(storage) == []  # the check leaves nothing behind
    assert partial_uploads(storage) == []


def test_presign_follows_the_declared_capability(storage: Storage) -> None:
    """A backend that declares presign hands out a URL that really GETs the object; the others refuse clearly."""
    storage.put_bytes("exports/x/a.bin", b"presigned bytes")
    if not storage.properties.presign:
        with pytest.raises(ConfigError, match="presigned URLs need S3 storage") as exc:
            storage.presign_get("exports/x/a.bin", 60)
        assert exc.value.fix
        return
    import urllib.request

    url = storage.presign_get("exports/x/a.bin", 60)
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the moto server under test
        assert response.read() == b"presigned bytes"


def test_declared_properties() -> None:
    """Capabilities are declared per backend, not probed from attributes."""
    assert LocalStorage.properties.presign is False and LocalStorage.properties.server_side_encryption is False
    assert S3Storage.properties.presign is True and S3Storage.properties.server_side_encryption is True


# -- local backend -----------------------------------------------------------------------


def test_local_files_and_directories_are_private(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("t1/2024/dump", b"health data")
    assert stat_mod.S_IMODE((tmp_path / "repo/t1/2024/dump").stat().st_mode) == 0o600
    for directory in ("repo", "repo/t1", "repo/t1/2024"):
        assert stat_mod.S_IMODE((tmp_path / directory).stat().st_mode) == 0o700


@pytest.mark.parametrize("size", [DIRECT_MIN, 6 * MiB + 123], ids=["aligned", "unaligned-tail"])
def test_local_large_put_bytes_is_exact_private_and_replaces(tmp_path: Path, size: int) -> None:
    """Payloads from DIRECT_MIN up go through O_DIRECT with a zero-padded last block: the stored file must be
    the payload exactly (size, bytes, sha256), private, with no temp file left, and replace a longer object."""
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("wal/seg", data_of(size + 5000, seed=1))
    data = data_of(size, seed=2)
    result = storage.put_bytes("wal/seg", data)
    assert (result.size, result.sha256) == (size, sha(data))
    assert (tmp_path / "repo/wal/seg").stat().st_size == size
    assert storage.get_bytes("wal/seg") == data
    assert stat_mod.S_IMODE((tmp_path / "repo/wal/seg").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "repo/wal").iterdir()) == ["seg"]


def test_local_large_put_bytes_falls_back_where_o_direct_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses O_DIRECT (EINVAL, as tmpfs did before Linux 6.6) gets the buffered write."""
    real_open, refused = os.open, []

    def open_without_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_without_direct)
    storage = LocalStorage(tmp_path / "repo")
    data = data_of(3 * MiB + 1)
    assert storage.put_bytes("wal/seg", data).sha256 == sha(data)
    assert refused and storage.get_bytes("wal/seg") == data
    assert partial_uploads(storage) == []


def test_local_delete_prunes_empty_directories_but_not_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("a/b/c/one", b"1")
    storage.put_bytes("a/two", b"2")
    storage.delete("a/b/c/one")
    assert not (tmp_path / "repo/a/b").exists()
    storage.delete("a/two")
    assert list((tmp_path / "repo").iterdir()) == []


def test_local_cleanup_removes_old_temp_files_only(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("d/obj", b"x")
    old = tmp_path / "repo/d" / f".obj.old{TEMP_SUFFIX}"
    fresh = tmp_path / "repo/d" / f".obj.fresh{TEMP_SUFFIX}"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    assert keys(storage) == ["d/obj"]
    assert storage.cleanup_incomplete("") == 1
    assert not old.exists() and fresh.exists()


def test_local_check_explains_unusable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError) as info:
        LocalStorage(tmp_path / "file" / "repo").check()
    assert str(tmp_path / "file" / "repo") in info.value.problem
    assert "DRP_STORAGE_URL" in (info.value.fix or "")
    LocalStorage(tmp_path / "new" / "repo").check()  # creates a missing root
    assert (tmp_path / "new" / "repo").is_dir()


def test_local_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("a", b"file")
    with pytest.raises(StorageError, match="'a/b'") as info:
        storage.put_bytes("a/b", b"cannot: 'a' is a file")
    assert info.value.fix
    assert partial_uploads(storage) == []


# -- open_storage ------------------------------------------------------------------------


def test_open_storage_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_uri = open_storage((tmp_path / "a b").as_uri())
    assert isinstance(by_uri, LocalStorage) and by_uri.root == tmp_path / "a b"
    assert by_uri.url == (tmp_path / "a b").as_uri()
    assert open_storage(str(tmp_path / "x")).url == (tmp_path / "x").as_uri()
    monkeypatch.chdir(tmp_path)
    relative = open_storage("rel/dir")
    assert isinstance(relative, LocalStorage) and relative.root == tmp_path / "rel/dir"


def test_open_storage_s3_forms() -> None:
    root = open_storage("s3://my-bucket", s3_endpoint_url="http://127.0.0.1:1", s3_region="us-east-1")
    assert isinstance(root, S3Storage) and (root.bucket, root.prefix) == ("my-bucket", "")
    nested = open_storage(
        "s3://my-bucket/some/prefix/",
        s3_access_key="AKIAEXAMPLEKEY",
        s3_secret_key="very-secret-value",
        s3_region="eu-west-1",
    )
    assert isinstance(nested, S3Storage)
    assert (nested.bucket, nested.prefix) == ("my-bucket", "some/prefix/")
    assert nested.url == "s3://my-bucket/some/prefix"
    assert "very-secret-value" not in repr(nested) and "AKIAEXAMPLEKEY" not in repr(nested)


@pytest.mark.parametrize(
    "url, needle",
    [("ftp://x", "'ftp'"), ("", "empty"), ("s3://", "s3://bucket"), ("s3://Bad_Bucket", "bucket name"),
     ("s3://bucket/a/../b", "prefix"), ("file://host/path", "file:///")],
)
def test_open_storage_refuses_bad_urls(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        open_storage(url)
    assert info.value.fix


def test_open_storage_never_echoes_credentials_in_url() -> None:
    with pytest.raises(ConfigError) as info:
        open_storage("s3://AKIAKEY:topsecret@bucket/prefix")
    assert "topsecret" not in str(info.value) and "AKIAKEY" not in str(info.value)


# -- S3 backend --------------------------------------------------------------------------


def test_s3_uses_multipart_only_above_one_part(s3_server: MotoServer, s3_bucket: str) -> None:
    storage = S3Storage(s3_bucket, part_size=PART, **s3_server.storage_kwargs())
    storage.put_bytes("one-part", data_of(PART))
    storage.put_stream("three-parts", (data_of(MiB, i) for i in range(12)))
    client = s3_server.client()
    assert "-" not in client.head_object(Bucket=s3_bucket, Key="one-part")["ETag"]
    assert client.head_object(Bucket=s3_bucket, Key="three-parts")["ETag"].endswith('-3"')


def test_s3_cleanup_takes_the_newest_part_as_the_writers_heartbeat(s3_server: MotoServer, s3_bucket: str) -> None:
    storage = S3Storage(s3_bucket, "repo", **s3_server.storage_kwargs())
    storage.client.create_multipart_upload(Bucket=s3_bucket, Key="repo/a/never-got-a-part")
    leave_partial_upload(storage, "a/busy")  # a part uploaded just now
    started = {u["Key"]: u["Initiated"] for u in storage.client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]}
    assert all(t < datetime.now(UTC) - timedelta(hours=1) for t in started.values())  # moto: 2010

    assert storage.cleanup_incomplete("a/") == 1
    assert partial_uploads(storage) == ["a/busy"]


def test_s3_list_skips_foreign_keys(s3_server: MotoServer, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="repo/folder/", Body=b"")  # console "folder"
    client.put_object(Bucket=s3_bucket, Key="repo/ok", Body=b"1")
    client.put_object(Bucket=s3_bucket, Key="elsewhere", Body=b"2")
    storage = S3Storage(s3_bucket, "repo", **s3_server.storage_kwargs())
    assert keys(storage) == ["ok"]


def test_s3_missing_bucket_is_named(s3_server: MotoServer) -> None:
    storage = S3Storage("no-such-bucket-here", **s3_server.storage_kwargs())
    for action in (storage.check, lambda: storage.put_bytes("k", b"x"), lambda: list(storage.list())):
        with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist") as info:
            action()
        assert "create the bucket" in (info.value.fix or "")


def test_s3_unreachable_endpoint_fails_fast() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    storage = S3Storage(
        "bucket", endpoint_url=endpoint, access_key="a", secret_key="b", region="us-east-1",
        connect_timeout=1, max_attempts=2,
    )
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint") as info:
        storage.check()
    assert time.monotonic() - started < 5
    assert endpoint in str(info.value)
    assert info.value.fix


@pytest.fixture(scope="module")
def s3_auth_server() -> Iterator[tuple[MotoServer, dict[str, str], str]]:
    """A moto server that checks signatures, with one IAM user's key and a bucket.

    moto accepts anything until INITIAL_NO_AUTH_ACTION_COUNT requests have been served;
    the four free ones create the user, its key, its policy and the bucket.
    """
    with run_moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as server:
        iam = boto3.client(
            "iam", endpoint_url=server.endpoint_url, region_name=server.region,
            aws_access_key_id="setup", aws_secret_access_key="setup",
        )
        iam.create_user(UserName="drp")
        key = iam.create_access_key(UserName="drp")["AccessKey"]
        iam.put_user_policy(
            UserName="drp", PolicyName="all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
        bucket = server.create_bucket()
        yield server, key, bucket


@pytest.mark.parametrize("which", ["wrong-secret", "unknown-key"])
def test_s3_rejected_credentials_are_explained_without_secrets(
    s3_auth_server: tuple[MotoServer, dict[str, str], str], which: str
) -> None:
    server, key, bucket = s3_auth_server
    access_key = key["AccessKeyId"] if which == "wrong-secret" else "AKIAUNKNOWN000000000"
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    storage = S3Storage(
        bucket, endpoint_url=server.endpoint_url, region=server.region,
        access_key=access_key, secret_key=secret, max_attempts=1,
    )
    actions: list[Any] = [
        storage.check, lambda: storage.put_bytes("k", b"x"), lambda: list(storage.list())
    ]
    for action in actions:
        with pytest.raises(StorageError) as info:
            action()
        text = f"{info.value} {info.value!r} {storage!r} {storage.url}"
        assert "credentials" in str(info.value)
        assert "AWS_SECRET_ACCESS_KEY" in (info.value.fix or "")
        assert secret not in text and access_key not in text


def test_s3_correct_credentials_work_on_the_auth_server(
    s3_auth_server: tuple[MotoServer, dict[str, str], str],
) -> None:
    """Guards the test above: the auth server must refuse only because of the credentials."""
    server, key, bucket = s3_auth_server
    storage = S3Storage(
        bucket, endpoint_url=server.endpoint_url, region=server.region,
        access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"],
    )
    storage.put_bytes("k", b"x")
    assert storage.get_bytes("k") == b"x"


_PUT_THROUGH_PROXY = """
import os, subprocess, sys
from pyrage import x25519
from dr_pipelines.core.errors import StorageError
from dr_pipelines.core.storage.s3 import S3Storage
from dr_pipelines.core.stream import compress_encrypt

bucket, endpoint, producer = sys.argv[1:4]
storage = S3Storage(bucket, "p", endpoint_url=endpoint, region=os.environ["AWS_DEFAULT_REGION"],
                    access_key=os.environ["TEST_S3_KEY"], secret_key=os.environ["TEST_S3_SECRET"],
                    part_size=5 << 20, max_attempts=2)
if producer == "threaded":  # what a backup does: a worker thread compresses and encrypts a pipe
    source = subprocess.Popen(["head", "-c", str(24 << 20), "/dev/urandom"], stdout=subprocess.PIPE)
    chunks = compress_encrypt(source.stdout, [x25519.Identity.generate().to_public()])
else:
    chunks = (os.urandom(1 << 20) for _ in range(24))
try:
    storage.put_stream("backups/x/database.dump.zst.age", chunks)
except StorageError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.parametrize("producer", ["threaded", "generator"])
def test_s3_put_stream_through_a_dropping_link_exits_cleanly(s3_server: MotoServer, producer: str) -> None:
    """A connection reset mid multipart upload: a clear error, the upload aborted, and a clean exit.

    In a subprocess, because the failure showed only at interpreter exit: a compress-encrypt
    worker left blocked in pyrage was killed by finalization, and the process died of SIGABRT.
    """
    bucket = s3_server.create_bucket()
    env = {**os.environ, "AWS_DEFAULT_REGION": s3_server.region, "TEST_S3_KEY": s3_server.access_key,
           "TEST_S3_SECRET": s3_server.secret_key}
    with fault_proxy(s3_server.endpoint_url, drop_after=64 * 1024, lifetime=120) as proxy:
        result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _PUT_THROUGH_PROXY, bucket, proxy.url,
                                 producer], capture_output=True, text=True, timeout=120, env=env)
    assert proxy.drops > 0
    assert result.returncode == 3, f"exit {result.returncode}: {result.stderr[-3000:]}"
    assert "broke off while trying to upload 'backups/x/database.dump.zst.age'" in result.stderr
    assert "Fatal Python error" not in result.stderr
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
