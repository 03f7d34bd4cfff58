"""Benchmark: upload throughput (PyODM's create_task, or the odm-farm client's) and the API's memory.

Uploads count × size MB random JPEG-named images with PyODM's create_task (its default 10 parallel
uploads, one image per request) and reports MB/s from the start of create_task to the commit returning.
With `--client odm-farm` the same upload goes through the `odm-farm submit` code (odm_farm.transfer:
each image streamed from disk, progress counted in bytes into a rich bar, as the command shows it), with
`--parallel 4`, the command's default.
The API processes' summed RSS (gunicorn master + workers) is sampled every 50 ms with psutil; growth is
the peak over the RSS just before the upload. No worker runs, so only the API works during the upload.

    .venv/bin/python bench/bench_upload.py                                  # 100 x 2 MB, local storage
    .venv/bin/python bench/bench_upload.py --storage s3 --count 200 --size 5  # issue 3: S3, < 50 MB growth
    .venv/bin/python bench/bench_upload.py --client odm-farm --parallel 4     # the CLI's upload
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import requests
from harness import MB, RssSampler, make_images, print_result, result, running_farm


def run(
    storage: str = "local", count: int = 100, size_mb: float = 2.0, parallel: int = 10, client: str = "pyodm"
) -> dict[str, Any]:
    size = int(size_mb * MB)
    updates = 0
    with running_farm(storage=storage, workers=0) as farm:
        images = make_images(farm.tmp / "images", count, size)
        node = farm.node()
        for _ in range(20):  # every gunicorn worker has served a request before the baseline
            requests.get(f"{farm.url}/info", params={"token": farm.token}, timeout=10)
        with RssSampler(farm.api_pid()) as rss:
            started = time.perf_counter()
            if client == "odm-farm":
                task, updates = _cli_upload(farm, images, parallel)
            else:
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
        if client == "odm-farm":
            metrics["progress_updates"] = updates
    targets = {"api_rss_growth_mb": "< 50 MB (issue 3, S3 200 x 5 MB)"} if storage == "s3" else {}
    return result(
        f"upload_{storage}" + ("_cli" if client == "odm-farm" else ""),
        {
            "storage": storage,
            "count": count,
            "size_mb": size_mb,
            "parallel_uploads": parallel,
            "client": client,
        },
        metrics,
        targets,
        notes=[f"API RSS sampled {rss.samples} times (every 50 ms)"],
    )


def _cli_upload(farm: Any, images: list[str], parallel: int) -> tuple[Any, int]:
    """The upload of `odm-farm submit`, its rich byte bar drawn into a buffer; returns the task and updates."""
    import io

    from rich.console import Console

    from odm_farm import commands, transfer
    from odm_farm.client import RemoteNode

    updates = 0
    bars = commands._progress(
        in_bytes=True, console=Console(file=io.StringIO(), force_terminal=True, width=120)
    )
    with bars:
        bar = bars.add_task(f"Uploading {len(images)} files", total=None)

        def progress(done: int, total: int | None) -> None:
            nonlocal updates
            updates += 1
            bars.update(bar, completed=done, total=total)

        node = RemoteNode(farm.url, farm.token)
        task = transfer.upload_task(node, [Path(p) for p in images], {}, progress, parallel=parallel)
    return task, updates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("--count", type=int, default=100, help="images")
    parser.add_argument("--size", type=float, default=2.0, help="MB per image")
    parser.add_argument("--parallel", type=int, default=10, help="files uploaded at once")
    parser.add_argument("--client", choices=["pyodm", "odm-farm"], default="pyodm")
    args = parser.parse_args()
    print_result(run(args.storage, args.count, args.size, args.parallel, args.client))


if __name__ == "__main__":
    main()
