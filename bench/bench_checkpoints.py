"""Checkpoints: time to COMPLETED of a run killed at 80 %, with and without checkpoints, and their overhead.

    .venv/bin/python bench/bench_checkpoints.py                     # 60 s run killed at 80 %, ~4 minutes
    .venv/bin/python bench/bench_checkpoints.py --seconds 20 --overhead-seconds 20 --stage-mb 2

Two farms run side by side, each with two 1-slot simulate workers and a 3 s lease: one with checkpoints
(ODM_FARM_CHECKPOINTS=true), one without. Each gets one task of `--seconds` (the stand-in runs ODM's 13
stages, 10 of which do work, and writes `--stage-mb` MB of incompressible data per computed stage, so the
project folder weighs something). When the engine has run for `--kill-at` of its length, the worker is killed
with SIGKILL (Celery main process and engine); the other worker takes the task over after the lease. The
figure is the time from the task's creation to COMPLETED: without checkpoints the second worker runs the
whole task again, with them it resumes after the last complete checkpoint.

Overhead: `--repeats` uninterrupted tasks of `--overhead-seconds` on each farm, one at a time and alternating
(so neither farm's I/O slows the other's run), creation to COMPLETED; overhead = (median with - median
without) / median without.
Writes bench/results/checkpoints.json and checkpoints.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import harness
from harness import RESULTS, BenchFarm, make_images, print_result, result, running_farm, wait_for_status

from tests.support.faults import kill_worker, phase, wait_claim, wait_phase

SETTINGS = {
    "worker_slots": 1,
    "lease_seconds": 3,
    "heartbeat_seconds": 0.5,
    "worker_ttl": 3,
    "max_attempts": 3,
}


def run(
    seconds: float = 60.0,
    kill_at: float = 0.8,
    overhead_seconds: float = 30.0,
    stage_mb: float = 5.0,
    storage: str = "local",
    repeats: int = 2,
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    common = {**SETTINGS, "simulate_stage_mb": stage_mb}
    with (
        running_farm(storage, workers=0, checkpoints="true", **common) as with_ckpt,
        running_farm(storage, workers=0, checkpoints="false", **common) as without,
    ):
        for bench in (with_ckpt, without):
            bench.farm.start_worker("w1")
            bench.farm.start_worker("w2")
        outcomes: dict[str, dict[str, Any]] = {}
        threads = [
            threading.Thread(
                target=lambda b=b, k=k: outcomes.__setitem__(k, _killed_run(b, seconds, kill_at))
            )
            for b, k in ((with_ckpt, "with"), (without, "without"))
        ]
        load_during = os.getloadavg()[0]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for key in ("with", "without"):
            if "error" in outcomes.get(key, {"error": "no result"}):
                raise harness.BenchError(f"killed run {key} checkpoints: {outcomes.get(key)}")
        metrics["killed_to_completed_with_checkpoints_s"] = round(outcomes["with"]["total_s"], 1)
        metrics["killed_to_completed_without_checkpoints_s"] = round(outcomes["without"]["total_s"], 1)
        metrics["second_attempt_with_checkpoints_s"] = round(outcomes["with"]["second_s"], 1)
        metrics["second_attempt_without_checkpoints_s"] = round(outcomes["without"]["second_s"], 1)
        metrics["time_saved_pct"] = round(
            100 * (1 - outcomes["with"]["total_s"] / outcomes["without"]["total_s"]), 1
        )
        notes.append(f"resumed: {outcomes['with']['resume_line']}")
        notes.append(f"load average while the killed runs ran: {load_during:.2f}")

        plains, checkeds = [], []
        for n in range(repeats):  # alternating, so that a change of the machine's load hits both sides
            pair = [(without, plains), (with_ckpt, checkeds)]
            for bench, into in pair if n % 2 == 0 else reversed(pair):
                into.append(_uninterrupted(bench, overhead_seconds, n))
        plain_s = statistics.median(p["total_s"] for p in plains)
        checked_s = statistics.median(c["total_s"] for c in checkeds)
        checked = checkeds[-1]
        metrics["uninterrupted_without_checkpoints_s"] = round(plain_s, 2)
        metrics["uninterrupted_with_checkpoints_s"] = round(checked_s, 2)
        metrics["checkpoint_overhead_pct"] = round(100 * (checked_s / plain_s - 1), 1) + 0.0  # no -0.0
        notes.append(
            "uninterrupted runs (s): without "
            + ", ".join(f"{p['total_s']:.1f}" for p in plains)
            + "; with "
            + ", ".join(f"{c['total_s']:.1f}" for c in checkeds)
        )
        metrics["checkpoints_saved"] = checked["saved"]
        metrics["checkpoint_uploaded_mb"] = round(checked["uploaded_mb"], 1)
        metrics["project_folder_mb"] = round(checked["project_mb"], 1)
        notes.append(f"load average after the uninterrupted runs: {os.getloadavg()[0]:.2f}")
    targets = {
        "checkpoint_overhead_pct": "< 5 %",
        "killed_to_completed_with_checkpoints_s": f"about {kill_at:.0%} + lease + {1 - kill_at:.0%}+ of a run",
    }
    params = {
        "seconds": seconds,
        "kill_at": kill_at,
        "overhead_seconds": overhead_seconds,
        "stage_mb": stage_mb,
        "storage": storage,
        "repeats": repeats,
    }
    return result("checkpoints", params, metrics, targets, notes)


def timed_images(folder: Path, seconds: float) -> list[str]:
    """Three images, and one whose name sets the stand-in's run length for this task."""
    images = make_images(folder, 3, 20_000)
    timer = folder / f"simulate-seconds-{seconds:g}.jpg"
    timer.write_bytes(Path(images[0]).read_bytes())
    return [*images, str(timer)]


def _killed_run(bench: BenchFarm, seconds: float, kill_at: float) -> dict[str, Any]:
    try:
        farm = bench.farm
        images = timed_images(bench.tmp / "killed", seconds)
        created = time.monotonic()
        task = bench.node().create_task(images, {"dsm": True})
        first = wait_claim(farm, task.uuid, timeout=60)
        wait_phase(farm, first, task.uuid, "engine", timeout=60)
        time.sleep(seconds * kill_at)
        if phase(farm, first, task.uuid) != "engine":
            return {"error": f"the engine was no longer running at {kill_at:.0%}"}
        killed = time.monotonic()
        kill_worker(farm, first.worker)
        second = wait_claim(farm, task.uuid, exclude=[first.run_id], timeout=60)
        info = wait_for_status(bench.url, bench.token, task.uuid, timeout=seconds * 3 + 60)
        done = time.monotonic()
        if info["status"]["code"] != 40:
            return {"error": f"ended {info['status']}"}
        lines = bench.farm.get(f"/task/{task.uuid}/output").json()
        resume_line = next((x for x in lines if "Resuming from checkpoint" in x), "(no resume)")
        return {
            "total_s": done - created,
            "second_s": done - second.at,
            "takeover_s": second.at - killed,
            "resume_line": resume_line,
        }
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        return {"error": f"{type(exc).__name__}: {exc}"}


def _uninterrupted(bench: BenchFarm, seconds: float, n: int) -> dict[str, Any]:
    images = timed_images(bench.tmp / f"uninterrupted-{n}", seconds)
    created = time.monotonic()
    task = bench.node().create_task(images, {"dsm": True})
    info = wait_for_status(bench.url, bench.token, task.uuid, timeout=seconds * 3 + 60)
    total = time.monotonic() - created
    if info["status"]["code"] != 40:
        raise harness.BenchError(f"uninterrupted task ended {info['status']}")
    lines = bench.farm.get(f"/task/{task.uuid}/output").json()
    saved = [x for x in lines if x.startswith("Checkpoint saved after stage")]
    uploaded = sum(float(x.rsplit(", ", 1)[1].split(" MB")[0]) for x in saved)
    store = bench.store()
    prefix = f"{task.uuid}/checkpoints/"
    project = sum(size for _key, size in store.list(prefix))
    return {"total_s": total, "saved": len(saved), "uploaded_mb": uploaded, "project_mb": project / 1e6}


def write_results(res: dict[str, Any], folder: Path = RESULTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Checkpoints benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {res['machine']['cpus']} CPUs · "
        f"load average {res['machine']['load_avg_1m']} at the end",
        "",
        "Parameters: " + ", ".join(f"{k}={v}" for k, v in res["params"].items()) + ".",
        "",
        "| figure | value | target |",
        "|---|---:|---|",
        *[f"| {k} | {harness.fmt(v)} | {res['targets'].get(k, '')} |" for k, v in res["metrics"].items()],
        "",
        *[f"- {note}" for note in res["notes"]],
    ]
    (folder / "checkpoints.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the killed run (default 60)")
    parser.add_argument("--kill-at", type=float, default=0.8, help="fraction of the run at the kill (0.8)")
    parser.add_argument(
        "--overhead-seconds", type=float, default=30.0, help="length of the uninterrupted runs (default 30)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="uninterrupted runs per farm (default 2)")
    parser.add_argument(
        "--stage-mb", type=float, default=5.0, help="MB each computed stage writes (default 5)"
    )
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    args = parser.parse_args()
    res = run(args.seconds, args.kill_at, args.overhead_seconds, args.stage_mb, args.storage, args.repeats)
    print_result(res)
    write_results(res)


if __name__ == "__main__":
    main()
