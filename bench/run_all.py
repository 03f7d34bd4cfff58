"""Runs every benchmark, prints a summary and writes bench/results/latest.json and latest.md.

    .venv/bin/python bench/run_all.py                 # all, default sizes (a few minutes)
    .venv/bin/python bench/run_all.py --quick         # smaller sizes, to check the benchmarks work
    .venv/bin/python bench/run_all.py --only upload_s3 download

A benchmark that fails is recorded with its error and the others still run; the exit code is 1 then.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_api_latency
import bench_checkpoints
import bench_commit_to_complete
import bench_download
import bench_faults
import bench_hot_paths
import bench_scaleout
import bench_upload
import bench_webapp
from harness import RESULTS, ROOT, fmt, machine, print_result

Runner = Callable[[], dict[str, Any]]

# the figures the summary shows for each benchmark (all of them are in the per-benchmark tables)
HEADLINES = {
    "api_latency": [
        "info_1conn_requests_p50_ms",
        "info_1conn_httpclient_p50_ms",
        "info_1conn_wrk_p50_ms",
        "info_c32_p50_ms",
        "info_c32_p99_ms",
        "info_c32_requests_per_s",
        "task_info_c32_p50_ms",
        "task_info_c32_p99_ms",
        "task_info_c32_requests_per_s",
    ],
    "hot_paths": [
        "info_requests_per_s",
        "task_info_requests_per_s",
        "task_info_p99_ms",
        "task_info_api_cpu_us",
        "console1000_info_output990_requests_per_s",
        "console1000_output990_requests_per_s",
        "list_1_requests_per_s",
        "list_1000_page100_requests_per_s",
        "list_100000_page100_requests_per_s",
        "list_100000_requests_per_s",
    ],
    "upload_local": ["upload_mb_s", "upload_best_mb_s", "upload_api_cpu_s"],
    "upload_s3": ["upload_mb_s", "s3_alone_mb_s", "farm_of_s3_alone_pct", "upload_api_cpu_s"],
    "upload_s3_200x5": ["upload_mb_s", "api_rss_growth_mb"],
    "upload_local_cli": ["upload_mb_s", "progress_updates"],
    "download": [
        "s3_streamed_mb_s",
        "s3_redirect_mb_s",
        "local_streamed_mb_s",
        "s3_streamed_1stream_mb_s",
        "s3_redirect_1stream_mb_s",
        "local_streamed_1stream_mb_s",
        "s3_streamed_api_rss_growth_mb",
    ],
    "commit_to_complete": ["commit_to_completed_p50_ms", "processing_time_p50_ms", "dispatch_p50_ms"],
    "scaleout": [
        "w1_api1_tasks_per_min",
        "w2_api1_tasks_per_min",
        "w4_api1_tasks_per_min",
        "w8_api1_tasks_per_min",
        "w8_api2_tasks_per_min",
        "w2_api1_efficiency",
        "w1_api1_dispatch_idle_p50_ms",
        "w1_api1_overhead_p50_ms",
        "w2_api1_overhead_p50_ms",
        "w8_api1_overhead_p50_ms",
        "w1_api1_redis_ops_per_task",
    ],
    "webapp": ["load_to_rows_ms", "open_row_p50_ms", "next_page_p50_ms", "event_loop_lag_max_ms"],
    "faults": [
        "tasks_completed",
        "tasks_failed",
        "tasks_run_twice_at_once",
        "takeover_median_s",
        "takeover_worst_s",
        "redis_answers_5xx",
        "redis_recover_s",
    ],
    "checkpoints": [
        "killed_to_completed_with_checkpoints_s",
        "killed_to_completed_without_checkpoints_s",
        "checkpoint_overhead_pct",
    ],
}


def benchmarks(quick: bool) -> dict[str, Runner]:
    if quick:
        return {
            "api_latency": lambda: bench_api_latency.run(duration=3, sequential_count=500, warmup=1),
            "hot_paths": lambda: bench_hot_paths.run(duration=3, tasks=10_000),
            "upload_local": lambda: bench_upload.run("local", 20, 2, repeat=1),
            "upload_s3": lambda: bench_upload.run("s3", 20, 2, repeat=1),
            "upload_s3_200x5": lambda: bench_upload.run("s3", 20, 5, repeat=1),
            "upload_local_cli": lambda: bench_upload.run("local", 20, 2, 4, repeat=1, client="odm-farm"),
            "download": lambda: bench_download.run(100, "both"),
            "commit_to_complete": lambda: bench_commit_to_complete.run(3),
            "faults": lambda: bench_faults.run(3, redis_outage=3),
            "scaleout": lambda: bench_scaleout.run([1, 2], tasks=6),
            "webapp": lambda: bench_webapp.run(300, rows=3),
            "checkpoints": lambda: bench_checkpoints.run(20, overhead_seconds=10, stage_mb=1, repeats=1),
        }
    return {
        "api_latency": lambda: bench_api_latency.run(),
        "hot_paths": lambda: bench_hot_paths.run(),
        "upload_local": lambda: bench_upload.run("local", 100, 2),
        "upload_s3": lambda: bench_upload.run("s3", 100, 2),
        "upload_s3_200x5": lambda: bench_upload.run("s3", 200, 5, repeat=1),
        "upload_local_cli": lambda: bench_upload.run("local", 100, 2, 4, repeat=1, client="odm-farm"),
        "download": lambda: bench_download.run(500, "both"),
        "commit_to_complete": lambda: bench_commit_to_complete.run(10),
        "faults": lambda: bench_faults.run(20),
        # its quick mode (~4 min); bench_scaleout.py --full runs 200 tasks in every round
        "scaleout": lambda: bench_scaleout.run(),
        "webapp": lambda: bench_webapp.run(1000),
        "checkpoints": lambda: bench_checkpoints.run(),
    }


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"{report['date']} · commit {report['commit']} · {report['machine']['cpus']} CPUs, "
        f"{report['machine']['memory_gb']} GB · load average {report['load_before']} before, "
        f"{report['load_after']} after · {report['mode']} run, {report['seconds']:.0f} s",
        "",
        "Figures from a shared machine are noisy: compare runs on the same machine, and look at the load average.",
        "",
        "## Summary",
        "",
        "| benchmark | figure | value | target |",
        "|---|---|---:|---|",
    ]
    for res in report["results"]:
        if "error" in res:
            lines.append(f"| {res['benchmark']} | **failed** | | {res['error'].splitlines()[0]} |")
            continue
        for key in HEADLINES.get(res["benchmark"], list(res["metrics"])):
            if key in res["metrics"]:
                lines.append(
                    f"| {res['benchmark']} | {key} | {fmt(res['metrics'][key])} | "
                    f"{res['targets'].get(key, '')} |"
                )
    for res in report["results"]:
        lines += ["", f"## {res['benchmark']}", ""]
        if "error" in res:
            lines += ["```", res["error"].rstrip(), "```"]
            continue
        lines.append("Parameters: " + ", ".join(f"{k}={v}" for k, v in res["params"].items()) + ".")
        lines += ["", "| figure | value | target |", "|---|---:|---|"]
        lines += [f"| {k} | {fmt(v)} | {res['targets'].get(k, '')} |" for k, v in res["metrics"].items()]
        lines += [""] + [f"- {note}" for note in res["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for latest.json and latest.md")
    args = parser.parse_args()
    chosen = benchmarks(args.quick)
    if args.only:
        unknown = set(args.only) - set(chosen)
        if unknown:
            parser.error(
                f"unknown benchmark(s) {', '.join(sorted(unknown))}: choose from {', '.join(chosen)}"
            )
        chosen = {name: runner for name, runner in chosen.items() if name in args.only}

    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "load_before": round(os.getloadavg()[0], 2),
        "results": [],
    }
    failed = False
    for name, runner in chosen.items():
        print(f"-- running {name}", flush=True)
        try:
            res = runner()
            res["benchmark"] = name
            print_result(res)
        except Exception:
            failed = True
            res = {"benchmark": name, "error": traceback.format_exc()}
            print(f"!! {name} failed:\n{res['error']}", file=sys.stderr, flush=True)
        report["results"].append(res)
    report["load_after"] = round(os.getloadavg()[0], 2)
    report["seconds"] = time.monotonic() - started

    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "latest.json", json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    write_atomically(args.out / "latest.md", text)
    print("\n" + text[text.index("## Summary") : text.index("\n## ", text.index("## Summary") + 1)].rstrip())
    print(f"\nwritten: {args.out / 'latest.json'}, {args.out / 'latest.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
