"""Celery wiring both sides share: task names, queue names, the app factory, and the routing rule."""

from __future__ import annotations

from collections import Counter
from typing import Any

from celery import Celery

from shared.models import TaskStatus
from shared.settings import Settings
from shared.taskstore import Decide

PROCESS_TASK = "odm_farm.process"
QUEUE_CPU = "cpu"
QUEUE_GPU = "gpu"
QUEUES = (QUEUE_CPU, QUEUE_GPU)


def make_celery(settings: Settings, name: str = "odm_farm") -> Celery:
    """A Celery app bound to the farm's broker. Nothing connects until a task is sent or consumed."""
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=QUEUE_CPU,
        # Dispatch only: liveness is the task lease (DESIGN decision 3). The message is acknowledged when
        # its run ends, so with prefetch 1 a worker holds only the messages it is executing: a busy worker
        # never reserves a task that an idle one could start. A message that comes back (warm shutdown,
        # kill -9 and the broker's restore) carries a stale run id and is dropped by the pipeline.
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        # the Redis transport still reserves one message more than the pool runs (a busy 1-slot worker
        # held the next task while another worker was idle): fetch only while a thread is free
        worker_disable_prefetch=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 7 * 24 * 3600},
        broker_pool_limit=32,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )
    return app


def free_slots(workers: list[dict[str, Any]], active: list[tuple[str, str]]) -> dict[str, int]:
    """Slots free per queue now: live workers' slots, less the tasks they run and the tasks waiting for them.

    `active` is (queue, worker) of every QUEUED/RUNNING task (worker '' while unclaimed). A worker serving
    both queues (a GPU worker by default) is counted in both; a task waiting on the gpu queue will take
    one of its slots, so it counts against the cpu queue too when GPU workers also serve cpu.
    """
    busy = Counter(worker for _, worker in active if worker)
    waiting = Counter(queue or QUEUE_CPU for queue, worker in active if not worker)
    free = dict.fromkeys(QUEUES, 0)
    shared = 0  # free slots of workers that serve both queues
    for w in workers:
        own = max(0, int(w.get("slots", 0)) - busy[str(w.get("id") or w.get("name"))])
        served = [q for q in QUEUES if q in w.get("queues", ())]
        for q in served:
            free[q] += own
        if len(served) == len(QUEUES):
            shared += own
    free[QUEUE_GPU] -= waiting[QUEUE_GPU]
    free[QUEUE_CPU] -= waiting[QUEUE_CPU] + min(waiting[QUEUE_GPU], shared)
    return free


def gpu_eligible(options: list[dict[str, Any]]) -> bool:
    return not any(o.get("name") == "no-gpu" and o.get("value") is True for o in options)


def choose_queue(
    options: list[dict[str, Any]], workers: list[dict[str, Any]], active: list[tuple[str, str]] | None = None
) -> tuple[str, bool]:
    """The queue for a task and whether a slot is free for it there now (it reports RUNNING, else QUEUED).

    A task that may use a GPU goes to the gpu queue when a GPU worker has a free slot, else to the cpu
    queue, which every worker serves by default, so whichever kind frees a slot first takes it. The
    reaper moves a task waiting on a busy gpu queue to cpu when a CPU slot frees (workers/runtime.py).
    """
    free = free_slots(workers, active or [])
    serves_cpu = any(QUEUE_CPU in w.get("queues", ()) for w in workers)
    serves_gpu = any(QUEUE_GPU in w.get("queues", ()) for w in workers)
    if gpu_eligible(options) and serves_gpu and (free[QUEUE_GPU] > 0 or not serves_cpu):
        return QUEUE_GPU, free[QUEUE_GPU] > 0
    return QUEUE_CPU, free[QUEUE_CPU] > 0


def decide_for(options: list[dict[str, Any]], workers: list[dict[str, Any]]) -> Decide:
    """A store Decide rule: the task's queue, and RUNNING when a slot is free for it there, else QUEUED.

    ODM's split-merge client treats QUEUED right after commit as "node full" and takes the task back; so a
    task that a free slot will pick up at once reports RUNNING, and only a task that waits reports QUEUED.
    The store applies it in the same transaction as the write (commit, restart, re-queue).
    """

    def rule(active: list[tuple[str, str]]) -> tuple[str, TaskStatus]:
        queue, free = choose_queue(options, workers, active)
        return queue, TaskStatus.RUNNING if free else TaskStatus.QUEUED

    return rule
