"""Celery wiring both sides share: task names, queue names, the app factory, and the routing rule."""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.settings import Settings

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
        # Dispatch only: liveness is the task lease (DESIGN decision 3). The message is acknowledged when a
        # worker takes it; a worker that dies mid-run loses its lease and the reaper re-queues the task.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 7 * 24 * 3600},
        broker_pool_limit=32,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )
    return app


def choose_queue(options: list[dict[str, Any]], workers: list[dict[str, Any]]) -> str:
    """gpu when a live GPU worker serves the gpu queue and the task does not ask for no-gpu; else cpu."""
    wants_cpu = any(o.get("name") == "no-gpu" and o.get("value") is True for o in options)
    if not wants_cpu and any(QUEUE_GPU in w.get("queues", ()) for w in workers):
        return QUEUE_GPU
    return QUEUE_CPU
