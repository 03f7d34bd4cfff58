"""Faults: tasks whose worker is killed -9 at a random moment, and a Redis restart under client polling.

    .venv/bin/python bench/bench_faults.py                    # 20 tasks, seed printed
    .venv/bin/python bench/bench_faults.py --tasks 5 --seed 42

Worker kills: two 1-slot simulate workers, a short lease. For each task, once a worker has claimed it, the
script waits a random time (seeded) within the measured length of a run (claim -> COMPLETED, so fetching,
engine, zipping and storing are all hit), then kills that worker host with SIGKILL (the Celery main process
and every engine under it) and starts it again. It reports how many tasks completed or failed, how many ran
twice at once (two runs alive at the same moment, sampled every 20 ms from the runs' scratch folders and
engine process groups), progress that went down for a polling client, and the takeover time: from the
kill to the claim of the task's next run by a worker (lease expiry + reaper period + dispatch).

Redis restart: with a task running, Redis (AOF) is killed with SIGKILL and started again after
`--redis-outage` seconds while two clients poll the API; it reports answers >= 500 (must be 0), requests
that got no answer (connection closed or timed out: clients retry those), and the time to recover, from the
restart to the first good answer.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import harness
import requests
from harness import make_images, median, print_result, result, running_farm

from odm_farm.redis_server import start_redis
from tests.support.faults import (
    ProgressRecorder,
    RunMonitor,
    kill_worker,
    phase,
    wait_claim,
)

LEASE_SECONDS = 3
SETTINGS = {
    "worker_slots": 1,
    "lease_seconds": LEASE_SECONDS,
    "heartbeat_seconds": 0.5,
    "worker_ttl": 3,
    "simulate_seconds": 1.5,
    "max_attempts": 3,
}


def run(tasks: int = 20, seed: int | None = None, redis_outage: float = 5.0) -> dict[str, Any]:
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 2**31)
    rng = random.Random(seed)
    print(f"   seed {seed} (replay with --seed {seed})", flush=True)
    metrics: dict[str, Any] = {}
    notes = [f"seed {seed}; settings {SETTINGS}"]
    with running_farm(workers=0, **SETTINGS) as bench:
        farm = bench.farm
        farm.start_worker("w1")
        farm.start_worker("w2")
        metrics.update(_worker_kills(bench, tasks, rng, notes))
    metrics.update(_redis_restart(redis_outage, notes))
    targets = {
        "tasks_completed": f"{tasks}",
        "tasks_run_twice_at_once": "0",
        "takeover_worst_s": f"lease {LEASE_SECONDS} s + reaper period",
        "redis_answers_5xx": "0",
    }
    return result(
        "faults", {"tasks": tasks, "seed": seed, "redis_outage_s": redis_outage}, metrics, targets, notes
    )


def _worker_kills(bench: Any, tasks: int, rng: random.Random, notes: list[str]) -> dict[str, Any]:
    farm = bench.farm
    node = farm.node()
    # how long a run lasts from its claim to COMPLETED: the window the kills are spread over
    warm = node.create_task(make_images(bench.tmp / "warm", 3, 100_000))
    claimed = wait_claim(farm, warm.uuid)
    harness.wait_for_status(farm.url, farm.token, warm.uuid, interval=0.01)
    window = time.monotonic() - claimed.at
    notes.append(f"a run lasts {window:.2f} s from claim to COMPLETED; kills are spread uniformly over it")

    takeovers: list[float] = []
    landed: dict[str, int] = {}
    statuses: dict[int, int] = {}
    uuids = []
    with RunMonitor(farm) as runs, ProgressRecorder(farm, interval=0.1) as client:
        for i in range(tasks):
            task = node.create_task(make_images(bench.tmp / f"t{i}", 3, 100_000))
            uuids.append(task.uuid)
            runs.watch(task.uuid)
            client.watch(task.uuid)
            first = wait_claim(farm, task.uuid, timeout=60)
            time.sleep(rng.uniform(0, window))
            where = phase(farm, first, task.uuid)
            killed_at = time.monotonic()
            kill_worker(farm, first.worker)
            status, attempt = farm.redis.hmget(f"odmfarm:task:{task.uuid}", "status", "attempt")
            if where == "finished" or (status == "40" and attempt == "1"):
                where = "finished"
            landed[where] = landed.get(where, 0) + 1
            farm.start_worker(first.worker, wait=False)  # the host comes back at once
            takeover = "-"
            if where != "finished":
                try:
                    second = wait_claim(farm, task.uuid, exclude=[first.run_id], timeout=60)
                    takeovers.append(second.at - killed_at)
                    takeover = f"{takeovers[-1]:.2f} s"
                except AssertionError:
                    notes.append(f"{task.uuid}: no new run within 60 s of the kill")
            info = harness.wait_for_status(farm.url, farm.token, task.uuid, timeout=90)
            code = info["status"]["code"]
            statuses[code] = statuses.get(code, 0) + 1
            print(
                f"   task {i + 1}/{tasks}: killed {first.worker} in {where}, takeover {takeover}, status {code}",
                flush=True,
            )
        time.sleep(0.3)
    twice = sorted({uuid for _, uuid, _ in runs.overlaps})
    backwards = [u for u in uuids if client.backwards(u)]
    notes.append("kills landed in: " + ", ".join(f"{k} {v}" for k, v in sorted(landed.items())))
    if twice:
        notes.append(f"ran twice at once: {twice}")
    return {
        "tasks_completed": statuses.get(40, 0),
        "tasks_failed": statuses.get(30, 0),
        "tasks_other_status": sum(v for k, v in statuses.items() if k not in (30, 40)),
        "kills_after_completion": landed.get("finished", 0),
        "tasks_run_twice_at_once": len(twice),
        "tasks_progress_went_back": len(backwards),
        "takeover_median_s": round(median(takeovers), 2) if takeovers else None,
        "takeover_worst_s": round(max(takeovers), 2) if takeovers else None,
        "takeover_stdev_s": round(statistics.pstdev(takeovers), 2) if takeovers else None,
    }


def _redis_restart(outage: float, notes: list[str]) -> dict[str, Any]:
    with running_farm(workers=1, **{**SETTINGS, "lease_seconds": max(10, outage * 2)}) as bench:
        farm = bench.farm
        port = int(farm.env["ODM_FARM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        task = farm.node().create_task(
            make_images(bench.tmp / "r", 2, 100_000) + _slow(bench.tmp / "r", outage + 4)
        )
        wait_claim(farm, task.uuid)
        answers: list[tuple[float, int]] = []  # (when, status code; 0 = no answer)
        stop = threading.Event()

        def poll(path: str) -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    code = session.get(farm.url + path, params=farm.params(), timeout=35).status_code
                except requests.RequestException:
                    code = 0
                answers.append((time.monotonic(), code))
                time.sleep(0.1)

        pollers = [
            threading.Thread(target=poll, args=(p,), daemon=True)
            for p in ("/info", f"/task/{task.uuid}/info")
        ]
        for thread in pollers:
            thread.start()
        time.sleep(0.5)
        redis_proc = _redis_process(bench)
        redis_proc.kill()
        redis_proc.wait(10)
        killed = time.monotonic()
        time.sleep(outage)
        restarted_proc = start_redis(bench.tmp / "redis", port, persistent=True)
        restarted = time.monotonic()
        try:
            info = harness.wait_for_status(farm.url, farm.token, task.uuid, timeout=120)
            stop.set()
            for thread in pollers:
                thread.join(40)
        finally:
            stop.set()
            farm.stop()  # before Redis goes: workers and API leave cleanly
            restarted_proc.terminate()
            restarted_proc.wait(10)
    after = [t for t, code in answers if t > killed and code == 200]
    recovered = next((t for t in after if t >= restarted), None)
    notes.append(f"redis outage {outage:g} s (SIGKILL, AOF everysec as odm-farm up runs it)")
    return {
        "redis_requests": len(answers),
        "redis_answers_5xx": sum(1 for _, code in answers if code >= 500),
        "redis_requests_unanswered": sum(1 for _, code in answers if code == 0),
        "redis_recover_s": round(recovered - restarted, 2) if recovered else None,
        "redis_task_status": info["status"]["code"],
    }


def _slow(folder: Path, seconds: float) -> list[str]:
    path = folder / f"simulate-seconds-{int(seconds)}.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    return [str(path)]


def _redis_process(bench: Any) -> Any:
    """The redis-server running_farm started (its Popen is not exposed): found by its port among our children."""
    import psutil

    port = bench.farm.env["ODM_FARM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    for child in psutil.Process().children():
        cmdline = child.cmdline()
        # redis-server rewrites its title to "<binary> 127.0.0.1:<port>"
        if cmdline and "redis-server" in cmdline[0] and cmdline[0].endswith(f":{port}"):
            return child
    raise harness.BenchError("redis-server of the farm not found")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20, help="tasks, each with a worker killed (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument(
        "--redis-outage", type=float, default=5.0, help="seconds Redis stays down (default 5)"
    )
    args = parser.parse_args()
    print_result(run(args.tasks, args.seed, args.redis_outage))


if __name__ == "__main__":
    main()
