"""The S3 writer on a real S3 server: parts sent in parallel while data streams in, one PUT for small objects,
bounded memory, and a failed part that leaves nothing behind.

The boto3 client's calls are wrapped (counted, delayed or made to fail) to observe and break them; the
server and the bytes are real.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError

from shared.storage import StorageError
from shared.storage import s3 as s3_module
from shared.storage.s3 import S3Store
from tests.shared.test_storage_contract import leftovers

MiB = 1024 * 1024


class Calls:
    """Wraps one client method: counts calls, and the most running at once."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        store: S3Store,
        name: str,
        before: Callable[..., None] | None = None,
    ) -> None:
        self.count = 0
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        real = getattr(store.client, name)

        def wrapper(**kwargs: Any) -> Any:
            with self._lock:
                self.count += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                if before is not None:
                    before(**kwargs)
                return real(**kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(store.client, name, wrapper)


@pytest.fixture(autouse=True)
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spilled parts go to the temp folder: this test's own, to see what is left there."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def upload_files() -> list[str]:
    return [name for name in os.listdir(tempfile.gettempdir()) if name.startswith("odm-farm-upload-")]


def test_parts_go_in_parallel_and_reassemble_the_exact_bytes(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 * MiB)  # S3's smallest part
    parts = Calls(monkeypatch, s3_store, "upload_part", before=lambda **_: time.sleep(0.2))
    data = os.urandom(23 * MiB + 12345)
    writer = s3_store.writer("t/big.tif")
    offset = 0
    for size in (1, 3 * MiB, 7 * MiB + 3, 256 * 1024, 9 * MiB):  # odd writes across part ends
        writer.write(data[offset : offset + size])
        offset += size
    writer.write(memoryview(data)[offset:])
    assert parts.count >= 3, "full parts are sent while the object still streams in"
    assert writer.commit() == len(data)
    assert parts.count == 5 and parts.most >= 2, (parts.count, parts.most)
    assert s3_store.get_bytes("t/big.tif") == data
    assert leftovers(s3_store) == [] and s3_module._MEMORY.used == 0


def test_a_failed_part_aborts_the_upload_and_leaves_nothing(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 * MiB)

    def fail_the_second(**kwargs: Any) -> None:
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "disk on fire"}}, "UploadPart")

    Calls(monkeypatch, s3_store, "upload_part", before=fail_the_second)
    writer = s3_store.writer("t/broken.tif")
    with pytest.raises(StorageError, match="disk on fire"):
        for _ in range(8):
            writer.write(os.urandom(2 * MiB))
        writer.commit()
    assert leftovers(s3_store) == []  # the multipart upload was aborted
    assert not s3_store.exists("t/broken.tif")
    assert s3_module._MEMORY.used == 0 and upload_files() == []


def test_an_object_up_to_the_part_size_is_one_put(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    multipart = Calls(monkeypatch, s3_store, "create_multipart_upload")
    puts = Calls(monkeypatch, s3_store, "put_object")
    data = os.urandom(s3_module.PART_SIZE)
    with s3_store.writer("t/one.jpg") as writer:
        writer.write(data[:1000])
        writer.write(data[1000:])
    assert (multipart.count, puts.count) == (0, 1)
    assert s3_store.get_bytes("t/one.jpg") == data


def test_past_the_memory_budget_objects_wait_in_closed_temp_files(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    budget = s3_module._MemoryBudget(1 * MiB)
    monkeypatch.setattr(s3_module, "_MEMORY", budget)
    multipart = Calls(monkeypatch, s3_store, "create_multipart_upload")
    data = [os.urandom(700 * 1024) for _ in range(6)]  # over SPOOL_MEMORY: from the budget
    writers = []
    for i, blob in enumerate(data):
        writer = s3_store.writer(f"t/img{i}.jpg")
        writer.write(blob)
        writer.finish()
        writers.append(writer)
    assert budget.used <= budget.limit
    assert len(upload_files()) >= 4, "what the budget cannot hold waits on disk"
    open_now = {f.path for f in psutil.Process().open_files()}
    assert not [f for f in open_now if "odm-farm-upload-" in f], "finished objects hold no open file"
    writers[0].abort()
    for writer in writers[1:]:
        writer.commit()
    assert multipart.count == 0, "a spilled object is still one PUT"
    assert [s3_store.get_bytes(f"t/img{i}.jpg") == data[i] for i in range(1, 6)] == [True] * 5
    assert not s3_store.exists("t/img0.jpg")
    assert budget.used == 0 and upload_files() == []
