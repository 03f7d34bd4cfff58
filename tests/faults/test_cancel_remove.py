"""Cancel and remove at every stage of a task, on a real farm.

After a cancel, the engine's whole process tree is gone within 2 s and the task stays CANCELED (50). After
a remove, no Redis key of the task, no member of a set/list/hash naming it, no stored object under its
prefix and no scratch folder remains, and none comes back from a worker that was still busy with it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.helpers import failing_image, make_images, slow_image, wait_status
from tests.support.farm import Farm, wait_until
from tests.support.faults import (
    engine_processes,
    leftovers,
    tree,
    wait_claim,
    wait_gone,
    wait_phase,
)

CASES = [
    ("upload", "cancel+remove"),
    ("queued", "cancel+remove"),
    ("engine", "cancel+remove"),
    ("engine", "remove"),
    ("zip", "cancel+remove"),
    ("store", "cancel+remove"),
    ("store", "remove"),
    ("completed", "cancel+remove"),
    ("failed", "cancel+remove"),
]


@pytest.fixture(scope="module")
def farm(module_farms: Any) -> Farm:
    return module_farms(workers=("w1",))  # type: ignore[no-any-return]


def command(farm: Farm, name: str, uuid: str) -> dict[str, Any]:
    return farm.post(f"/task/{name}", data={"uuid": uuid}).json()  # type: ignore[no-any-return]


def status_of(farm: Farm, uuid: str) -> int | None:
    value = farm.redis.hget(f"odmfarm:task:{uuid}", "status")
    return int(value) if value else None


def start_in(farm: Farm, stage: str, folder: Path) -> tuple[str, list[str]]:
    """A task brought to `stage`; returns its uuid and other tasks to remove afterwards."""
    node = farm.node()
    if stage == "upload":
        uuid = farm.post("/task/new/init", data={"name": "half uploaded"}).json()["uuid"]
        for path in make_images(folder, 2):
            with open(path, "rb") as fh:
                assert farm.post(
                    f"/task/new/upload/{uuid}", files={"images": (Path(path).name, fh)}
                ).json() == {"success": True}
        return uuid, []
    if stage == "queued":
        blocker = node.create_task(make_images(folder / "blocker", 1) + [slow_image(folder / "blocker", 60)])
        wait_claim(farm, blocker.uuid)
        task = node.create_task(make_images(folder, 2))
        assert wait_status(farm, task.uuid, (10,), timeout=5)["status"]["code"] == 10
        return task.uuid, [blocker.uuid]
    if stage == "completed":
        task = node.create_task(make_images(folder, 2))
        assert wait_status(farm, task.uuid, (30, 40, 50))["status"]["code"] == 40
        return task.uuid, []
    if stage == "failed":
        task = node.create_task(make_images(folder, 1) + [failing_image(folder, 1)])
        assert wait_status(farm, task.uuid, (30, 40, 50))["status"]["code"] == 30
        return task.uuid, []
    for attempt in range(3):  # zip and store last milliseconds: try again when the task got past them
        images = make_images(folder / str(attempt), 2) + (
            [slow_image(folder, 30)] if stage == "engine" else []
        )
        task = node.create_task(images, {"dsm": True})
        claim = wait_claim(farm, task.uuid)
        if wait_phase(farm, claim, task.uuid, stage) == stage:
            if stage == "engine":
                time.sleep(0.5)
            return task.uuid, []
        command(farm, "remove", task.uuid)
    raise AssertionError(f"could not catch a task in {stage}")


@pytest.mark.parametrize(("stage", "action"), CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_cancel_and_remove(farm: Farm, tmp_path: Path, stage: str, action: str) -> None:
    uuid, others = start_in(farm, stage, tmp_path)
    engines = [p for proc in engine_processes(uuid) for p in tree(proc.pid)]
    if stage in ("engine",):
        assert engines, "the engine should be running"

    problems: list[str] = []  # every check runs: a failed cancel check must not hide what remove leaves
    if action == "cancel+remove":
        answer = command(farm, "cancel", uuid)
        cancelled_at = time.monotonic()
        if stage != "upload":
            completed_first = stage == "store" and "error" in answer
            if completed_first and "complete" not in answer["error"].lower():
                problems.append(f"cancel answered {answer}")
            if not completed_first and answer != {"success": True}:
                problems.append(f"cancel answered {answer}")
            left = wait_gone([p.pid for p in engines], 2.0)
            if left:
                problems.append(f"engine processes alive 2 s after cancel: {_describe(left)}")
            if engine_processes(uuid):
                problems.append("an engine of the task is running after cancel")
            seen = set()
            while time.monotonic() - cancelled_at < 2.5:
                seen.add(status_of(farm, uuid))
                time.sleep(0.05)
            expected = 40 if completed_first else 50
            if seen != {expected}:
                problems.append(
                    f"status in the 2.5 s after cancel at {stage}: {seen}, expected only {expected}"
                )

    removed = command(farm, "remove", uuid)
    if stage != "upload" and removed != {"success": True}:
        problems.append(f"remove answered {removed}")
    left = wait_gone([p.pid for p in engines], 2.0)
    if left:
        problems.append(f"engine processes alive 2 s after remove: {_describe(left)}")
    for other in others:
        command(farm, "remove", other)
    left_behind: list[str] = []

    def clean() -> bool:
        left_behind[:] = leftovers(farm, uuid)
        return not left_behind

    try:
        wait_until(clean, 5, "")
        time.sleep(1.5)  # a worker still busy with the task must not bring anything back
        left_behind[:] = leftovers(farm, uuid)
        if left_behind:
            problems.append("after remove, something came back:\n  " + "\n  ".join(left_behind))
    except AssertionError:
        problems.append("after remove, the task left:\n  " + "\n  ".join(left_behind))
    if engine_processes(uuid):
        problems.append("an engine of the task is running after remove")
    if not farm.get(f"/task/{uuid}/info").json().get("error"):
        problems.append("a removed task must be gone for clients")
    assert problems == [], f"{action} at {stage}:\n" + "\n".join(problems)


def _describe(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            found.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return found
