"""Benchmark: PyODM create_task upload throughput, the API's CPU and memory, and the S3 server on its own.

Uploads count × size MB random JPEG-named images with PyODM's create_task (its default 10 parallel
uploads, one image per request, then the commit) `--repeat` times on one farm, and reports the median and
best MB/s from the start of create_task to the commit returning. Each upload is a new task whose stored
bytes and image count are checked. No worker runs, so only the API works during the upload.

- `api_cpu_s`: CPU seconds (user + system) of the API processes (gunicorn master + workers) per upload;
  `client_cpu_s` the same for this process (PyODM). Less sensitive to other load than MB/s.
- The API processes' summed RSS is sampled every 50 ms; growth is the peak over the RSS before the uploads.
- With S3, the same images are also put straight into the same S3 server with boto3 (`put_object`, the
  same `--parallel` threads, the farm's own client settings), alternating with the farm's uploads so both
  see the same machine: `s3_alone_mb_s`, and `farm_of_s3_alone_pct` = farm MB/s / alone MB/s.

    .venv/bin/python bench/bench_upload.py                       # 100 x 2 MB: local storage, then S3 (~1 min)
    .venv/bin/python bench/bench_upload.py --storage local
    .venv/bin/python bench/bench_upload.py --storage s3 --count 200 --size 5 --repeat 1   # issue 3: memory
    .venv/bin/python bench/bench_upload.py --storage local --client odm-farm --parallel 4  # the CLI's upload

With `--client odm-farm` the upload goes through the `odm-farm submit` code (odm_farm.transfer: each image
streamed from disk, progress counted in bytes into a rich bar, as the command shows it); `progress_updates`
counts the bar's updates.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests
from harness import (
    MB,
    BenchError,
    BenchFarm,
    RssSampler,
    make_images,
    print_result,
    result,
    running_farm,
    tree,
)


def run(
    storage: str = "local",
    count: int = 100,
    size_mb: float = 2.0,
    parallel: int = 10,
    repeat: int = 3,
    client: str = "pyodm",
) -> dict[str, Any]:
    size = int(size_mb * MB)
    load_before = os.getloadavg()[0]
    with running_farm(storage=storage, workers=0) as farm:
        images = make_images(farm.tmp / "images", count, size)
        node = farm.node()
        for _ in range(20):  # every gunicorn worker has served a request before the baseline
            requests.get(f"{farm.url}/info", params={"token": farm.token}, timeout=10)
        farm_runs: list[dict[str, float]] = []
        updates: list[int] = []
        alone_runs: list[dict[str, float]] = []
        with RssSampler(farm.api_pid()) as rss:
            for _ in range(repeat):
                if client == "odm-farm":
                    farm_runs.append(_timed(farm, lambda: _cli_upload(farm, images, parallel, size, updates)))
                else:
                    farm_runs.append(_timed(farm, lambda: _pyodm_upload(farm, node, images, parallel, size)))
                if storage == "s3":
                    alone_runs.append(_timed(farm, lambda: _s3_alone(farm, images, parallel)))
        total_mb = count * size / MB
        metrics = _summary(farm_runs, total_mb, "upload")
        metrics.update(
            {
                "uploaded_mb": total_mb,
                "api_rss_before_mb": rss.baseline_mb,
                "api_rss_peak_mb": rss.peak_mb,
                "api_rss_growth_mb": rss.growth_mb,
                "api_rss_after_mb": rss.after_mb,
                "api_processes": len(farm.api_pids()),
            }
        )
        if updates:
            metrics["progress_updates"] = statistics.median(updates)
        if alone_runs:
            metrics.update(_summary(alone_runs, total_mb, "s3_alone"))
            metrics["farm_of_s3_alone_pct"] = 100 * metrics["upload_mb_s"] / metrics["s3_alone_mb_s"]
    targets = {
        "upload_mb_s": ">= 250 MB/s (issue 10, local storage)"
        if storage == "local"
        else ">= 150 MB/s where the S3 server allows it (issue 10)",
    }
    if storage == "s3":
        targets["api_rss_growth_mb"] = "< 50 MB (issue 3, S3 200 x 5 MB)"
    return result(
        f"upload_{storage}" + ("_cli" if client == "odm-farm" else ""),
        {
            "storage": storage,
            "count": count,
            "size_mb": size_mb,
            "parallel_uploads": parallel,
            "repeat": repeat,
            "client": client,
        },
        metrics,
        targets,
        notes=[
            f"median of {repeat} uploads (best: upload_best_mb_s); load average {load_before:.2f} before",
            f"API RSS sampled {rss.samples} times (every 50 ms)",
            *(
                ["s3_alone: boto3 put_object of the same files, same parallelism, alternating with the farm"]
                if alone_runs
                else []
            ),
        ],
    )


def _pyodm_upload(
    farm: BenchFarm, node: Any, images: list[str], parallel: int, size: int
) -> Callable[[], None]:
    task = node.create_task(images, parallel_uploads=parallel)

    def check() -> None:
        stored = sum(s for _, s in farm.store().list(f"{task.uuid}/inputs/"))
        info = task.info()
        if stored != len(images) * size or info.images_count != len(images):
            raise BenchError(
                f"stored {stored} bytes / {info.images_count} images, expected {len(images) * size} / {len(images)}"
            )

    return check


def _cli_upload(
    farm: BenchFarm, images: list[str], parallel: int, size: int, updates: list[int]
) -> Callable[[], None]:
    """The upload of `odm-farm submit`, its rich byte bar drawn into a buffer; counts the bar's updates."""
    import io

    from rich.console import Console

    from odm_farm import commands, transfer
    from odm_farm.client import RemoteNode

    count = 0
    bars = commands._progress(
        in_bytes=True, console=Console(file=io.StringIO(), force_terminal=True, width=120)
    )
    with bars:
        bar = bars.add_task(f"Uploading {len(images)} files", total=None)

        def progress(done: int, total: int | None) -> None:
            nonlocal count
            count += 1
            bars.update(bar, completed=done, total=total)

        task = transfer.upload_task(
            RemoteNode(farm.url, farm.token), [Path(p) for p in images], {}, progress, parallel=parallel
        )
    updates.append(count)

    def check() -> None:
        stored = sum(s for _, s in farm.store().list(f"{task.uuid}/inputs/"))
        if stored != len(images) * size:
            raise BenchError(f"stored {stored} bytes, expected {len(images) * size}")

    return check


def _s3_alone(farm: BenchFarm, images: list[str], parallel: int) -> Callable[[], None]:
    """The same files straight into the S3 server: read each into memory and put_object it, as PyODM does."""
    store: Any = farm.store()  # the farm's own client settings (signature, checksums, pool size)
    prefix = f"alone-{time.monotonic_ns()}/"

    def put(path: str) -> None:
        store.client.put_object(
            Bucket=farm.bucket, Key=prefix + Path(path).name, Body=Path(path).read_bytes()
        )

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(put, images))

    def check() -> None:
        listed = store.client.list_objects_v2(Bucket=farm.bucket, Prefix=prefix)
        sizes = [obj["Size"] for obj in listed.get("Contents", ())]
        if len(sizes) != len(images):
            raise BenchError(f"S3 alone: {len(sizes)} objects stored, expected {len(images)}")
        store.client.delete_objects(
            Bucket=farm.bucket, Delete={"Objects": [{"Key": prefix + Path(p).name} for p in images]}
        )

    return check


def _timed(farm: BenchFarm, upload: Callable[[], Callable[[], None]]) -> dict[str, float]:
    """Wall time and CPU of one upload: this process (the client), the API, and the S3 server if any."""
    servers = {"api": tree(farm.api_pid())}
    if farm.s3 is not None:
        servers["s3"] = tree(farm.s3.pid)
    cpu_before = {name: _cpu(procs) for name, procs in servers.items()}
    own_before = _own_cpu()
    started = time.perf_counter()
    check = upload()
    elapsed = time.perf_counter() - started
    figures = {"s": elapsed, "client_cpu_s": _own_cpu() - own_before}
    figures.update({f"{name}_cpu_s": _cpu(procs) - cpu_before[name] for name, procs in servers.items()})
    check()  # outside the timing
    return figures


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(runs: list[dict[str, float]], total_mb: float, name: str) -> dict[str, float]:
    speeds = [total_mb / run["s"] for run in runs]
    figures = {f"{name}_mb_s": statistics.median(speeds), f"{name}_best_mb_s": max(speeds)}
    figures[f"{name}_s"] = statistics.median(run["s"] for run in runs)
    for key in runs[0]:
        if key.endswith("_cpu_s"):
            figures[f"{name}_{key}"] = statistics.median(run[key] for run in runs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--count", type=int, default=100, help="images")
    parser.add_argument("--size", type=float, default=2.0, help="MB per image")
    parser.add_argument("--parallel", type=int, default=10, help="PyODM parallel_uploads (its default: 10)")
    parser.add_argument("--repeat", type=int, default=3, help="uploads per storage; the median is reported")
    parser.add_argument("--client", choices=["pyodm", "odm-farm"], default="pyodm")
    args = parser.parse_args()
    for storage in ("local", "s3") if args.storage == "both" else (args.storage,):
        print_result(run(storage, args.count, args.size, args.parallel, args.repeat, args.client))


if __name__ == "__main__":
    main()
