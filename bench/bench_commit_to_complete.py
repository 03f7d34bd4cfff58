"""Benchmark: time from PyODM's commit returning to the task reporting COMPLETED (the farm's overhead).

A 3-image task runs on one simulate worker with ODM_FARM_SIMULATE_SECONDS=0, so nearly all of the time is
the farm's own: Celery dispatch, fetching inputs, the pipeline, all.zip, storing results, the final
state write. /task/{uuid}/info is polled every 10 ms on a keep-alive session. One warm-up run is not
counted. processing_time is the task's own processingTime (a worker taking it to COMPLETED, including
the engine subprocess); dispatch is the rest (commit to a worker taking the task, plus the last poll).

    .venv/bin/python bench/bench_commit_to_complete.py [--runs 10] [--storage local|s3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import requests
from harness import BenchError, make_images, median, percentile, print_result, result, running_farm

from shared.models import TaskStatus


def one_run(
    node: Any, url: str, token: str, images: list[str], session: requests.Session
) -> tuple[float, int]:
    """Seconds from commit returning to COMPLETED being visible, and the task's processingTime in ms."""
    task = node.create_task(images)
    committed = time.perf_counter()
    while True:
        info = session.get(f"{url}/task/{task.uuid}/info", params={"token": token}, timeout=10).json()
        code = info["status"]["code"]
        if code == TaskStatus.COMPLETED:
            return time.perf_counter() - committed, int(info["processingTime"])
        if code not in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            raise BenchError(f"task {task.uuid} ended with {info['status']}")
        if time.perf_counter() - committed > 60:
            raise BenchError(f"task {task.uuid} not COMPLETED after 60 s")
        time.sleep(0.01)


def run(runs: int = 10, storage: str = "local") -> dict[str, Any]:
    with running_farm(storage=storage, simulate_seconds=0) as farm:
        images = make_images(farm.tmp / "images", 3, 50_000)
        node = farm.node()
        session = requests.Session()
        warmup, _ = one_run(node, farm.url, farm.token, images, session)
        times, processing = [], []
        for _ in range(runs):
            seconds, processing_ms = one_run(node, farm.url, farm.token, images, session)
            times.append(seconds * 1000)
            processing.append(processing_ms)
        session.close()
    metrics = {
        "commit_to_completed_p50_ms": median(times),
        "commit_to_completed_min_ms": min(times),
        "commit_to_completed_p90_ms": percentile(times, 90),
        "commit_to_completed_max_ms": max(times),
        "processing_time_p50_ms": median(processing),
        "dispatch_p50_ms": median([t - p for t, p in zip(times, processing, strict=True)]),
        "warmup_run_ms": warmup * 1000,
    }
    return result(
        "commit_to_complete",
        {"runs": runs, "storage": storage, "images": 3, "simulate_seconds": 0},
        metrics,
        notes=["polling every 10 ms adds up to ~10 ms plus one request to each figure"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    print_result(run(args.runs, args.storage))


if __name__ == "__main__":
    main()
