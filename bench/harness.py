"""Benchmark harness: starts a real farm (redis-server, S3, gunicorn API, Celery worker) and measures it.

Processes are started the way ``odm-farm up`` starts them (``python -m odm_farm.cli api|worker`` with
ODM_FARM_* variables, gunicorn gthread with the default worker and thread counts, a token) and stopped by
PID; every temporary folder is removed. The process helpers of tests/support are reused, not copied::

    with running_farm(storage="s3", workers=1, simulate_seconds=0) as farm:
        task = farm.run_task(make_images(farm.tmp / "img", 3, 20_000))
        with RssSampler(farm.api_pid()) as rss:
            ...
        rss.peak_mb

A result is a plain dict: ``result(name, params, metrics, targets, notes)``; run_all.py collects them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # the bench scripts run as files (python bench/x.py); tests.support lives beside the packages
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402

from odm_farm.redis_server import free_port, start_redis  # noqa: E402
from shared.models import TaskStatus  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import ObjectStore, make_store  # noqa: E402
from tests.support.farm import Farm, farm_env  # noqa: E402
from tests.support.s3_server import S3Server, WeedProcess  # noqa: E402

TOKEN = "bench-token"
MB = 1024 * 1024
RESULTS = ROOT / "bench" / "results"


class BenchError(RuntimeError):
    """A benchmark could not run or got a wrong answer from the farm."""


# --- the farm ------------------------------------------------------------------------------------
@dataclass
class BenchFarm:
    """A running farm: its processes, settings, and helpers to reach it."""

    farm: Farm
    tmp: Path
    s3: S3Server | None = None
    bucket: str = ""

    @property
    def url(self) -> str:
        return self.farm.url

    @property
    def token(self) -> str:
        return self.farm.token

    @property
    def env(self) -> dict[str, str]:
        return self.farm.env

    def settings(self) -> Settings:
        return Settings.from_env(self.farm.env)

    def store(self) -> ObjectStore:
        """The farm's object store, opened in this process (same settings as the API and workers)."""
        return make_store(self.settings())

    def node(self, api: int = 0) -> Any:
        return self.farm.node(api)

    def start_api(self, **env: str) -> str:
        """Another API process on the same Redis and store (e.g. with other settings); returns its URL."""
        port = free_port()
        self.farm.start_api(port, **env)
        return f"http://127.0.0.1:{port}"

    def api_pid(self, api: int = 0) -> int:
        """The gunicorn master of one API: odm-farm api exec()s gunicorn, keeping the PID."""
        return int(self.farm.apis[api].proc.pid)

    def api_pids(self, api: int = 0) -> list[int]:
        """The gunicorn master of one API and its workers."""
        master = psutil.Process(self.api_pid(api))
        return [master.pid, *(child.pid for child in master.children(recursive=True))]

    def run_task(self, images: Sequence[str], timeout: float = 120, api: int = 0, **options: Any) -> Any:
        """Create a task with PyODM and wait until it is COMPLETED; returns the PyODM Task."""
        task = self.node(api).create_task(list(images), options)
        info = wait_for_status(self.farm.urls()[api], self.token, task.uuid, timeout=timeout)
        if info["status"]["code"] != TaskStatus.COMPLETED:
            raise BenchError(f"task {task.uuid} ended with {info['status']}:\n{self.farm.logs()}")
        return task


@contextlib.contextmanager
def running_farm(
    storage: str = "local", apis: int = 1, workers: int = 1, token: str = TOKEN, **settings: Any
) -> Iterator[BenchFarm]:
    """Redis (with AOF, as odm-farm up runs it), optionally SeaweedFS S3, API(s) and worker(s)."""
    tmp = Path(tempfile.mkdtemp(prefix="odm-bench-"))
    defaults = Settings()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        port = free_port()
        redis_proc = start_redis(tmp / "redis", port, persistent=True)
        stack.callback(_stop_popen, redis_proc)
        extra: dict[str, str] = {}
        s3: S3Server | None = None
        bucket = ""
        if storage == "s3":
            weed = WeedProcess(tmp / "weed")
            stack.callback(weed.stop)
            s3 = weed.start()
            bucket = s3.create_bucket()
            extra = s3.env(bucket)
        elif storage != "local":
            raise BenchError(f"unknown storage {storage!r}: local or s3")
        # farm_env tunes the worker heartbeats for quick start-up; the API runs with the defaults of up
        env = farm_env(
            tmp,
            f"redis://127.0.0.1:{port}/0",
            token=token,
            api_workers=defaults.api_workers,
            api_threads=defaults.api_threads,
            **settings,
        )
        env.update(extra)
        farm = Farm(tmp, env, token=token)
        stack.callback(farm.stop)
        for _ in range(apis):
            farm.start_api()
        for _ in range(workers):
            farm.start_worker()
        yield BenchFarm(farm, tmp, s3, bucket)


def _stop_popen(proc: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait(5)


def wait_for_status(
    url: str,
    token: str,
    uuid: str,
    timeout: float = 120,
    interval: float = 0.05,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """Poll /task/{uuid}/info until the task is no longer QUEUED or RUNNING; returns the last info."""
    http = session or requests.Session()
    deadline = time.monotonic() + timeout
    while True:
        info = http.get(f"{url}/task/{uuid}/info", params={"token": token}, timeout=10).json()
        if "error" in info:
            raise BenchError(f"/task/{uuid}/info: {info['error']}")
        if info["status"]["code"] not in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            return dict(info)
        if time.monotonic() > deadline:
            raise BenchError(f"task {uuid} still {info['status']} after {timeout} s")
        time.sleep(interval)


# --- inputs --------------------------------------------------------------------------------------
def make_images(folder: Path, count: int, size: int, prefix: str = "img") -> list[str]:
    """count distinct random JPEG-named files of size bytes (incompressible, like real photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i + 1:04d}.jpg"
        write_random(path, size, header=b"\xff\xd8\xff\xe0")
        paths.append(str(path))
    return paths


def write_random(path: Path, size: int, header: bytes = b"") -> None:
    with open(path, "wb") as out:
        out.write(header)
        left = size - len(header)
        while left > 0:
            chunk = os.urandom(min(left, 8 * MB))
            out.write(chunk)
            left -= len(chunk)


# --- measuring -----------------------------------------------------------------------------------
class RssSampler:
    """Samples the summed RSS of a process and its descendants every interval seconds.

    The sampling runs in a forked process so that the client's threads (holding the GIL) cannot delay it.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = tree_rss(pid)
        self.peak = self.baseline
        self.last = self.baseline
        self.samples = 0
        self._conn: Any = None
        self._proc: Any = None

    def __enter__(self) -> RssSampler:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_sample_loop, args=(self.pid, self.interval, child), daemon=True)
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        peak, self.last, self.samples = self._conn.recv()
        self._proc.join(10)
        self._conn.close()
        self.peak = max(self.peak, peak, self.last)

    @property
    def baseline_mb(self) -> float:
        return self.baseline / MB

    @property
    def peak_mb(self) -> float:
        return self.peak / MB

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / MB

    @property
    def after_mb(self) -> float:
        return self.last / MB


def tree_rss(pid: int, processes: list[psutil.Process] | None = None) -> int:
    """RSS in bytes of a process plus all its descendants (processes that vanish meanwhile count 0)."""
    total = 0
    try:
        processes = processes or tree(pid)
    except psutil.Error:
        return 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _sample_loop(pid: int, interval: float, conn: Any) -> None:
    peak = last = samples = 0
    processes = tree(pid)
    while not conn.poll(interval):
        # listing children scans all of /proc: refresh it once a second, not at every sample
        if samples % 20 == 19:
            with contextlib.suppress(psutil.Error):
                processes = tree(pid)
        last = tree_rss(pid, processes)
        peak = max(peak, last)
        samples += 1
    conn.recv()
    last = tree_rss(pid)
    conn.send((max(peak, last), last, samples + 1))


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank on sorted values, as load generators report it)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --- results -------------------------------------------------------------------------------------
def result(
    name: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    targets: dict[str, str] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The dict every benchmark returns: metrics have their unit in the name (_ms, _mb_s, _mb, _s)."""
    return {
        "benchmark": name,
        "params": params,
        "metrics": metrics,
        "targets": targets or {},
        "notes": notes or [],
        "machine": machine(),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


def print_result(res: dict[str, Any]) -> None:
    print(f"== {res['benchmark']} ({', '.join(f'{k}={v}' for k, v in res['params'].items())})")
    for key, value in res["metrics"].items():
        target = res["targets"].get(key)
        print(f"   {key:40} {fmt(value):>12}" + (f"   target: {target}" if target else ""))
    for note in res["notes"]:
        print(f"   note: {note}")
    sys.stdout.flush()


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
