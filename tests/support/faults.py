"""Fault injection on a real farm: signal whole process trees by PID, watch runs, progress and leftovers.

Used by tests/faults/ and bench/bench_faults.py::

    pids = signal_tree(worker.proc.pid, signal.SIGKILL)      # the Celery main process and its engines
    claim = wait_claim(farm, uuid)                           # Claim(worker, run_id, at)
    with RunMonitor(farm, [uuid]) as runs: ...               # runs.overlaps: two runs of one task alive at once
    with ProgressRecorder(farm, [uuid]) as seen: ...         # seen.backwards(uuid): progress that went down
    leftovers(farm, uuid)                                    # Redis keys, set members, objects, scratch still there
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil
import requests

from tests.support.farm import Farm, Process

# --- processes --------------------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (engines run in their own session but stay children)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_tree(pid: int, sig: int) -> list[int]:
    """Send `sig` to a process and every descendant; returns their PIDs.

    For SIGKILL and SIGSTOP the parent is signalled first so that it cannot start or reap anything in between.
    """
    members = tree(pid)
    for proc in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    return [p.pid for p in members]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """PIDs still alive (not zombies) after `timeout` seconds."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        if left:
            time.sleep(0.02)
    return [p for p in left if alive(p)]


def kill_worker(farm: Farm, name: str) -> tuple[Process, list[int]]:
    """kill -9 a worker host: its Celery main process and every engine under it. Reaps the main process."""
    process = worker_process(farm, name)
    pids = signal_tree(process.proc.pid, signal.SIGKILL)
    process.proc.wait(10)
    return process, pids


def worker_process(farm: Farm, name: str) -> Process:
    """The latest process started for the worker `name` (its log file is <name>.log)."""
    return next(w for w in reversed(farm.workers) if w.log.stem == name)


def engine_processes(uuid: str) -> list[psutil.Process]:
    """Engine processes of a task on this machine (any run, any worker): their command line names the task."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(uuid in part for part in cmdline) and any("simulate_odm" in part for part in cmdline):
            found.append(proc)
    return found


# --- task records -----------------------------------------------------------------------------------


@dataclass
class Claim:
    worker: str
    run_id: str
    at: float  # time.monotonic() when the test saw it


def wait_claim(
    farm: Farm, uuid: str, exclude: Iterable[str] = (), timeout: float = 30, poll: float = 0.02
) -> Claim:
    """Wait until a worker has claimed a run of the task whose run id is not in `exclude`."""
    skip = set(exclude)
    deadline = time.monotonic() + timeout
    r = farm.redis
    last: list[Any] = []
    while time.monotonic() < deadline:
        last = r.hmget(f"odmfarm:task:{uuid}", "worker", "runId", "status")
        worker, run_id, _status = last
        if worker and run_id and run_id not in skip:
            return Claim(worker, run_id, time.monotonic())
        time.sleep(poll)
    raise AssertionError(
        f"no new claim of {uuid} (excluding {sorted(skip)}) within {timeout} s: {last}\n{farm.logs()}"
    )


def record(farm: Farm, uuid: str) -> dict[str, str]:
    return dict(farm.redis.hgetall(f"odmfarm:task:{uuid}"))


# --- where a run is -----------------------------------------------------------------------------------


def workdir(farm: Farm, worker: str, uuid: str, run_id: str) -> Path:
    return farm.root / worker / "scratch" / f"{uuid}-{run_id}"


def storage_dir(farm: Farm) -> Path:
    return Path(farm.env["ODM_FARM_STORAGE_DIR"])


def phase(farm: Farm, claim: Claim, uuid: str) -> str:
    """Which step the claimed run is in, read from its scratch folder and the store (local storage)."""
    folder = workdir(farm, claim.worker, uuid, claim.run_id)
    status = farm.redis.hget(f"odmfarm:task:{uuid}", "status")
    if status in ("30", "40", "50"):
        return "finished"
    if (storage_dir(farm) / uuid / "results").exists():
        return "store"
    if (folder / "all.zip").exists():
        return "zip"
    if (folder / "engine.pgid").exists():
        return "engine"
    if (folder / "project" / uuid / "odm_orthophoto").exists():
        return "postprocess"
    if (folder / "inputs").exists():
        return "fetch"
    return "claimed"


PHASES = ("fetch", "engine", "zip", "store")


def wait_phase(farm: Farm, claim: Claim, uuid: str, target: str, timeout: float = 30) -> str:
    """Poll (tightly: fetch, zip and store last milliseconds) until the run reaches `target` or goes past it."""
    order = ("claimed", "fetch", "engine", "postprocess", "zip", "store", "finished")
    deadline = time.monotonic() + timeout
    current = phase(farm, claim, uuid)
    while time.monotonic() < deadline:
        current = phase(farm, claim, uuid)
        if order.index(current) >= order.index(target):
            return current
        time.sleep(0.0005 if target != "engine" else 0.01)
    raise AssertionError(f"run {claim.run_id} of {uuid} never reached {target} (last {current})")


# --- watchers ---------------------------------------------------------------------------------------


@dataclass
class RunSpan:
    uuid: str
    run_id: str
    first: float
    last: float


class _Poller:
    """Calls `_poll()` every `interval` seconds in a daemon thread, from `with` entry to exit."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _poll(self) -> None:
        raise NotImplementedError


class RunMonitor(_Poller):
    """Samples which runs of the given tasks are alive, every `interval` seconds.

    A run is alive while its scratch folder exists and the worker process named in its worker.pid is alive,
    or while its engine process group has a live member. Two runs of one task alive in the same sample is an
    overlap: the task ran twice at once.
    """

    def __init__(self, farm: Farm, uuids: Iterable[str] = (), interval: float = 0.02) -> None:
        super().__init__(interval)
        self.farm = farm
        self.uuids = set(uuids)
        self.spans: dict[tuple[str, str], RunSpan] = {}
        self.overlaps: list[tuple[float, str, list[str]]] = []

    def watch(self, uuid: str) -> None:
        self.uuids.add(uuid)

    def sample(self) -> None:
        """One sample now, from the caller's thread: a run about to be killed is seen even if the poller is late."""
        self._poll()

    def _poll(self) -> None:
        now = time.monotonic()
        live: dict[str, list[str]] = {}
        for folder in self.farm.root.glob("*/scratch/*-*"):
            uuid, _, run_id = folder.name.rpartition("-")
            if uuid in self.uuids and _run_alive(folder):
                live.setdefault(uuid, []).append(run_id)
                span = self.spans.setdefault((uuid, run_id), RunSpan(uuid, run_id, now, now))
                span.last = now
        for uuid, runs in live.items():
            if len(runs) > 1:
                self.overlaps.append((now, uuid, sorted(runs)))

    def runs(self, uuid: str) -> list[RunSpan]:
        return sorted((s for s in self.spans.values() if s.uuid == uuid), key=lambda s: s.first)


def _run_alive(folder: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        if alive(int((folder / "worker.pid").read_text().strip())) and folder.exists():
            return True
    with contextlib.suppress(OSError, ValueError):
        pgid = int((folder / "engine.pgid").read_text().strip())
        return alive(pgid) or any(alive(p.pid) for p in tree(pgid)[1:])
    return False


@dataclass
class Sample:
    at: float
    status: int
    progress: float


class ProgressRecorder(_Poller):
    """Polls /task/{uuid}/info like a client (every `interval` s) and keeps what it saw."""

    def __init__(self, farm: Farm, uuids: Iterable[str] = (), interval: float = 0.05) -> None:
        super().__init__(interval)
        self.farm = farm
        self.uuids = list(uuids)
        self.samples: dict[str, list[Sample]] = {}
        self.errors: list[str] = []
        self._session = requests.Session()

    def watch(self, uuid: str) -> None:
        self.uuids.append(uuid)

    def _poll(self) -> None:
        for uuid in list(self.uuids):
            try:
                answer = self._session.get(
                    f"{self.farm.url}/task/{uuid}/info", params=self.farm.params(), timeout=10
                )
                if answer.status_code >= 500:
                    self.errors.append(f"{uuid}: HTTP {answer.status_code}")
                    continue
                info = answer.json()
            except (requests.RequestException, ValueError):
                continue  # the API may be down on purpose; a client would retry
            if "status" in info:
                self.samples.setdefault(uuid, []).append(
                    Sample(time.monotonic(), info["status"]["code"], float(info["progress"]))
                )

    def backwards(self, uuid: str) -> list[tuple[float, float]]:
        """(before, after) pairs where a later answer showed less progress than an earlier one."""
        seen = self.samples.get(uuid, [])
        highest, drops = 0.0, []
        for sample in seen:
            if sample.progress < highest:
                drops.append((highest, sample.progress))
            highest = max(highest, sample.progress)
        return drops


# --- what a task leaves behind --------------------------------------------------------------------------


def redis_leftovers(farm: Farm, uuid: str) -> list[str]:
    """Every odmfarm:* key naming the task, and every set/zset/list/hash under odmfarm:* that mentions it."""
    r = farm.redis
    found = [f"key {k}" for k in r.scan_iter(match=f"odmfarm:*{uuid}*", count=1000)]
    for key in r.scan_iter(match="odmfarm:*", count=1000):
        if uuid in key:
            continue
        kind = r.type(key)
        if kind == "set":
            members = list(r.smembers(key))
        elif kind == "zset":
            members = list(r.zrange(key, 0, -1))
        elif kind == "list":
            members = list(r.lrange(key, 0, -1))
        elif kind == "hash":
            members = [f"{k}={v}" for k, v in r.hgetall(key).items()]
        elif kind == "string":
            members = [r.get(key) or ""]
        else:
            members = []
        found += [f"{key} ({kind}): {m[:200]}" for m in members if uuid in m]
    return found


def stored_leftovers(farm: Farm, uuid: str) -> list[str]:
    """Objects (local storage) under the task's prefix, and scratch folders of the task on any worker."""
    root = storage_dir(farm) / uuid
    objects = (
        [str(p.relative_to(storage_dir(farm))) for p in root.rglob("*") if p.is_file()]
        if root.exists()
        else []
    )
    scratch = [str(p) for p in farm.root.glob(f"*/scratch/{uuid}-*")]
    return objects + scratch


def leftovers(farm: Farm, uuid: str) -> list[str]:
    return redis_leftovers(farm, uuid) + stored_leftovers(farm, uuid)


# --- odds and ends ------------------------------------------------------------------------------------


def seeded_rng(name: str) -> random.Random:
    """A seeded RNG; the seed is printed (pytest shows it on failure) and FAULTS_SEED replays it."""
    seed = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"{name}: random seed {seed} (replay with FAULTS_SEED={seed})")
    return random.Random(seed)


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """Keep processes SIGSTOPped for the duration of the block; SIGCONT them after, whatever happens."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@dataclass
class Timeline:
    """Named moments (monotonic seconds) of a test, printed on failure."""

    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str) -> float:
        now = time.monotonic()
        self.marks.append((what, now))
        return now

    def __str__(self) -> str:
        start = self.marks[0][1] if self.marks else 0.0
        return "\n".join(f"{t - start:8.3f}s {what}" for what, t in self.marks)
