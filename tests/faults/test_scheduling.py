"""Scheduling under faults, on real worker processes: hand-over on SIGTERM, restart after cancel, routing to
free slots (GPU and CPU workers, busy and idle workers), cancel around completion."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

from tests.e2e.helpers import group_alive, make_images, slow_image, task_info, wait_engine, wait_status
from tests.support.farm import Farm, Process, wait_until
from tests.support.local_http import local_server, reply

RUNNING, QUEUED, FAILED, COMPLETED, CANCELED = 20, 10, 30, 40, 50


def field(farm: Farm, uuid: str, name: str) -> str:
    return farm.redis.hget(f"odmfarm:task:{uuid}", name) or ""


def worker_process(farm: Farm, name: str) -> Process:
    return next(w for w in farm.workers if w.log.stem == name and w.alive())


def claimed_by_other(farm: Farm, uuid: str, old_worker: str, old_run: str) -> bool:
    """A new run of the task has been claimed by a worker other than `old_worker`."""
    return field(farm, uuid, "runId") != old_run and field(farm, uuid, "worker") not in ("", old_worker)


def test_sigterm_hands_the_task_back_at_once_and_never_counts_as_an_attempt(farm_factory: Any,
                                                                             tmp_path: Path) -> None:
    # a lease far longer than the test: only a clean hand-over can explain a quick takeover; and a task
    # may run twice at most, so a stop counted as an attempt would fail it at the second stop
    farm: Farm = farm_factory(workers=0, worker_slots=1, lease_seconds=300, max_attempts=2,
                              simulate_seconds=0.3)
    farm.start_worker("w1")
    farm.start_worker("w2")
    task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 8)])
    wait_engine(farm, task.uuid)
    spare = 3
    for _ in range(3):
        wait_until(lambda: field(farm, task.uuid, "worker") != "", 10, "task never claimed")
        owner, run = field(farm, task.uuid, "worker"), field(farm, task.uuid, "runId")
        wait_until(lambda o=owner: bool(list((farm.root / o / "scratch").glob(f"{task.uuid}-*/engine.pgid"))),
                   10, "engine never started")
        pgid = int(next((farm.root / owner / "scratch").glob(f"{task.uuid}-*/engine.pgid")).read_text())
        farm.start_worker(f"w{spare}")  # the next stop has somewhere to go
        spare += 1
        victim = worker_process(farm, owner)
        started = time.monotonic()
        victim.proc.send_signal(signal.SIGTERM)
        victim.proc.wait(30)
        exited = time.monotonic() - started
        assert exited < 5, f"worker took {exited:.1f}s to stop"
        assert not group_alive(pgid), "the stopped worker's engine is still running"
        wait_until(lambda o=owner, r=run: claimed_by_other(farm, task.uuid, o, r), 5,
                   f"hand-over not taken within 5 s\n{farm.logs()}")
        assert field(farm, task.uuid, "attempt") == "1", "a clean stop is not an attempt"
        assert f"event=task.handed_over uuid={task.uuid} worker={owner} run={run}" in victim.log.read_text(), (
            "the stopping worker logs the hand-over"
        )
    info = wait_status(farm, task.uuid, (COMPLETED, FAILED, CANCELED), timeout=60)
    assert info["status"]["code"] == COMPLETED, info
    console = farm.get(f"/task/{task.uuid}/output").json()
    assert sum("is shutting down" in line and "Re-queued" in line for line in console) == 3


def test_restart_right_after_cancel_starts_at_once(farm_factory: Any, tmp_path: Path) -> None:
    # the cancelled run still holds the lease while it winds down (here: its worker is stalled by SIGSTOP);
    # the restarted run must not be dropped as a duplicate of it and wait for the reaper
    farm: Farm = farm_factory(workers=0, worker_slots=1, lease_seconds=300, simulate_seconds=0.3)
    farm.start_worker("w1")
    farm.start_worker("w2")
    task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 30)])
    wait_engine(farm, task.uuid)
    owner, old_run = field(farm, task.uuid, "worker"), field(farm, task.uuid, "runId")
    stalled = worker_process(farm, owner)
    stalled.proc.send_signal(signal.SIGSTOP)
    try:
        assert farm.post("/task/cancel", data={"uuid": task.uuid}).json() == {"success": True}
        assert farm.post("/task/restart", data={"uuid": task.uuid}).json() == {"success": True}
        wait_until(lambda: claimed_by_other(farm, task.uuid, owner, old_run), 5,
                   f"restarted run not claimed within 5 s\n{farm.logs()}")
        assert task_info(farm, task.uuid)["status"]["code"] == RUNNING
    finally:
        stalled.proc.send_signal(signal.SIGCONT)
    # the stale run wakes up, learns it was cancelled, and writes nothing over the new run
    new_run = field(farm, task.uuid, "runId")
    time.sleep(2)
    assert field(farm, task.uuid, "runId") == new_run
    assert task_info(farm, task.uuid)["status"]["code"] == RUNNING
    console = farm.get(f"/task/{task.uuid}/output").json()
    assert not any(owner in line for line in console), "the stale run wrote to the new run's console"


def test_either_kind_task_goes_to_a_free_gpu_then_a_free_cpu_and_waits_as_queued(farm_factory: Any,
                                                                                  tmp_path: Path) -> None:
    farm: Farm = farm_factory(workers=0, worker_slots=1, simulate_seconds=0.3)
    farm.start_worker("gpu1", ODM_FARM_WORKER_GPU="true")
    farm.start_worker("cpu1", ODM_FARM_WORKER_GPU="false")
    node = farm.node()
    first = node.create_task(make_images(tmp_path / "a", 1) + [slow_image(tmp_path / "a", 30)])
    wait_until(lambda: field(farm, first.uuid, "worker") == "gpu1", 5, "a free GPU is preferred")
    second = node.create_task(make_images(tmp_path / "b", 1) + [slow_image(tmp_path / "b", 30)])
    wait_until(lambda: field(farm, second.uuid, "worker") == "cpu1", 5,
               f"the free CPU worker never got the task\n{farm.logs()}")
    third = node.create_task(make_images(tmp_path / "c", 1))
    for _ in range(5):  # both slots are busy: it waits, and says so
        assert task_info(farm, third.uuid)["status"]["code"] == QUEUED
        time.sleep(0.2)
    farm.post("/task/cancel", data={"uuid": second.uuid})
    assert wait_status(farm, third.uuid, (COMPLETED,), timeout=30)["status"]["code"] == COMPLETED
    assert field(farm, third.uuid, "worker") == "cpu1"


def test_a_new_task_never_waits_behind_a_busy_worker_while_another_is_idle(farm_factory: Any,
                                                                          tmp_path: Path) -> None:
    farm: Farm = farm_factory(workers=0, worker_slots=2, simulate_seconds=0.3)
    farm.start_worker("w1")
    node = farm.node()
    busy = [node.create_task(make_images(tmp_path / f"b{i}", 1) + [slow_image(tmp_path / f"b{i}", 30)])
            for i in range(2)]
    for task in busy:
        wait_engine(farm, task.uuid)
    farm.start_worker("w2")
    late = node.create_task(make_images(tmp_path / "late", 1) + [slow_image(tmp_path / "late", 30)])
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not field(farm, late.uuid, "worker"):
        time.sleep(0.05)
    status = task_info(farm, late.uuid)["status"]["code"]
    worker = field(farm, late.uuid, "worker")
    assert worker == "w2" or status == QUEUED, f"RUNNING but not started (worker {worker!r})\n{farm.logs()}"
    assert worker == "w2", "the idle worker should have taken it"
    # taken over later, processingTime keeps counting from the first start
    time.sleep(2.5)
    before = task_info(farm, late.uuid)["processingTime"]
    assert before >= 2500
    worker_process(farm, "w2").stop(signal.SIGTERM)
    farm.start_worker("w3")
    wait_until(lambda: field(farm, late.uuid, "worker") == "w3", 10, "not taken over")
    assert task_info(farm, late.uuid)["processingTime"] >= before


def test_cancel_around_completion_always_ends_canceled_with_one_webhook(farm_factory: Any,
                                                                        tmp_path: Path) -> None:
    with local_server() as receiver:
        receiver.routes["/hook"] = lambda h: reply(h, 200)
        farm: Farm = farm_factory(workers=0, worker_slots=2, simulate_seconds=0.2, blocked_networks="",
                                  webhook=receiver.url("/hook"))
        farm.start_worker("w1")
        node = farm.node()
        rng = random.Random(7)
        uuids = []
        for i in range(6):
            task = node.create_task(make_images(tmp_path / f"t{i}", 1))
            uuids.append(task.uuid)
            # cancel at a moment around the end: while storing results, just after, or just before
            wait_until(lambda u=task.uuid: float(task_info(farm, u)["progress"]) >= 90
                       or task_info(farm, u)["status"]["code"] != RUNNING, 30, "never got near the end")
            time.sleep(rng.uniform(0, 0.3))
            assert farm.post("/task/cancel", data={"uuid": task.uuid}).json() == {"success": True}
            for _ in range(10):  # the end state stays CANCELED, whatever the worker was doing
                assert task_info(farm, task.uuid)["status"]["code"] == CANCELED
                time.sleep(0.05)
            results = farm.root / "storage" / task.uuid / "results"
            if field(farm, task.uuid, "resultsRun"):  # cancelled after it completed: results stay
                assert farm.get(f"/task/{task.uuid}/download/all.zip").status_code == 200
                assert farm.get(f"/task/{task.uuid}/download/all.zip").content[:2] == b"PK"
            else:  # cancelled before: whatever the stopped run stored is deleted
                wait_until(lambda r=results: not r.exists() or not any(r.rglob("*.*")), 10,
                           "a stopped run left results behind")
                assert farm.get(f"/task/{task.uuid}/download/all.zip").json() == {"error": "Asset not ready"}
        time.sleep(2)  # every webhook that is coming has been sent
        wait_until(lambda: farm.redis.zcard("odmfarm:webhooks") == 0, 15, "webhooks not delivered")
        posted = [json.loads(r.body)["uuid"] for r in receiver.received if r.path == "/hook"]
        assert sorted(posted) == sorted(uuids), "exactly one webhook per task"


def test_results_belong_to_the_run_that_wrote_them(farm_factory: Any, tmp_path: Path) -> None:
    farm: Farm = farm_factory(workers=1, simulate_seconds=0.2)
    task = farm.node().create_task(make_images(tmp_path, 2))
    wait_status(farm, task.uuid, (COMPLETED,))
    results = farm.root / "storage" / task.uuid / "results"
    first = field(farm, task.uuid, "resultsRun")
    assert first and (results / first / "all.zip").exists(), "results stored under the run that wrote them"
    assert farm.post("/task/restart", data={"uuid": task.uuid}).json() == {"success": True}
    assert not (results / first).exists(), "a restart drops the earlier run's results"
    wait_status(farm, task.uuid, (COMPLETED,))
    second = field(farm, task.uuid, "resultsRun")
    assert second == field(farm, task.uuid, "runId") != first
    assert sorted(p.name for p in results.iterdir()) == [second]
    served = farm.get(f"/task/{task.uuid}/download/all.zip").content
    assert served == (results / second / "all.zip").read_bytes()
