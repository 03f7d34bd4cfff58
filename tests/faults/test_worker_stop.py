"""A worker frozen (SIGSTOP) past its lease, then resumed (SIGCONT): its stale run writes nothing.

The worker host is frozen whole (Celery main process and its engines) during the engine or while it stores
results. The other worker takes the task over and completes it. Once the frozen worker resumes, its run
is stale: the task's record, console, progress, stored objects and webhook deliveries must stay exactly as
the completing run left them.
"""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm, wait_until
from tests.support.faults import (
    Timeline,
    phase,
    record,
    seeded_rng,
    signal_tree,
    stopped,
    storage_dir,
    wait_claim,
    wait_phase,
    workdir,
    worker_process,
)
from tests.support.local_http import LocalServer


@pytest.fixture(scope="module")
def farm(module_farms: Any) -> Farm:
    return module_farms()  # type: ignore[no-any-return]


def objects(farm: Farm, uuid: str) -> dict[str, tuple[int, str, int]]:
    root = storage_dir(farm) / uuid
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def snapshot(farm: Farm, uuid: str, hooks: LocalServer) -> dict[str, Any]:
    return {
        "record": record(farm, uuid),
        "console": farm.get(f"/task/{uuid}/output").json(),
        "objects": objects(farm, uuid),
        "webhooks": len([r for r in hooks.received if r.path == "/hook"]),
    }


@pytest.mark.parametrize("during", ["engine", "store"])
def test_a_resumed_stale_run_writes_nothing(
    farm: Farm, webhook_receiver: LocalServer, tmp_path: Path, during: str
) -> None:
    rng = seeded_rng(f"sigstop during {during}")
    timeline = Timeline()
    for attempt in range(3):  # storing lasts milliseconds: the freeze can come just too late
        task = farm.node().create_task(
            make_images(tmp_path / f"in{attempt}", 3), {"dsm": True}, webhook=webhook_receiver.url("/hook")
        )
        first = wait_claim(farm, task.uuid)
        wait_phase(farm, first, task.uuid, during)
        if during == "engine":
            time.sleep(rng.uniform(0.0, 1.0))
        frozen = worker_process(farm, first.worker)
        pids = signal_tree(frozen.proc.pid, signal.SIGSTOP)
        landed = phase(farm, first, task.uuid)
        timeline.mark(f"{task.uuid}: froze {first.worker} (pids {pids}) in {landed}")
        if landed != "finished":
            break
        signal_tree(frozen.proc.pid, signal.SIGCONT)
    assert landed == during, f"could not freeze the worker while it was in {during}: {timeline}"

    with stopped(pids):
        second = wait_claim(farm, task.uuid, exclude=[first.run_id], timeout=30)
        timeline.mark(f"run {second.run_id} claimed by {second.worker}")
        assert second.worker != first.worker
        info = wait_status(farm, task.uuid, (30, 40, 50), timeout=60)
        assert info["status"]["code"] == 40, info
        wait_until(lambda: snapshot(farm, task.uuid, webhook_receiver)["webhooks"] >= 1, 15, "no webhook")
        time.sleep(1.0)  # any second delivery of the completing run would have come by now
        before = snapshot(farm, task.uuid, webhook_receiver)
        timeline.mark("completed on the other worker; resuming the frozen one")

    # the stale run's scratch folder goes when its pipeline has ended
    folder = workdir(farm, first.worker, task.uuid, first.run_id)
    wait_until(lambda: not folder.exists(), 20, f"the resumed stale run never ended\n{frozen.tail()}")
    timeline.mark("stale run ended")
    time.sleep(2.0)  # the webhook loop polls every 0.5 s
    after = snapshot(farm, task.uuid, webhook_receiver)
    print(timeline)
    assert frozen.alive(), "the resumed worker should keep running"
    assert before["webhooks"] == 1, f"{before['webhooks']} webhook deliveries for one completion"
    # the one thing a stale run may still do is delete what it stored itself before it froze: results
    # under its own run id that no client can reach (the task serves `resultsRun`, the other run's)
    own = f"results/{first.run_id}/"
    before["objects"] = {k: v for k, v in before["objects"].items() if not k.startswith(own)}
    assert not [k for k in after["objects"] if k.startswith(own)], "the stale run's partial results remain"
    for part in ("record", "console", "objects", "webhooks"):
        assert after[part] == before[part], f"the resumed stale run changed the task's {part}:\n" + _diff(
            before[part], after[part]
        )


def _diff(before: Any, after: Any) -> str:
    if isinstance(before, dict):
        keys = sorted(set(before) | set(after))
        return "\n".join(
            f"  {k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k)
        )
    if isinstance(before, list):
        return "\n".join(f"  + {line}" for line in after[len(before) :]) or f"  {before} -> {after}"
    return f"  {before} -> {after}"
