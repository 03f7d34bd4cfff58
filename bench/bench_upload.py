"""Benchmark: PyODM create_task upload throughput and the API's memory while it streams the images.

Uploads count × size MB random JPEG-named images with PyODM's create_task (its default 10 parallel
uploads, one image per request) and reports MB/s from the start of create_task to the commit returning.
The API processes' summed RSS (gunicorn master + workers) is sampled every 50 ms with psutil; growth is
the peak over the RSS just before the upload. No worker runs, so only the API works during the upload.

    .venv/bin/python bench/bench_upload.py                                  # 100 x 2 MB, local storage
    .venv/bin/python bench/bench_upload.py --storage s3 --count 200 --size 5  # issue 3: S3, < 50 MB growth
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import requests
from harness import MB, RssSampler, make_images, print_result, result, running_farm


def run(storage: str = "local", count: int = 100, size_mb: float = 2.0, parallel: int = 10) -> dict[str, Any]:
    size = int(size_mb * MB)
    with running_farm(storage=storage, workers=0) as farm:
        images = make_images(farm.tmp / "images", count, size)
        node = farm.node()
        for _ in range(20):  # every gunicorn worker has served a request before the baseline
            requests.get(f"{farm.url}/info", params={"token": farm.token}, timeout=10)
        with RssSampler(farm.api_pid()) as rss:
            started = time.perf_counter()
            task = node.create_task(images, parallel_uploads=parallel)
            elapsed = time.perf_counter() - started
        stored = sum(s for _, s in farm.store().list(f"{task.uuid}/inputs/"))
        info = task.info()
        if stored != count * size or info.images_count != count:
            raise RuntimeError(
                f"stored {stored} bytes / {info.images_count} images, expected {count * size} / {count}"
            )
        total_mb = count * size / MB
        metrics = {
            "upload_mb_s": total_mb / elapsed,
            "upload_s": elapsed,
            "uploaded_mb": total_mb,
            "api_rss_before_mb": rss.baseline_mb,
            "api_rss_peak_mb": rss.peak_mb,
            "api_rss_growth_mb": rss.growth_mb,
            "api_rss_after_mb": rss.after_mb,
            "api_processes": len(farm.api_pids()),
        }
    targets = {"api_rss_growth_mb": "< 50 MB (issue 3, S3 200 x 5 MB)"} if storage == "s3" else {}
    return result(
        f"upload_{storage}",
        {"storage": storage, "count": count, "size_mb": size_mb, "parallel_uploads": parallel},
        metrics,
        targets,
        notes=[f"API RSS sampled {rss.samples} times (every 50 ms)"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("--count", type=int, default=100, help="images")
    parser.add_argument("--size", type=float, default=2.0, help="MB per image")
    parser.add_argument("--parallel", type=int, default=10, help="PyODM parallel_uploads")
    args = parser.parse_args()
    print_result(run(args.storage, args.count, args.size, args.parallel))


if __name__ == "__main__":
    main()
