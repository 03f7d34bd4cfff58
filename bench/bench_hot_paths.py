"""Benchmark: the routes clients poll, under `wrk -c32 -t2`: /info, task info, console, /task/list.

The farm runs as `odm-farm api` runs it (production worker class, workers and threads, a token, one
simulate worker). One real task runs to COMPLETED; its record is then cloned straight into Redis (one
pipeline, as many tasks as needed: 100,000 in a few seconds) to measure `/task/list` at 1, 1,000 and
100,000 tasks, and a clone gets a 1,000-line console for `with_output` and `/task/{uuid}/output`.

Every figure is wrk's requests/s, p50 and p99 over `--duration` seconds (after a warm-up), with the
1-minute load average when the run ended: the machine is shared, so compare runs made back to back.

    .venv/bin/python bench/bench_hot_paths.py [--duration 10] [--tasks 100000] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Any

import psutil
import redis
import requests
from bench_api_latency import wrk_load
from harness import RESULTS, BenchError, make_images, print_result, result, running_farm

NS = "odmfarm"
CONSOLE_LINES = 1000
PAGE = 100
# fields a task record may derive from the others: a clone must not copy the template's
DERIVED = ("infoHead", "infoTail")


def seed_tasks(r: redis.Redis, template: dict[str, str], count: int, batch: int = 5000) -> list[str]:
    """`count` copies of a finished task's record, each with its own uuid, in creation order."""
    record = {k: v for k, v in template.items() if k not in DERIVED}
    made: list[str] = []
    while len(made) < count:
        n = min(batch, count - len(made))
        last = int(r.incrby(f"{NS}:seq", n))
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            uuid = str(uuidlib.uuid4())
            pipe.hset(f"{NS}:task:{uuid}", mapping={**record, "uuid": uuid})
            pipe.zadd(f"{NS}:tasks", {uuid: last - n + 1 + i})
            made.append(uuid)
        pipe.execute()
    return made


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (the gunicorn master and its workers)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def add_console(r: redis.Redis, uuid: str, lines: int) -> None:
    pipe = r.pipeline(transaction=False)
    for start in range(0, lines, 500):
        batch = [f"[INFO]    console line {n}: a typical ODM log line" for n in range(start, start + 500)]
        pipe.rpush(f"{NS}:task:{uuid}:output", *batch[: lines - start])
    pipe.execute()


def check(url: str, expect: type, key: str | None = None, length: int | None = None) -> None:
    body = requests.get(url, timeout=120).json()
    if not isinstance(body, expect) or (isinstance(body, dict) and ("error" in body or key not in body)):
        raise BenchError(f"{url} did not answer as expected: {str(body)[:300]}")
    if length is not None and len(body[key] if key else body) != length:
        raise BenchError(f"{url}: expected {length} items, got {len(body[key] if key else body)}")


def run(
    connections: int = 32,
    duration: float = 10.0,
    warmup: float = 1.0,
    tasks: int = 100_000,
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not on PATH: apt-get install wrk (make bench installs it)")
    metrics: dict[str, Any] = {}
    loads: list[str] = []
    sizes = [1, 1000, tasks] if tasks > 1000 else [1, tasks]

    def measure(name: str, url: str) -> None:
        wrk_load(url, connections, warmup, allow_timeouts=True)
        pids = farm.api_pids()
        before = cpu_seconds(pids)
        figures = wrk_load(url, connections, duration, allow_timeouts=True)
        for key in ("requests_per_s", "p50_ms", "p99_ms"):
            metrics[f"{name}_{key}"] = figures[key]
        if figures["timeouts"]:  # the old whole /task/list of 100,000 tasks took seconds per request
            metrics[f"{name}_timeouts"] = figures["timeouts"]
        # the API's own CPU per request: steadier than requests/s on a machine others load too
        metrics[f"{name}_api_cpu_us"] = (cpu_seconds(pids) - before) / max(1, figures["requests"]) * 1e6
        load = round(os.getloadavg()[0], 2)
        metrics[f"{name}_load1"] = load
        loads.append(f"{name}: {load}")
        print(
            f"   {name:32} {figures['requests_per_s']:9.0f} req/s  p50 {figures['p50_ms']:7.2f} ms  "
            f"p99 {figures['p99_ms']:7.2f} ms  API CPU {metrics[f'{name}_api_cpu_us']:7.0f} us/req  "
            f"load {load}",
            flush=True,
        )

    metrics["load_before"] = round(os.getloadavg()[0], 2)
    with running_farm(simulate_seconds=0) as farm:
        task = farm.run_task(make_images(farm.tmp / "images", 3, 20_000))
        r = redis.Redis.from_url(farm.env["ODM_FARM_REDIS_URL"], decode_responses=True)
        template = r.hgetall(f"{NS}:task:{task.uuid}")
        base, token = farm.url, f"token={farm.token}"

        def url(path: str, query: str = "") -> str:
            return f"{base}{path}?{token}" + (f"&{query}" if query else "")

        check(url("/task/list"), list, length=1)
        measure("list_1", url("/task/list"))
        measure("info", url("/info"))
        measure("task_info", url(f"/task/{task.uuid}/info"))
        measure("task_info_output0", url(f"/task/{task.uuid}/info", "with_output=0"))
        console = seed_tasks(r, template, 1)[0]
        add_console(r, console, CONSOLE_LINES)
        tail = CONSOLE_LINES - 10
        check(url(f"/task/{console}/info", f"with_output={tail}"), dict, "output", 10)
        check(url(f"/task/{console}/output"), list, length=CONSOLE_LINES)
        measure("console1000_info_output990", url(f"/task/{console}/info", f"with_output={tail}"))
        measure("console1000_info_output0", url(f"/task/{console}/info", "with_output=0"))
        measure("console1000_output990", url(f"/task/{console}/output", f"line={tail}"))
        for size in sizes[1:]:
            seed_tasks(r, template, size - int(r.zcard(f"{NS}:tasks")))
            check(url("/task/list"), list, length=size)
            measure(f"list_{size}", url("/task/list"))
            middle = f"offset={size // 2}&limit={PAGE}"
            measure(f"list_{size}_page{PAGE}", url("/task/list", middle))
        measure(f"task_info_at_{sizes[-1]}", url(f"/task/{task.uuid}/info"))
    metrics["load_after"] = round(os.getloadavg()[0], 2)
    return result(
        "hot_paths",
        {"connections": connections, "duration_s": duration, "tasks": tasks, "client": "wrk -t2"},
        metrics,
        targets={
            "task_info_requests_per_s": ">= 5000 (issue 10, quiet machine)",
            "task_info_p99_ms": "< 30",
            f"list_{sizes[-1]}_page{PAGE}_requests_per_s": "flat from 1 to 100,000 tasks",
        },
        notes=[
            "1-minute load average after each run: " + ", ".join(loads),
            "*_api_cpu_us: CPU time of the API processes (gunicorn master and workers) per request",
            f"list_N_page{PAGE}: /task/list?offset=N/2&limit={PAGE} (a farm without paging answers every task)",
            f"console1000_*: a task with a {CONSOLE_LINES}-line console; output990 = the last 10 lines",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per route")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks for the largest /task/list")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "hot_paths.json", help="where to write the figures (JSON)"
    )
    args = parser.parse_args()
    res = run(args.connections, args.duration, args.warmup, args.tasks)
    print_result(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
