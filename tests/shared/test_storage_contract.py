"""One contract for every object store: the local folder and S3 (a real SeaweedFS server) behave alike."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from shared.storage import InvalidKey, LocalStore, ObjectNotFound, ObjectStore, StorageError
from shared.storage.local import TEMP_PREFIX
from shared.storage.s3 import S3Store
from tests.support.s3_server import S3Server

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3", "s3-prefixed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects")
        return
    s3_store: S3Store = request.getfixturevalue("s3_store")
    if request.param == "s3-prefixed":
        server: S3Server = request.getfixturevalue("s3_server")
        yield server.store(bucket=s3_store.bucket, prefix="farm/tasks")
    else:
        yield s3_store


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(store: ObjectStore) -> list[str]:
    """Half-written things a failed or aborted write could leave behind."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return []
        return [str(p) for p in store.root.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert isinstance(store, S3Store)
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


def test_check_passes(store: ObjectStore) -> None:
    store.check()


def test_put_and_get_bytes(store: ObjectStore) -> None:
    store.put_bytes("t1/inputs/a.jpg", b"hello world")
    assert store.get_bytes("t1/inputs/a.jpg") == b"hello world"
    assert store.size("t1/inputs/a.jpg") == 11
    assert store.exists("t1/inputs/a.jpg")
    assert not store.exists("t1/inputs/b.jpg")


def test_empty_object(store: ObjectStore) -> None:
    store.put_bytes("t1/empty", b"")
    assert store.size("t1/empty") == 0
    assert store.get_bytes("t1/empty") == b""
    assert b"".join(store.iter_range("t1/empty", 0, 10)) == b""


def test_put_file_and_get_to_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(10 * MiB + 123)  # above the multipart threshold of S3 transfers
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    store.put_file("t1/results/all.zip", source)
    assert store.size("t1/results/all.zip") == len(data)

    target = tmp_path / "out" / "deeper" / "all.zip"
    store.get_to_file("t1/results/all.zip", target)
    assert sha256(target.read_bytes()) == sha256(data)
    assert sorted(p.name for p in target.parent.iterdir()) == ["all.zip"]  # no temporary file left


def test_put_stream(store: ObjectStore) -> None:
    data = os.urandom(3 * MiB + 5)
    assert store.put_stream("t1/stream", io.BytesIO(data)) == len(data)
    assert store.get_bytes("t1/stream") == data


def test_writer_streams_a_large_object(store: ObjectStore, tmp_path: Path) -> None:
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with store.writer("t1/big.bin") as writer:
        for i in range(20):
            piece = block[i:] + block[:i]  # every MiB different
            writer.write(piece)
            digest.update(piece)
    assert store.size("t1/big.bin") == 20 * MiB
    read = hashlib.sha256()
    for chunk in store.iter_range("t1/big.bin"):
        assert len(chunk) <= MiB
        read.update(chunk)
    assert read.hexdigest() == digest.hexdigest()
    store.get_to_file("t1/big.bin", tmp_path / "big.bin")
    assert sha256((tmp_path / "big.bin").read_bytes()) == digest.hexdigest()
    assert leftovers(store) == []


def test_commit_returns_the_size_and_writes_in_odd_sizes(store: ObjectStore) -> None:
    writer = store.writer("t1/odd")
    parts = [os.urandom(n) for n in (1, 7 * MiB, 3 * MiB + 17, 0, 5)]
    for part in parts:
        assert writer.write(part) == len(part)
    assert not store.exists("t1/odd")  # invisible until committed
    assert writer.commit() == sum(map(len, parts))
    assert store.get_bytes("t1/odd") == b"".join(parts)


@pytest.mark.parametrize("size", [100, 9 * MiB])
def test_abort_leaves_nothing(store: ObjectStore, size: int) -> None:
    writer = store.writer("t1/aborted")
    writer.write(os.urandom(size))
    writer.abort()
    assert not store.exists("t1/aborted")
    assert store.list("t1/") == []
    assert leftovers(store) == []


def test_failed_with_block_aborts(store: ObjectStore) -> None:
    with pytest.raises(RuntimeError), store.writer("t1/failed") as writer:
        writer.write(b"x" * 1000)
        raise RuntimeError("upload interrupted")
    assert not store.exists("t1/failed")
    assert leftovers(store) == []


def test_abort_keeps_the_previous_version(store: ObjectStore) -> None:
    store.put_bytes("t1/a", b"first")
    writer = store.writer("t1/a")
    writer.write(b"second version")
    writer.abort()
    assert store.get_bytes("t1/a") == b"first"


def test_replace_same_key(store: ObjectStore) -> None:
    store.put_bytes("t1/a", b"first version")
    store.put_bytes("t1/a", b"second")
    assert store.get_bytes("t1/a") == b"second"
    assert store.size("t1/a") == 6
    assert store.list("t1/") == [("t1/a", 6)]


def test_iter_range(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    store.put_bytes("t1/range", data)
    last = len(data) - 1

    def read(start: int, end: int | None) -> bytes:
        return b"".join(store.iter_range("t1/range", start, end, chunk_size=1000))

    assert read(0, 0) == data[:1]
    assert read(100, 2099) == data[100:2100]
    assert read(last, last) == data[-1:]
    assert read(5000, None) == data[5000:]
    assert read(0, None) == data
    assert read(10000, 99999) == data[10000:]  # an end past the object stops at its end
    assert read(len(data), None) == b""  # a start past the end reads nothing
    assert [len(c) for c in store.iter_range("t1/range", 0, 2499, chunk_size=1000)] == [1000, 1000, 500]
    with pytest.raises(ValueError):
        store.iter_range("t1/range", 10, 5)


def test_missing_key_is_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("t1/present", b"x")
    with pytest.raises(ObjectNotFound, match="t1/missing"):
        store.size("t1/missing")
    with pytest.raises(ObjectNotFound):
        store.iter_range("t1/missing")  # at the call, before anything is streamed
    with pytest.raises(ObjectNotFound):
        store.iter_range("t1/missing", 5, 10)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("t1/missing")
    with pytest.raises(ObjectNotFound):
        store.get_to_file("t1/missing", tmp_path / "out" / "missing")
    with pytest.raises(FileNotFoundError):  # ObjectNotFound is one
        store.size("t1/present/below")
    assert not (tmp_path / "out" / "missing").exists()


def test_list_by_prefix(store: ObjectStore) -> None:
    store.put_bytes("a/x", b"1")
    store.put_bytes("a/y/z", b"22")
    store.put_bytes("ab/x", b"333")
    store.put_bytes("b/a/x", b"4444")
    assert store.list("a/") == [("a/x", 1), ("a/y/z", 2)]
    assert store.list("a/y/") == [("a/y/z", 2)]
    assert store.list("ab/") == [("ab/x", 3)]
    assert store.list("c/") == []
    assert store.list("a/x/") == []


def test_list_many_is_sorted_and_complete(store: ObjectStore) -> None:
    keys = [f"t1/inputs/img_{i:04d}.jpg" for i in range(120)]
    with ThreadPoolExecutor(16) as pool:  # one store shared by threads, as the API does
        list(pool.map(lambda k: store.put_bytes(k, k.encode()), reversed(keys)))
    assert store.list("t1/") == [(k, len(k)) for k in keys]
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(store.get_bytes, keys)) == [k.encode() for k in keys]


def test_delete(store: ObjectStore) -> None:
    store.put_bytes("t1/a", b"1")
    store.put_bytes("t1/b", b"2")
    store.delete("t1/a")
    assert not store.exists("t1/a")
    assert store.list("t1/") == [("t1/b", 1)]
    store.delete("t1/a")  # missing: not an error
    store.delete("nothing/here")


def test_delete_prefix(store: ObjectStore) -> None:
    for key in ("t1/a", "t1/inputs/b", "t1/results/c/d", "t10/a", "t2/a"):
        store.put_bytes(key, b"data")
    assert store.delete_prefix("t1/") == 3
    assert store.list("t1/") == []
    assert store.list("t10/") == [("t10/a", 4)]
    assert store.list("t2/") == [("t2/a", 4)]
    assert store.delete_prefix("t1/") == 0
    assert store.delete_prefix("never/") == 0


@pytest.mark.parametrize(
    "key", ["../x", "/x", "a//b", "a/./b", "a/../b", "..", ".", "", "a/", "a\x00b", "a\\b"]
)
def test_invalid_keys_are_refused(store: ObjectStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        store.writer(key)
    with pytest.raises(InvalidKey):
        store.size(key)
    with pytest.raises(InvalidKey):
        store.iter_range(key)
    with pytest.raises(InvalidKey):
        store.delete(key)
    with pytest.raises(InvalidKey):
        store.get_to_file(key, tmp_path / "x")
    with pytest.raises(InvalidKey):
        store.presigned_url(key)


@pytest.mark.parametrize("prefix", ["a", "../", "/", "a//", "./", ""])
def test_invalid_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        store.list(prefix)
    with pytest.raises(InvalidKey):
        store.delete_prefix(prefix)


def test_unicode_names_with_spaces(store: ObjectStore, tmp_path: Path) -> None:
    keys = ["tâche 1/ïmage été.JPG", "tâche 1/写真 (2).jpg", "tâche 1/sub dir/a+b&c=d%20.tif"]
    for i, key in enumerate(keys):
        store.put_bytes(key, f"content {i}".encode())
    assert store.list("tâche 1/") == sorted((k, len(f"content {i}")) for i, k in enumerate(keys))
    assert store.get_bytes(keys[1]) == b"content 1"
    assert b"".join(store.iter_range(keys[0], 8, 8)) == b"0"
    store.get_to_file(keys[2], tmp_path / "é x.tif")
    assert (tmp_path / "é x.tif").read_bytes() == b"content 2"
    assert store.delete_prefix("tâche 1/sub dir/") == 1
    store.delete(keys[0])
    assert store.list("tâche 1/") == [(keys[1], 9)]


# --- local only ---------------------------------------------------------------------------------


def test_local_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = LocalStore(tmp_path / "objects")
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "link").symlink_to(outside)
    with pytest.raises(InvalidKey):
        store.get_bytes("link/secret")
    with pytest.raises(InvalidKey):
        store.put_bytes("link/new", b"x")
    assert not (outside / "new").exists()


def test_local_has_no_presigned_url(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a", b"x")
    assert store.presigned_url("a") is None


def test_local_check_fails_on_an_unusable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="not writable"):
        LocalStore(tmp_path / "file" / "objects").check()


# --- S3 only ------------------------------------------------------------------------------------


def test_s3_presigned_url_serves_ranges(s3_store: S3Store) -> None:
    data = os.urandom(4096)
    s3_store.put_bytes("t1/all.zip", data)
    url = s3_store.presigned_url("t1/all.zip", expires=60, filename="résultat final.zip")
    assert url is not None and url.startswith(s3_store.endpoint_url or "")
    partial = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert partial.status_code == 206
    assert partial.content == data[100:200]
    assert partial.headers["Content-Range"] == "bytes 100-199/4096"
    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''r%C3%A9sultat%20final.zip" in whole.headers["Content-Disposition"]
    # the signature covers the key: another key with the same query string is refused
    assert requests.get(url.replace("all.zip", "other.zip"), timeout=10).status_code == 403


def test_s3_prefix_is_applied_to_keys(s3_server: S3Server) -> None:
    store = s3_server.store(prefix="/farm/tasks/")
    try:
        store.put_bytes("u1/a", b"x")
        raw = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
        assert [o["Key"] for o in raw] == ["farm/tasks/u1/a"]
        assert store.list("u1/") == [("u1/a", 1)]
    finally:
        s3_server.delete_bucket(store.bucket)


def test_s3_writer_uploads_parts_as_data_arrives(s3_store: S3Store) -> None:
    writer = s3_store.writer("t1/streamed")
    writer.write(os.urandom(9 * MiB))
    # a multipart upload is open before the commit: the first 8 MiB part is already on the server
    assert leftovers(s3_store) == ["t1/streamed"]
    assert not s3_store.exists("t1/streamed")
    writer.write(b"tail")
    assert writer.commit() == 9 * MiB + 4
    assert leftovers(s3_store) == []
    assert s3_store.size("t1/streamed") == 9 * MiB + 4


def test_s3_wrong_secret_is_a_storage_error(s3_server: S3Server, s3_store: S3Store) -> None:
    wrong = S3Store(
        bucket=s3_store.bucket,
        endpoint_url=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key="not-the-secret-at-all",
        max_attempts=1,
    )
    with pytest.raises(StorageError) as caught:
        wrong.check()
    message = str(caught.value)
    assert s3_store.bucket in message and s3_server.endpoint in message
    assert "not-the-secret-at-all" not in message
    with pytest.raises(StorageError):
        wrong.put_bytes("t1/a", b"x")
    with pytest.raises(StorageError):
        wrong.list("t1/")


def test_s3_unreachable_endpoint_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    store = S3Store(
        bucket="nowhere",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        connect_timeout=1,
        max_attempts=1,
    )
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}") as caught:
        store.check()
    assert time.monotonic() - started < 5
    assert "nowhere" in str(caught.value)
    with pytest.raises(StorageError):
        store.size("t1/a")  # not ObjectNotFound: the store is down, the object may well exist


def test_s3_missing_bucket(s3_server: S3Server) -> None:
    name = s3_server.bucket_name()
    with pytest.raises(StorageError, match=name):
        s3_server.store(bucket=name).check()
    created = s3_server.store(bucket=name, create_bucket=True)
    try:
        created.check()
        created.check()  # already there: fine
        created.put_bytes("t1/a", b"x")
        assert s3_server.store(bucket=name).get_bytes("t1/a") == b"x"
    finally:
        s3_server.delete_bucket(name)


def test_s3_operations_on_a_missing_bucket_are_storage_errors(s3_server: S3Server) -> None:
    store = s3_server.store(bucket=s3_server.bucket_name(), max_attempts=1)
    with pytest.raises(StorageError):
        store.put_bytes("t1/a", b"x")
    with pytest.raises(StorageError):
        store.list("t1/")
