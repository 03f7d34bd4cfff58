"""The farm panel's data (GET /farm): queue depth per queue and the warnings when queued tasks cannot start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shared.assets import ASSETS
from shared.farm import farm_status, queue_depths, warnings

ROOT = Path(__file__).resolve().parents[2]


def worker(name: str, queues: tuple[str, ...] = ("cpu",), slots: int = 2, **extra: Any) -> dict[str, Any]:
    return {"id": name, "name": name, "queues": list(queues), "slots": slots, "running": [], **extra}


def test_depth_counts_waiting_running_and_deferred_tasks_per_queue() -> None:
    workers = [worker("a"), worker("g", ("gpu", "cpu"), slots=1, gpu=True)]
    occupancy = [("cpu", ""), ("cpu", "a"), ("", ""), ("gpu", "g"), ("cpu", "-")]
    queues = queue_depths(workers, occupancy)
    assert queues["cpu"] == {"waiting": 2, "running": 1, "deferred": 1, "workers": 2, "slots": 3}
    assert queues["gpu"] == {"waiting": 0, "running": 1, "deferred": 0, "workers": 1, "slots": 1}


def test_no_warning_while_every_waiting_task_has_a_worker() -> None:
    workers = [worker("a")]
    assert warnings(workers, queue_depths(workers, [("cpu", ""), ("cpu", "a")])) == []
    assert warnings([], queue_depths([], [])) == []  # no worker and nothing queued: nothing to act on


def test_queued_tasks_and_no_live_worker() -> None:
    found = warnings([], queue_depths([], [("cpu", ""), ("gpu", "")]))
    assert found == [
        "2 task(s) are queued but no worker is alive: start a worker (odm-farm worker) or check that the "
        "workers reach Redis."
    ]


def test_tasks_on_the_gpu_queue_and_no_gpu_worker() -> None:
    workers = [worker("a")]
    found = warnings(workers, queue_depths(workers, [("gpu", ""), ("cpu", "")]))
    assert found == ["1 task(s) wait on the gpu queue but no live GPU worker can take them."]


def test_workers_that_take_no_task_are_named_with_their_note() -> None:
    note = "Not taking tasks: 100 MB free on the scratch disk"
    workers = [worker("a", slots=0, accepting=False, note=note)]
    (found,) = warnings(workers, queue_depths(workers, [("cpu", "")]))
    assert "no worker serving it takes tasks" in found and note in found
    # one accepting worker is enough
    workers.append(worker("b"))
    assert warnings(workers, queue_depths(workers, [("cpu", "")])) == []


def test_status_lists_workers_with_slots_used_and_no_digest() -> None:
    busy = worker("b", running=["t1"], optionsDigest="x", host="h2")
    status = farm_status([busy, worker("a", host="h1")], [("cpu", "b")], 123)
    assert [w["name"] for w in status["workers"]] == ["a", "b"]  # by host, then name
    assert status["workers"][1]["slotsUsed"] == 1 and "optionsDigest" not in status["workers"][1]
    assert status["now"] == 123 and status["warnings"] == []


def test_the_web_app_offers_every_single_asset() -> None:
    """tasks.js lists the single assets a user may download: the same names as shared/assets.py."""
    source = (ROOT / "api" / "web" / "static" / "js" / "tasks.js").read_text()
    block = re.search(r"export const ASSETS = \[(.*?)\];", source, re.S)
    assert block is not None
    assert re.findall(r'"([^"]+)"', block.group(1)) == list(ASSETS)
