"""Benchmark: scale-out — 1, 2, 4, 8 worker hosts and 1, 2 API replicas behind a real load balancer.

One Redis and one object store (SeaweedFS S3 by default: the worker hosts share no filesystem with the
API or each other); every worker is a Celery worker process of its own (``odm-farm worker``: 1 slot,
its own scratch and data folders, its own name and progress port, the production heartbeat and lease
settings) running the simulate engine with 2-second tasks; every API replica is gunicorn
(``odm-farm api``). haproxy (Debian's package; installed with apt-get when missing and running as root)
spreads the clients' requests over the replicas. Tasks are created through the load balancer with raw
HTTP: init, upload of one tiny image, commit, from 4 client threads.

Each round (W workers, A replicas): all tasks are submitted at once and the round ends when the last one
is COMPLETED. Figures per round:

- ``tasks_per_min``: tasks / (first commit → last COMPLETED) × 60; ``scaling``: against 1 worker (linear =
  W); ``efficiency`` = scaling / W.
- ``dispatch_idle_p50/p95_ms``: commit returning → a worker claiming the task (its ``startedAt``), for
  tasks committed one at a time to an idle farm (a probe after the round, with 0-second tasks).
- ``handoff_p50/p95_ms``: with a backlog, a worker's previous task COMPLETED → its next task claimed (the
  Celery ack, fetching the next message, the claim).
- ``overhead_p50/p95_ms``: the farm's own time per task: handoff + (claim → engine started) + (engine
  exited → COMPLETED), from the task records and the workers' JSON event logs. The engine's own time
  (its process, including Python's start-up and the stand-in writing its outputs) is ``engine_p50_ms``.
- ``cycle_minus_2s_ms``: wall time per task per worker minus the engine's 2 s (W × window / tasks − 2000):
  everything, engine start-up and the submission ramp included.
- ``redis_ops_per_task``: Redis ``total_commands_processed`` delta over the round / tasks (the bench's own
  few commands subtracted); the top commands from ``INFO commandstats`` are in the notes.

Run on its own, it also writes bench/results/scaleout.json and scaleout.md (``--save NAME`` for another name).

    .venv/bin/python bench/bench_scaleout.py            # quick: fewer tasks on small rounds (~4 min)
    .venv/bin/python bench/bench_scaleout.py --full     # 200 tasks every round (~15 min)
    .venv/bin/python bench/bench_scaleout.py --workers 1 2 --tasks 20 --storage local
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from harness import (
    RESULTS,
    TOKEN,
    BenchError,
    _stop_popen,
    median,
    percentile,
    print_result,
    result,
    write_random,
)

from odm_farm.redis_server import free_port, start_redis
from shared.models import TaskStatus
from shared.taskstore import Keys
from tests.support.farm import Farm, farm_env, free_udp_port
from tests.support.s3_server import WeedProcess

ENGINE_SECONDS = 2.0
CLIENT_THREADS = 4
PROBES = 12  # idle dispatch samples per round
QUICK_TASKS_PER_WORKER = 16  # quick mode: 16 × W tasks a round (each round takes about the same time)
FULL_TASKS = 200
# the pipeline's stage events, in order (workers/pipeline.py), between the claim and COMPLETED
STAGES = ("fetching inputs", "engine", "postprocessing", "zipping", "storing results", "task.finished")


# --- the load balancer ----------------------------------------------------------------------------
def haproxy_binary() -> str:
    """haproxy on PATH; installed from Debian's packages when missing and we are root."""
    found = shutil.which("haproxy")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "haproxy"], check=True, env=env, capture_output=True
        )
        found = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
    if not found:
        raise BenchError("haproxy is not installed: apt-get install haproxy (make bench does it)")
    return found


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server api{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    return f"""global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend farm
    bind 127.0.0.1:{port}
    default_backend apis
backend apis
    balance roundrobin
{servers}
"""


@contextlib.contextmanager
def load_balancer(folder: Path, backends: list[int]) -> Iterator[str]:
    """haproxy in the foreground on a free port, round-robin over the API ports; yields its URL."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"haproxy-{port}.cfg"
    config.write_text(haproxy_config(port, backends))
    log = open(folder / f"haproxy-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [haproxy_binary(), "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"haproxy did not start: {(folder / f'haproxy-{port}.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        _stop_popen(proc)
        log.close()


# --- the farm -------------------------------------------------------------------------------------
@dataclass
class ScaleFarm:
    farm: Farm
    tmp: Path
    redis: redis.Redis
    lbs: dict[int, str] = field(default_factory=dict)  # API replicas behind it -> LB URL

    def add_workers(self, total: int) -> None:
        while len(self.farm.workers) < total:
            name = f"worker{len(self.farm.workers) + 1}"
            # a host of its own: name, scratch, data folder, progress port; JSON logs for the stage times
            self.farm.start_worker(
                name,
                ODM_FARM_PROGRESS_PORT=str(free_udp_port()),
                ODM_FARM_LOG_FORMAT="json",
            )

    def worker_logs(self) -> list[Path]:
        return [w.log for w in self.farm.workers]


@contextlib.contextmanager
def scale_farm(storage: str, apis: int) -> Iterator[ScaleFarm]:
    tmp = Path(tempfile.mkdtemp(prefix="odm-bench-scale-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        port = free_port()
        redis_proc = start_redis(tmp / "redis", port, persistent=True)
        stack.callback(_stop_popen, redis_proc)
        extra: dict[str, str] = {}
        if storage == "s3":
            weed = WeedProcess(tmp / "weed")
            stack.callback(weed.stop)
            s3 = weed.start()
            extra = s3.env(s3.create_bucket())
        elif storage != "local":
            raise BenchError(f"unknown storage {storage!r}: local or s3")
        env = farm_env(tmp, f"redis://127.0.0.1:{port}/0", token=TOKEN, simulate_seconds=ENGINE_SECONDS)
        # the production timings (farm_env tunes them for quick tests): they set the background Redis load
        for name in ("HEARTBEAT_SECONDS", "WORKER_TTL", "LEASE_SECONDS", "API_WORKERS", "API_THREADS"):
            env.pop(f"ODM_FARM_{name}")
        env["ODM_FARM_WORKER_SLOTS"] = "1"
        env.update(extra)
        farm = Farm(tmp, env, token=TOKEN)
        stack.callback(farm.stop)
        for _ in range(apis):
            farm.start_api()
        client = redis.Redis(port=port, decode_responses=True)
        scale = ScaleFarm(farm, tmp, client)
        for count in range(1, apis + 1):
            scale.lbs[count] = stack.enter_context(load_balancer(tmp / "lb", farm.ports[:count]))
        yield scale


# --- clients --------------------------------------------------------------------------------------
def submit(session: requests.Session, url: str, image: Path, name: str) -> tuple[str, float]:
    """init, upload, commit through the load balancer; returns the uuid and when the commit returned."""
    params = {"token": TOKEN}
    init = session.post(f"{url}/task/new/init", params=params, data={"name": name}, timeout=60).json()
    if "uuid" not in init:
        raise BenchError(f"init: {init}")
    uuid = init["uuid"]
    with image.open("rb") as f:
        up = session.post(
            f"{url}/task/new/upload/{uuid}",
            params=params,
            files=[("images", (image.name, f, "image/jpeg"))],
            timeout=60,
        ).json()
    if up.get("success") is not True:
        raise BenchError(f"upload: {up}")
    done = session.post(f"{url}/task/new/commit/{uuid}", params=params, timeout=60).json()
    if done.get("uuid") != uuid:
        raise BenchError(f"commit: {done}")
    return uuid, time.time()


def submit_all(url: str, image: Path, count: int) -> dict[str, float]:
    local = threading.local()

    def one(i: int) -> tuple[str, float]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return submit(local.session, url, image, f"scale-{i}")

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return dict(pool.map(one, range(count)))


class RedisCounter:
    """Redis commands processed by everyone but us: we count our own and subtract them."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self.own = 0

    def info(self, section: str) -> dict[str, Any]:
        self.own += 1
        return dict(self.r.info(section))

    def total(self) -> int:
        return int(self.info("stats")["total_commands_processed"])

    def commandstats(self) -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in self.info("commandstats").items()}

    def wait_done(self, timeout: float) -> None:
        """Until no task is QUEUED or RUNNING: one SCARD of the active set per 0.1 s, counted as ours."""
        deadline = time.monotonic() + timeout
        while True:
            left = int(self.r.scard(Keys.active))
            self.own += 1
            if not left:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{left} task(s) still QUEUED or RUNNING after {timeout:.0f} s")
            time.sleep(0.1)

    def records(self, uuids: list[str]) -> dict[str, dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for uuid in uuids:
            pipe.hmget(Keys.task(uuid), "status", "startedAt", "processingTime", "worker", "errorMessage")
        self.own += len(uuids)
        keys = ("status", "startedAt", "processingTime", "worker", "errorMessage")
        return {u: dict(zip(keys, row, strict=True)) for u, row in zip(uuids, pipe.execute(), strict=True)}


def stage_times(logs: list[Path]) -> dict[str, dict[str, float]]:
    """Per task uuid, epoch seconds of its events in the workers' JSON logs: claimed, engine, postprocessing."""
    found: dict[str, dict[str, float]] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            name, uuid = entry.get("event"), entry.get("uuid")
            if not name or not uuid:
                continue
            key = entry.get("stage") if name == "task.stage" else name
            stamp = time.mktime(time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            found.setdefault(uuid, {})[key] = stamp + int(entry["time"][20:23]) / 1000
    return found


# --- one round ------------------------------------------------------------------------------------
def run_round(
    scale: ScaleFarm, workers: int, apis: int, tasks: int, image: Path, probe: Path
) -> dict[str, Any]:
    scale.add_workers(workers)
    url = scale.lbs[apis]
    counter = RedisCounter(scale.redis)
    load = round(os.getloadavg()[0], 2)
    before_stats = counter.commandstats()
    own_before = counter.own
    before = counter.total()
    started = time.time()
    committed = submit_all(url, image, tasks)
    uuids = list(committed)
    counter.wait_done(timeout=60 + tasks * ENGINE_SECONDS * 3 / workers)
    after = counter.total()
    after_stats = counter.commandstats()
    own = counter.own - own_before - 1  # the last commandstats came after `after`
    records = counter.records(uuids)
    failed = [u for u, r in records.items() if r["status"] != str(int(TaskStatus.COMPLETED))]
    if failed:
        raise BenchError(f"{len(failed)} task(s) did not complete, e.g. {records[failed[0]]}")
    stages = stage_times(scale.worker_logs())

    claimed = {u: int(r["startedAt"]) / 1000 for u, r in records.items()}
    ended = {u: claimed[u] + int(r["processingTime"]) / 1000 for u, r in records.items()}
    window = max(ended.values()) - min(committed.values())
    by_worker: dict[str, list[str]] = {}
    for uuid in sorted(uuids, key=claimed.__getitem__):
        by_worker.setdefault(records[uuid]["worker"], []).append(uuid)
    handoff, overhead, engine = [], [], []
    steps: dict[str, list[float]] = {}
    for runs in by_worker.values():
        for prev, uuid in zip(runs, runs[1:], strict=False):
            gap = claimed[uuid] - ended[prev]
            handoff.append(gap * 1000)
            marks = stages.get(uuid, {})
            if "engine" in marks and "postprocessing" in marks:
                engine_s = marks["postprocessing"] - marks["engine"]
                engine.append(engine_s * 1000)
                overhead.append((gap + ended[uuid] - claimed[uuid] - engine_s) * 1000)
                points = [("claimed", claimed[uuid])]
                points += [(k, marks[k]) for k in STAGES if k in marks]
                points.append(("completed", ended[uuid]))
                for (a, t0), (b, t1) in zip(points, points[1:], strict=False):
                    steps.setdefault(f"{a}->{b}", []).append((t1 - t0) * 1000)
    if not overhead:
        raise BenchError("no stage events in the worker logs: are they JSON (ODM_FARM_LOG_FORMAT=json)?")
    dispatch = probe_dispatch(scale, url, probe)
    top = sorted(((after_stats.get(k, 0) - before_stats.get(k, 0), k) for k in after_stats), reverse=True)[:8]
    return {
        "workers": workers,
        "apis": apis,
        "tasks": tasks,
        "load_avg_1m": load,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "seconds": round(time.time() - started, 1),
        "tasks_per_min": tasks / window * 60,
        "dispatch_idle_p50_ms": median(dispatch),
        "dispatch_idle_p95_ms": percentile(dispatch, 95),
        "handoff_p50_ms": median(handoff) if handoff else float("nan"),
        "handoff_p95_ms": percentile(handoff, 95) if handoff else float("nan"),
        "overhead_p50_ms": median(overhead),
        "overhead_p95_ms": percentile(overhead, 95),
        "engine_p50_ms": median(engine),
        "cycle_minus_2s_ms": workers * window / tasks * 1000 - ENGINE_SECONDS * 1000,
        "redis_ops_per_task": (after - before - own) / tasks,
        "redis_top_commands_per_task": {k: round(n / tasks, 1) for n, k in top if n > 0},
        "steps_p50_ms": {k: round(median(v), 1) for k, v in steps.items()},
    }


def probe_dispatch(scale: ScaleFarm, url: str, image: Path) -> list[float]:
    """commit → claimed (ms) for 0-second tasks committed one at a time to the idle farm."""
    counter = RedisCounter(scale.redis)
    session = requests.Session()
    times = []
    for i in range(PROBES):
        uuid, committed = submit(session, url, image, f"probe-{i}")
        counter.wait_done(timeout=60)
        record = counter.records([uuid])[uuid]
        times.append(int(record["startedAt"]) - committed * 1000)
    return times


# --- the benchmark ---------------------------------------------------------------------------------
def plan(worker_counts: list[int], full: bool, tasks: int | None) -> list[tuple[int, int, int]]:
    """(workers, API replicas, tasks) per round: every worker count behind 1 replica, the largest behind 2."""

    def count(w: int) -> int:
        return tasks or (FULL_TASKS if full else min(FULL_TASKS, QUICK_TASKS_PER_WORKER * w))

    rounds = [(w, 1, count(w)) for w in worker_counts]
    rounds.append((max(worker_counts), 2, count(max(worker_counts))))
    return rounds


def run(
    worker_counts: list[int] | None = None,
    full: bool = False,
    tasks: int | None = None,
    storage: str = "s3",
) -> dict[str, Any]:
    worker_counts = sorted(worker_counts or [1, 2, 4, 8])
    rounds = plan(worker_counts, full, tasks)
    haproxy_binary()  # fail early, before starting anything
    rows = []
    with scale_farm(storage, apis=2) as scale:
        images = scale.tmp / "images"
        images.mkdir()
        image = images / "tiny.jpg"
        write_random(image, 4096, header=b"\xff\xd8\xff\xe0")
        probe = images / "simulate-seconds-0.jpg"
        write_random(probe, 4096, header=b"\xff\xd8\xff\xe0")
        # warm-up: every API worker, the LB and the first worker have served a task before any figure
        scale.add_workers(1)
        for apis in scale.lbs:
            probe_dispatch(scale, scale.lbs[apis], probe)
        for workers, apis, count in rounds:
            print(f"   round: {workers} worker(s), {apis} API replica(s), {count} tasks", flush=True)
            row = run_round(scale, workers, apis, count, image, probe)
            print(f"   {json.dumps(row)}", flush=True)
            rows.append(row)
    return summarize(rows, worker_counts, full, tasks, storage)


def summarize(
    rows: list[dict[str, Any]], worker_counts: list[int], full: bool, tasks: int | None, storage: str
) -> dict[str, Any]:
    """The benchmark's result from its rounds (each round is also printed as one JSON line)."""
    base = rows[0]["tasks_per_min"] / rows[0]["workers"]
    metrics: dict[str, Any] = {}
    for row in rows:
        tag = f"w{row['workers']}_api{row['apis']}"
        metrics[f"{tag}_tasks_per_min"] = row["tasks_per_min"]
        metrics[f"{tag}_scaling"] = row["tasks_per_min"] / base
        metrics[f"{tag}_efficiency"] = row["tasks_per_min"] / base / row["workers"]
        for key in (
            "dispatch_idle_p50_ms",
            "dispatch_idle_p95_ms",
            "handoff_p50_ms",
            "handoff_p95_ms",
            "overhead_p50_ms",
            "overhead_p95_ms",
            "engine_p50_ms",
            "cycle_minus_2s_ms",
            "redis_ops_per_task",
            "load_avg_1m",
        ):
            metrics[f"{tag}_{key}"] = row[key]
    targets = {}
    for row in rows:
        tag = f"w{row['workers']}_api{row['apis']}"
        targets[f"{tag}_overhead_p50_ms"] = "< 50 ms (issue 10)"
        if row["workers"] <= (os.cpu_count() or 1):
            targets[f"{tag}_efficiency"] = "~1 up to the cores (issue 10)"
    notes = [
        f"{'full' if full else ('custom' if tasks else 'quick')} run: tasks per round "
        + ", ".join(f"{r['workers']}w/{r['apis']}api={r['tasks']}" for r in rows),
        f"{os.cpu_count()} CPUs shared by client, haproxy, APIs, workers, engines, Redis and S3 ({storage})",
    ]
    notes += [
        f"{r['workers']}w/{r['apis']}api: load {r['load_avg_1m']}→{r['load_avg_1m_after']}, {r['seconds']} s, "
        f"Redis commands per task: {r['redis_top_commands_per_task']}; p50 of the steps of a run (ms): "
        f"{r['steps_p50_ms']}"
        for r in rows
    ]
    params = {
        "workers": " ".join(map(str, worker_counts)),
        "apis": "1 2",
        "engine_seconds": ENGINE_SECONDS,
        "slots_per_worker": 1,
        "storage": storage,
        "mode": "full" if full else ("custom" if tasks else "quick"),
        "lb": "haproxy",
    }
    res = result("scaleout", params, metrics, targets, notes)
    res["rounds"] = rows
    return res


TABLE = (
    ("workers", "workers", "{}"),
    ("API replicas", "apis", "{}"),
    ("tasks", "tasks", "{}"),
    ("load avg", "load_avg_1m", "{:.1f}"),
    ("tasks/min", "tasks_per_min", "{:.1f}"),
    ("efficiency", "efficiency", "{:.2f}"),
    ("dispatch idle p50/p95 ms", ("dispatch_idle_p50_ms", "dispatch_idle_p95_ms"), "{:.1f} / {:.1f}"),
    ("handoff p50/p95 ms", ("handoff_p50_ms", "handoff_p95_ms"), "{:.0f} / {:.0f}"),
    ("overhead p50/p95 ms", ("overhead_p50_ms", "overhead_p95_ms"), "{:.0f} / {:.0f}"),
    ("engine p50 ms", "engine_p50_ms", "{:.0f}"),
    ("cycle − 2 s ms", "cycle_minus_2s_ms", "{:.0f}"),
    ("Redis cmds/task", "redis_ops_per_task", "{:.0f}"),
)


def markdown_table(res: dict[str, Any]) -> str:
    """One line per round: the figures of run() as a Markdown table."""
    rows = res["rounds"]
    base = rows[0]["tasks_per_min"] / rows[0]["workers"]
    lines = ["| " + " | ".join(title for title, _, _ in TABLE) + " |", "|" + "---:|" * len(TABLE)]
    for row in rows:
        values = {**row, "efficiency": row["tasks_per_min"] / base / row["workers"]}
        cells = []
        for _, keys, form in TABLE:
            picked = [values[k] for k in keys] if isinstance(keys, tuple) else [values[keys]]
            cells.append(form.format(*picked))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save(res: dict[str, Any], name: str) -> Path:
    """bench/results/<name>.json and .md (run_all.py writes latest.json with every benchmark)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (
        f"# Scale-out benchmark ({res['params']['mode']} run)\n\n{when} · {os.cpu_count()} CPUs · "
        + ", ".join(f"{k}={v}" for k, v in res["params"].items())
        + "\n\n"
        + markdown_table(res)
        + "\n"
        + "\n".join(f"- {note}" for note in res["notes"])
        + "\n"
    )
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help=f"{FULL_TASKS} tasks in every round")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tasks", type=int, help="tasks in every round (overrides --full and quick)")
    parser.add_argument("--storage", choices=["s3", "local"], default="s3")
    parser.add_argument("--save", default="scaleout", metavar="NAME", help="bench/results/NAME.json and .md")
    args = parser.parse_args()
    res = run(args.workers, args.full, args.tasks, args.storage)
    print_result(res)
    print(markdown_table(res))
    print(f"written: {save(res, args.save)}")


if __name__ == "__main__":
    main()
