"""Durable uploads on local storage: an object's bytes are fsynced before its rename, and the commit of a task
fsyncs the folders holding the renames, so that a committed task's inputs survive a power loss.

os.fsync is spied on (the only mock: what reaches the disk cannot be observed otherwise); the files are real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.node import Node
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import LocalStore, make_store
from shared.taskstore import TaskStore
from tests.support.farm import RedisServer


class FsyncSpy:
    """Records the (device, inode) of everything fsynced, and whether it was a folder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.synced: list[tuple[tuple[int, int], bool]] = []
        real = os.fsync

        def spy(fd: int) -> None:
            info = os.fstat(fd)
            self.synced.append(((info.st_dev, info.st_ino), os.path.stat.S_ISDIR(info.st_mode)))
            real(fd)

        monkeypatch.setattr(os, "fsync", spy)

    def saw(self, path: Path) -> bool:
        info = path.stat()
        return (info.st_dev, info.st_ino) in {key for key, _ in self.synced}

    def folders(self) -> int:
        return sum(1 for _, is_dir in self.synced if is_dir)


def test_an_object_is_fsynced_before_it_is_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "objects")
    spy = FsyncSpy(monkeypatch)
    writer = store.writer("t/inputs/a.jpg")
    writer.write(b"x" * 1000)
    writer.finish()
    assert len(spy.synced) == 1  # at the end of the part, before the request commits it
    writer.commit()
    assert spy.saw(tmp_path / "objects" / "t" / "inputs" / "a.jpg")  # the renamed file is the one synced


def test_make_durable_fsyncs_every_folder_up_to_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put_bytes("t/inputs/a.jpg", b"a")
    store.put_bytes("t/inputs/sub/b.jpg", b"b")
    store.put_bytes("other/c.jpg", b"c")
    spy = FsyncSpy(monkeypatch)
    store.make_durable("t/inputs/")
    for folder in (root / "t" / "inputs", root / "t" / "inputs" / "sub", root / "t", root):
        assert spy.saw(folder), folder
    assert not spy.saw(root / "other")
    store.make_durable("missing/")  # nothing uploaded (a zipurl task): nothing to do, no error


@pytest.fixture
def node(redis_server: RedisServer, tmp_path: Path) -> Iterator[Node]:
    settings = Settings(redis_url=redis_server.url(redis_server.fresh_db()), data_dir=tmp_path)
    tasks = TaskStore.from_url(settings.redis_url)
    yield Node(settings, tasks, make_store(settings), make_celery(settings))
    tasks.r.close()


def test_commit_makes_the_inputs_durable_before_the_task_exists(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    uuid = node.init_session({}, None)
    name, key = node.upload_key(uuid, "a.jpg")
    with node.store.writer(key) as writer:
        writer.write(b"\xff\xd8" + b"x" * 100)
    node.record_uploads(uuid, {name: 102})
    spy = FsyncSpy(monkeypatch)
    existed_at_sync: list[bool] = []
    make_durable = node.store.make_durable

    def watched(prefix: str) -> None:
        existed_at_sync.append(node.tasks.exists(uuid))
        make_durable(prefix)

    monkeypatch.setattr(node.store, "make_durable", watched)
    node.commit(uuid)
    assert isinstance(node.store, LocalStore)
    inputs = node.store.root / uuid / "inputs"
    assert spy.saw(inputs) and spy.saw(inputs.parent) and spy.saw(node.store.root)
    assert existed_at_sync == [False]
    assert node.tasks.exists(uuid)
