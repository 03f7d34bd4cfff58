"""The farm's Prometheus metrics: counters kept in one Redis hash, and the collector that serves them.

A farm runs several API replicas and workers on several hosts, so no process can keep a counter in memory:
each event is counted in Redis (HINCRBY/HINCRBYFLOAT on `Keys.metrics`) where it is decided, and any API
replica reads the same values. The collector turns that hash, the live workers' heartbeats and the queues
into prometheus-client metric families, so the text format is the library's own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shared.taskstore import Keys

log = logging.getLogger(__name__)

KEY = Keys.metrics

# task outcomes counted and timed; "cancelled" as Prometheus names go (the NodeODM status is CANCELED)
OUTCOMES = ("completed", "failed", "cancelled")
# seconds from a task's first start to its end: drone jobs take from minutes to a day
DURATION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)

COUNTERS = {
    "tasks_created": "tasks committed (uploads that became tasks)",
    "upload_bytes": "bytes of task inputs received by the API",
    "download_bytes": "bytes of task results sent by the API",
    "download_redirected_bytes": "bytes of task results asked for through a redirect to the object store "
    "(ODM_FARM_DOWNLOAD_REDIRECT: the range asked, or the whole file)",
    "webhook_failures": "webhook delivery attempts that failed",
    "lease_takeovers": "running tasks re-queued after their worker stopped renewing the lease",
}


def count(r: Any, name: str, amount: int = 1) -> None:
    """Add `amount` to the farm-wide counter `name` (one of COUNTERS)."""
    if amount:
        with _best_effort(name):
            r.hincrby(KEY, name, amount)


def task_ended(r: Any, outcome: str, started_ms: str | int | None, ended_ms: int | None = None) -> None:
    """Count a task that ended with `outcome` and time it from its first start (0 s if it never started).

    Call it only from the one transition that ended the task, so each end is counted once.
    """
    now = ended_ms if ended_ms is not None else int(time.time() * 1000)
    seconds = max(0.0, (now - int(started_ms)) / 1000) if started_ms else 0.0
    with _best_effort(f"tasks_{outcome}"):
        pipe = r.pipeline(transaction=True)  # the counter and its histogram move together
        pipe.hincrby(KEY, f"tasks_{outcome}", 1)
        for bound in DURATION_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(KEY, f"duration:{outcome}:{bound:g}", 1)  # cumulative, as exposed
        pipe.hincrby(KEY, f"duration:{outcome}:count", 1)
        pipe.hincrbyfloat(KEY, f"duration:{outcome}:sum", seconds)
        pipe.execute()


@contextlib.contextmanager
def _best_effort(name: str) -> Iterator[None]:
    # a metric is never worth failing the request or the run that it counts (Redis restarting)
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        log.warning("metric %s not counted: %s", name, exc)


class FarmCollector(Collector):
    """Everything /metrics shows, read from Redis at each scrape (`node` is a shared.node.Node)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        n = self.node
        r = n.tasks.r
        stored = r.hgetall(KEY)
        workers, active = n.tasks.live_workers_and_active(n.settings.worker_ttl)
        yield from _counters(stored)
        yield from _gauges(n, r, workers, active)
        yield from _per_queue(n, workers)
        yield from _per_worker(workers)


def _number(stored: dict[str, str], field: str) -> float:
    try:
        return float(stored.get(field) or 0)
    except ValueError:
        return 0.0


def _counters(stored: dict[str, str]) -> Iterator[Any]:
    tasks = CounterMetricFamily("odm_farm_tasks_ended", "tasks that ended, by outcome", labels=["outcome"])
    for outcome in OUTCOMES:
        tasks.add_metric([outcome], _number(stored, f"tasks_{outcome}"))
    yield tasks
    for name, help_text in COUNTERS.items():
        yield CounterMetricFamily(f"odm_farm_{name}", help_text, value=_number(stored, name))
    duration = HistogramMetricFamily(
        "odm_farm_task_duration_seconds",
        "seconds from a task's first start to its end (0 when it ended before starting), by outcome",
        labels=["outcome"],
    )
    for outcome in OUTCOMES:
        buckets = [
            (floatToGoString(b), _number(stored, f"duration:{outcome}:{b:g}")) for b in DURATION_BUCKETS
        ]
        buckets.append(("+Inf", _number(stored, f"duration:{outcome}:count")))
        duration.add_metric([outcome], buckets, _number(stored, f"duration:{outcome}:sum"))
    yield duration


def _gauges(n: Any, r: Any, workers: list[dict[str, Any]], active: int) -> Iterator[Any]:
    from shared import outbox

    running = sum(len(w.get("running", ())) for w in workers)
    values = {
        "odm_farm_tasks_active": (active, "tasks queued or running"),
        "odm_farm_tasks_running_on_workers": (running, "tasks a worker is processing now"),
        "odm_farm_tasks_total": (r.zcard(Keys.tasks), "tasks known to the farm"),
        "odm_farm_upload_sessions": (r.zcard(Keys.uploads), "uploads not committed yet"),
        "odm_farm_webhooks_pending": (outbox.pending(r), "webhook deliveries waiting or retrying"),
        "odm_farm_workers": (len(workers), "live workers"),
        "odm_farm_slots": (
            sum(int(w.get("slots", 0)) for w in workers),
            "tasks the live workers can run at once",
        ),
    }
    for name, (value, help_text) in values.items():
        yield GaugeMetricFamily(name, help_text, value=value)
    if workers:  # absent, not 0, when no worker is alive: 0 would page someone for a full disk
        yield GaugeMetricFamily(
            "odm_farm_worker_free_disk_bytes",
            "free scratch disk on the fullest live worker",
            value=min(int(w.get("freeDisk", 0)) for w in workers),
        )


def _per_queue(n: Any, workers: list[dict[str, Any]]) -> Iterator[Any]:
    from shared.queue import QUEUE_CPU, QUEUE_GPU

    waiting = {QUEUE_CPU: 0, QUEUE_GPU: 0}
    for queue, worker in n.tasks.occupancy():
        if not worker:  # claimed tasks are running, not waiting in the queue
            waiting[queue or QUEUE_CPU] = waiting.get(queue or QUEUE_CPU, 0) + 1
    depth = GaugeMetricFamily(
        "odm_farm_queue_depth", "tasks waiting for a worker, by queue", labels=["queue"]
    )
    live = GaugeMetricFamily("odm_farm_queue_workers", "live workers serving the queue", labels=["queue"])
    slots = GaugeMetricFamily(
        "odm_farm_queue_slots", "slots of the live workers serving the queue", labels=["queue"]
    )
    for queue in sorted(waiting):
        serving = [w for w in workers if queue in w.get("queues", ())]
        depth.add_metric([queue], waiting[queue])
        live.add_metric([queue], len(serving))
        slots.add_metric([queue], sum(int(w.get("slots", 0)) for w in serving))
    yield from (depth, live, slots)


def _per_worker(workers: list[dict[str, Any]]) -> Iterator[Any]:
    free = GaugeMetricFamily(
        "odm_farm_worker_scratch_free_bytes", "free space on a live worker's scratch disk", labels=["worker"]
    )
    for w in workers:
        value = w.get("freeDisk")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            free.add_metric([str(w.get("id") or w.get("name") or "")], int(value))
    yield free
