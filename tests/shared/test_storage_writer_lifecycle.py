"""Object writers give back their open files at finish(): many parts of one request never hold one file each."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shared.storage import LocalStore, ObjectStore
from shared.storage.s3 import SPOOL_MEMORY, S3Store
from tests.shared.test_storage_contract import leftovers

PARTS = 60


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects")
    else:
        s3_store: S3Store = request.getfixturevalue("s3_store")
        yield s3_store


def open_files() -> int:
    return psutil.Process().num_fds()


@pytest.mark.parametrize("size", [1000, SPOOL_MEMORY + 1000, 3 * 1024 * 1024])
def test_finished_writers_hold_no_open_file(store: ObjectStore, size: int) -> None:
    """What an upload of many parts does: write a part, finish it, go on; commit them all at the end."""
    data = [os.urandom(size) for _ in range(3)]
    store.put_bytes("warm/up", b"x")  # the S3 client's connection pool is open before counting
    baseline = open_files()
    writers = []
    for i in range(PARTS):
        writer = store.writer(f"task/inputs/img{i}.jpg")
        writer.write(data[i % 3][: size // 2])
        writer.write(data[i % 3][size // 2 :])
        writer.finish()
        writers.append(writer)
    held = open_files() - baseline
    assert held < 10, f"{held} files still open for {PARTS} finished parts of {size} bytes"
    assert [k for k, _ in store.list("task/")] == []  # finished is not visible yet
    for writer in writers:
        assert writer.commit() == size
    listed = dict(store.list("task/"))
    assert len(listed) == PARTS and set(listed.values()) == {size}
    assert store.get_bytes("task/inputs/img4.jpg") == data[1]
    assert leftovers(store) == []


def test_finished_writers_can_still_be_aborted(store: ObjectStore) -> None:
    writers = []
    for i, size in enumerate((10, SPOOL_MEMORY + 10, 3 * 1024 * 1024)):
        writer = store.writer(f"gone/{i}")
        writer.write(os.urandom(size))
        writer.finish()
        writers.append(writer)
    for writer in writers:
        writer.abort()
    assert store.list("gone/") == []
    assert leftovers(store) == []


def test_write_after_finish_is_refused(store: ObjectStore) -> None:
    writer = store.writer("x/y")
    writer.write(b"abc")
    writer.finish()
    writer.finish()  # twice is harmless
    with pytest.raises(ValueError):
        writer.write(b"more")
    assert writer.commit() == 3
    assert store.get_bytes("x/y") == b"abc"
