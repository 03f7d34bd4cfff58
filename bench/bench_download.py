"""Benchmark: PyODM download_zip of a large all.zip, streamed through the API and redirected to S3.

A real task runs to COMPLETED with the simulate engine; its results/all.zip object is then replaced in
the store by a random file of --size MB. PyODM's download_zip fetches it (16 parallel 10 MB ranges, its
defaults) from an API that streams it (ODM_FARM_DOWNLOAD_REDIRECT=false) and, on S3, from a second API on
the same farm that answers 302 to a presigned URL (ODM_FARM_DOWNLOAD_REDIRECT=true). Every download is
checked byte for byte (sha256) outside the timing; the API's RSS growth while streaming is reported too.
A single plain GET read in 1 MB chunks (*_1stream_mb_s) shows what the API or S3 serves without PyODM.

    .venv/bin/python bench/bench_download.py [--size 500] [--storage both|s3|local]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

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
    write_random,
)

from shared.node import results_prefix


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(farm: BenchFarm, size: int) -> tuple[str, str]:
    """A COMPLETED task whose all.zip is a random object of size bytes; returns (uuid, sha256)."""
    task = farm.run_task(make_images(farm.tmp / "images", 3, 20_000))
    source = farm.tmp / "all.zip"
    write_random(source, size, header=b"PK\x03\x04")
    digest = sha256(source)
    run_id = farm.farm.redis.hget(f"odmfarm:task:{task.uuid}", "resultsRun")  # results of the run that completed
    farm.store().put_file(results_prefix(task.uuid, run_id) + "all.zip", source)
    source.unlink()
    return task.uuid, digest


def download(farm: BenchFarm, uuid: str, digest: str, size: int, api: int, label: str) -> dict[str, float]:
    """Time one PyODM download_zip from API number api; MB/s and the API's RSS growth."""
    task = farm.node(api).get_task(uuid)
    target = farm.tmp / f"download-{label}"
    with RssSampler(farm.api_pid(api)) as rss:
        started = time.perf_counter()
        path = Path(task.download_zip(str(target)))
        elapsed = time.perf_counter() - started
    try:
        if path.stat().st_size != size or sha256(path) != digest:
            raise BenchError(
                f"{label}: downloaded {path.stat().st_size} bytes that differ from the stored all.zip"
            )
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return {
        f"{label}_mb_s": size / MB / elapsed,
        f"{label}_s": elapsed,
        f"{label}_api_rss_growth_mb": rss.growth_mb,
    }


def single_stream(url: str, token: str, uuid: str, size: int, label: str) -> dict[str, float]:
    """One plain GET read in 1 MB chunks and discarded: what the API (or S3) serves without PyODM's costs."""
    started = time.perf_counter()
    received = 0
    with requests.get(
        f"{url}/task/{uuid}/download/all.zip", params={"token": token}, stream=True, timeout=60
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_content(MB):
            received += len(chunk)
    elapsed = time.perf_counter() - started
    if received != size:
        raise BenchError(f"{label}: one GET received {received} of {size} bytes")
    return {f"{label}_1stream_mb_s": size / MB / elapsed}


def check_redirect(url: str, token: str, uuid: str) -> None:
    response = requests.get(
        f"{url}/task/{uuid}/download/all.zip", params={"token": token}, allow_redirects=False, timeout=10
    )
    if response.status_code != 302:
        raise BenchError(f"the redirecting API answered {response.status_code}, not 302")


def run(size_mb: int = 500, storage: str = "both") -> dict[str, Any]:
    size = size_mb * MB
    metrics: dict[str, Any] = {}
    if storage in ("both", "s3"):
        with running_farm(storage="s3", simulate_seconds=0) as farm:
            uuid, digest = prepare(farm, size)
            redirect_url = farm.start_api(ODM_FARM_DOWNLOAD_REDIRECT="true")
            check_redirect(redirect_url, farm.token, uuid)
            metrics.update(download(farm, uuid, digest, size, 0, "s3_streamed"))
            metrics.update(download(farm, uuid, digest, size, 1, "s3_redirect"))
            metrics.update(single_stream(farm.url, farm.token, uuid, size, "s3_streamed"))
            metrics.update(single_stream(redirect_url, farm.token, uuid, size, "s3_redirect"))
    if storage in ("both", "local"):
        with running_farm(storage="local", simulate_seconds=0) as farm:
            uuid, digest = prepare(farm, size)
            metrics.update(download(farm, uuid, digest, size, 0, "local_streamed"))
            metrics.update(single_stream(farm.url, farm.token, uuid, size, "local_streamed"))
    return result(
        "download",
        {"size_mb": size_mb, "storage": storage, "client": "PyODM download_zip, 16 parallel 10 MB ranges"},
        metrics,
        notes=[
            "client, API and S3 server share this machine's CPUs",
            "*_1stream_mb_s: one plain GET read in 1 MB chunks; far above PyODM's figure, which is bound "
            "by PyODM itself (iter_content(4096) in 16 Python threads, then merging the part files)",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=500, help="all.zip size in MB")
    parser.add_argument("--storage", choices=["both", "s3", "local"], default="both")
    args = parser.parse_args()
    print_result(run(args.size, args.storage))


if __name__ == "__main__":
    main()
