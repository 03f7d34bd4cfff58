"""Scratch disk: a worker short of space takes no task (and says so in /workers); a task that fills the disk
fails with a clear message and frees its scratch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from shared.taskstore import Keys
from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import wait_until

TOO_MUCH_MB = 1 << 40  # a threshold above any real free space: the worker is always "short"


def test_a_worker_short_of_scratch_space_takes_no_task(farm_factory: Any, tmp_path: Path) -> None:
    farm = farm_factory(workers=0)
    farm.start_worker("full", ODM_FARM_MIN_FREE_DISK_MB=str(TOO_MUCH_MB))
    full = next(w for w in farm.get("/workers").json() if w["name"] == "full")
    assert full["accepting"] is False and "ODM_FARM_MIN_FREE_DISK_MB" in full["note"], full
    assert full["slots"] == 0

    task = farm.node().create_task(make_images(tmp_path / "in", 2))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # it waits: neither taken by the full worker nor failed
        assert farm.get(f"/task/{task.uuid}/info").json()["status"]["code"] == 10
        time.sleep(0.3)
    assert not farm.redis.hget(Keys.task(task.uuid), "worker")

    farm.start_worker("roomy")
    assert wait_status(farm, task.uuid, (40, 30))["status"]["code"] == 40
    assert farm.redis.hget(Keys.task(task.uuid), "worker") == "roomy"


def test_a_task_that_fills_the_disk_fails_clearly_and_frees_its_scratch(farm_factory: Any, tmp_path: Path) -> None:
    farm = farm_factory(workers=0)
    farm.start_worker("w1")
    images = make_images(tmp_path / "in", 2)
    enospc = tmp_path / "in" / "simulate-enospc.jpg"
    enospc.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    task = farm.node().create_task([*images, str(enospc)])
    assert wait_status(farm, task.uuid, (40, 30))["status"]["code"] == 30
    lines = farm.get(f"/task/{task.uuid}/output").json()
    assert "No space left on device" in "\n".join(lines)
    assert lines[-1] == "Not enough disk space on worker w1", lines[-5:]
    scratch = farm.root / "w1" / "scratch"
    wait_until(lambda: not any(scratch.rglob("scene_dense.mvs")), 5, "the run's scratch was not freed")
