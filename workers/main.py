"""The worker process: a Celery app on the cpu/gpu queues with a thread per slot, around one WorkerRuntime."""

from __future__ import annotations

import logging

from celery import Celery, signals

from shared import events
from shared.queue import PROCESS_TASK, make_celery
from shared.settings import Settings
from shared.storage import StorageError
from workers.engines.base import EngineError
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def build(settings: Settings) -> tuple[Celery, WorkerRuntime]:
    app = make_celery(settings, name="odm_farm_worker")
    runtime = WorkerRuntime(settings, app)

    @app.task(name=PROCESS_TASK, ignore_result=True)
    def process(uuid: str, run_id: str) -> str:
        from workers.pipeline import process as run_pipeline

        outcome = run_pipeline(runtime, uuid, run_id)
        log.info("task %s run %s: %s", uuid, run_id, outcome)
        return outcome

    return app, runtime


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    events.configure(settings.log_format, settings.secrets, loglevel)
    app, runtime = build(settings)
    try:
        runtime.start()
    except (EngineError, StorageError) as exc:
        raise SystemExit(f"odm-farm worker: cannot start: {exc}") from None
    signals.worker_shutting_down.connect(lambda **_: runtime.stop(), weak=False)
    try:
        app.worker_main(
            [
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(settings.worker_slots),
                "--queues",
                ",".join(runtime.queues),
                "--hostname",
                f"{runtime.id}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                loglevel,
                "--prefetch-multiplier",
                "1",
            ]
        )
    finally:
        runtime.stop()
