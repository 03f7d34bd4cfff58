"""A full scratch disk in the worker's own steps (fetch, unpack, zip): the run fails with a clear message and
its scratch is freed at once. In-process pipeline on a real Redis and a local store."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from shared.models import TaskStatus
from shared.node import inputs_prefix
from tests.workers.test_runtime import MakeRuntime, make_runtime, new_task  # noqa: F401 - fixture
from workers import files, pipeline


def test_a_full_disk_while_zipping_fails_the_task_clearly_and_frees_scratch(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(simulate_seconds=0.0, keep_failed_scratch=True)
    rt.scratch.mkdir(parents=True, exist_ok=True)
    uuid, run_id = new_task(rt.tasks, TaskStatus.QUEUED, worker=None)
    rt.store.put_bytes(inputs_prefix(uuid) + "a.jpg", b"\xff\xd8\xff\xe0" + os.urandom(100))
    seen: dict[str, Any] = {}

    def full_disk(project: Path, zip_path: Path, *args: Any, **kwargs: Any) -> None:
        seen["project"] = project
        zip_path.write_bytes(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(zip_path))

    monkeypatch.setattr(files, "build_all_zip", full_disk)
    assert pipeline.process(rt, uuid, run_id) == "failed"
    record = rt.tasks.get(uuid)
    assert record["status"] == str(int(TaskStatus.FAILED))
    assert record["errorMessage"] == f"Not enough disk space on worker {rt.id}"
    assert rt.tasks.output(uuid)[-1] == f"Not enough disk space on worker {rt.id}"
    # freed even though failed runs' scratch is kept for inspection otherwise
    assert not seen["project"].exists()
    assert not list(rt.scratch.rglob("*.zip")) and not list(rt.scratch.rglob("*.jpg"))
