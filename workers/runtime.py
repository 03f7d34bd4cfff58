"""A worker host's long-lived parts: clients, engine, heartbeat, progress listener, watchdog, reaper, janitor."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid as uuidlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery, signals

from shared import metrics, outbox
from shared.errors import TaskNotFound
from shared.events import event
from shared.models import TaskStatus
from shared.node import task_prefix
from shared.queue import PROCESS_TASK, QUEUE_CPU, QUEUE_GPU, decide_for, free_slots
from shared.safety import UnsafeInput, check_url, redact_url
from shared.settings import Settings
from shared.storage import ObjectStore, make_store
from shared.taskstore import Keys, TaskStore, new_run_id, now_ms
from workers.engines.base import Engine, EngineInfo
from workers.hostinfo import detect_gpu, host_facts
from workers.progress import ENGINE_SHARE
from workers.runner import Run, kill_tree
from workers.smproxy import ClusterProxy

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5
WEBHOOK_POLL_SECONDS = 0.5
PROGRESS_WRITE_SECONDS = 0.5  # ODM's progress datagrams for one task are stored at most this often
WEBHOOK_SENDERS = 4
SHUTDOWN = "worker shutting down"
KEPT_MARKER = "KEPT-FAILED"


@dataclass
class Job:
    """A task this worker is running right now."""

    uuid: str
    run_id: str
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    run: Run | None = None
    reason: str = ""
    checkpointer: Any = None  # workers.checkpoints.Checkpointer saving this run's project folder

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
        if self.run is not None:
            self.run.kill()


def make_engine(settings: Settings, gpu: bool) -> Engine:
    if settings.engine_name == "odm":
        from workers.engines.odm import OdmEngine

        return OdmEngine(
            Path(settings.odm_path or "/code"),
            python=settings.odm_python or None,
            max_concurrency=settings.max_concurrency,
            gpu=gpu,
        )
    from workers.engines.simulate import SimulateEngine

    return SimulateEngine(seconds=settings.simulate_seconds, progress_port=settings.progress_port)


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        celery: Celery,
        engine: Engine | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.settings = settings
        self.celery = celery
        self.tasks = TaskStore.from_url(settings.redis_url)
        self.store = store or make_store(settings)
        self.gpu = detect_gpu() if settings.worker_gpu is None else settings.worker_gpu
        self.queues = settings.worker_queues or ((QUEUE_GPU, QUEUE_CPU) if self.gpu else (QUEUE_CPU,))
        self.id = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}-{uuidlib.uuid4().hex[:6]}"
        self.scratch = settings.scratch_path
        self.engine = engine or make_engine(settings, self.gpu)
        self.engine_info: EngineInfo | None = None
        self.options_digest = ""
        self.jobs: dict[str, Job] = {}
        self.jobs_lock = threading.Lock()
        self.stopping = threading.Event()
        self.started_at = time.time()
        self.disk_note = ""  # why this worker takes no tasks now (scratch disk too full), or ""
        self._consumer: Any = None  # Celery's task consumer, once the worker is ready
        self._threads: list[threading.Thread] = []
        self.cluster: ClusterProxy | None = None  # split-merge's way back to the farm, token added there

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.store.check()
        self.clean_stale_scratch()
        self.engine_info = self.engine.describe()
        self.options_digest = self.tasks.publish_engine(self.engine_info.options)
        if self.settings.public_url:
            self.cluster = ClusterProxy(self.settings.public_url, self.settings.token)
            self.cluster.start()
        signals.worker_ready.connect(self._on_consumer_ready, weak=False)
        self.beat()
        for target in (
            self._webhook_loop,
            self._heartbeat_loop,
            self._watch_loop,
            self._cancel_listener,
            self._progress_listener,
            self._reaper_loop,
        ):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "worker %s ready: engine %s %s, queues %s, %d slot(s)",
            self.id,
            self.engine_info.name,
            self.engine_info.version,
            ",".join(self.queues),
            self.settings.worker_slots,
        )

    def stop(self) -> None:
        """Leave the farm: running tasks go back to the queue at once instead of waiting for their lease."""
        self.stopping.set()
        for job in self.running():
            job.cancel(SHUTDOWN)
        try:
            self.tasks.remove_worker(self.id)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            log.warning("could not deregister worker %s", self.id)
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def clean_stale_scratch(self) -> None:
        """Runs left behind by a previous worker process on this host: kill their engines, drop their files."""
        for folder in self.scratch.iterdir() if self.scratch.exists() else []:
            owner = folder / "worker.pid"
            if owner.exists() and _pid_alive(owner.read_text().strip()):
                continue  # another worker on this host is using it
            if (folder / KEPT_MARKER).exists():
                continue  # a failed run kept on purpose; the operator removes it
            pgid_file = folder / "engine.pgid"
            if pgid_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    kill_tree(int(pgid_file.read_text().strip()), grace=0.5)
            shutil.rmtree(folder, ignore_errors=True)

    # --- jobs -----------------------------------------------------------------------------
    def register(self, job: Job) -> None:
        with self.jobs_lock:
            self.jobs[job.uuid] = job

    def unregister(self, job: Job) -> None:
        with self.jobs_lock:
            if self.jobs.get(job.uuid) is job:
                del self.jobs[job.uuid]

    def running(self) -> list[Job]:
        with self.jobs_lock:
            return list(self.jobs.values())

    # --- heartbeat ------------------------------------------------------------------------
    def beat(self) -> None:
        note = self.check_disk()
        info: dict[str, Any] = {
            "id": self.id,
            "name": self.id,
            "queues": list(self.queues),
            "gpu": self.gpu,
            # a worker that takes no tasks offers no slot (tasks report QUEUED, the reaper does not re-send)
            "slots": 0 if note else self.settings.worker_slots,
            "accepting": not note,
            "note": note,
            "running": [j.uuid for j in self.running()],
            "engine": self.engine_info.name if self.engine_info else "",
            "engineVersion": self.engine_info.version if self.engine_info else "",
            "optionsDigest": self.options_digest,
            "startedAt": int(self.started_at * 1000),
            "lastBeat": int(time.time() * 1000),
        }
        info.update(host_facts(self.scratch))
        self.tasks.heartbeat(self.id, info)

    # --- scratch disk: a worker short of space stops taking tasks until space is freed ------------
    def low_disk_message(self) -> str:
        limit_mb = self.settings.min_free_disk_mb
        if not limit_mb:
            return ""
        try:
            free_mb = shutil.disk_usage(self.scratch).free // 2**20
        except OSError as exc:
            return f"Not taking tasks: scratch folder unusable ({exc})"
        if free_mb >= limit_mb:
            return ""
        return (
            f"Not taking tasks: {free_mb} MB free on the scratch disk, under the "
            f"{limit_mb} MB of ODM_FARM_MIN_FREE_DISK_MB"
        )

    def check_disk(self) -> str:
        """Stop or resume consuming the task queues as free scratch space crosses the setting."""
        note = self.low_disk_message()
        if note and not self.disk_note:
            log.warning("worker %s: %s", self.id, note)
        elif self.disk_note and not note:
            log.info("worker %s: scratch disk has room again, taking tasks", self.id)
        changed = bool(note) != bool(self.disk_note)
        self.disk_note = note
        if changed and self._consumer is not None:
            self._in_consumer(self._set_consuming)
        return note

    def _on_consumer_ready(self, sender: Any = None, **_: Any) -> None:
        self._consumer = sender
        self._set_consuming()  # runs in the consumer's thread: a full disk at start takes nothing

    def _in_consumer(self, fn: Any) -> None:
        # kombu consumers are not thread-safe: run on the consumer's event loop when there is one
        hub = getattr(self._consumer, "hub", None)
        if hub is not None:
            hub.call_soon(fn)
        else:
            fn()

    def _set_consuming(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for queue in self.queues:
            try:
                if self.disk_note:
                    consumer.cancel_task_queue(queue)
                else:
                    consumer.add_task_queue(queue)
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
                log.warning("could not %s queue %s: %s", "pause" if self.disk_note else "resume", queue, exc)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.settings.heartbeat_seconds):
            _guard(self.beat)

    # --- watchdog: cancel flags, leases, max runtime ----------------------------------------
    def _watch_loop(self) -> None:
        renew_every = max(0.2, self.settings.lease_seconds / 3)
        last_renew = 0.0
        while not self.stopping.wait(WATCH_SECONDS):
            renew = time.monotonic() - last_renew >= renew_every
            if renew:
                last_renew = time.monotonic()
            _guard(lambda r=renew: self._watch_once(r))

    def _watch_once(self, renew: bool) -> None:
        jobs = self.running()
        if not jobs:
            return
        pipe = self.tasks.r.pipeline(transaction=False)  # reads only: no MULTI/EXEC around them
        for job in jobs:
            pipe.hmget(Keys.task(job.uuid), "status", "runId")
        states = pipe.execute()
        for job, (status, run_id) in zip(jobs, states, strict=True):
            if status is None:
                job.cancel("removed")
            elif run_id != job.run_id:
                job.cancel("superseded")
            elif int(status) == TaskStatus.CANCELED:
                job.cancel("canceled")
            elif renew and not self.tasks.renew_lease(
                job.uuid, job.run_id, self.settings.lease_seconds, worker=self.id
            ):
                job.cancel("lease lost")
            elif self.settings.max_runtime and time.monotonic() - job.started > self.settings.max_runtime:
                self._cancel_for_runtime(job)

    def _cancel_for_runtime(self, job: Job) -> None:
        limit = self.settings.max_runtime
        self.tasks.append_output(
            job.uuid,
            job.run_id,
            [f"Task exceeded this node's maximum runtime of {limit:g} seconds and was cancelled."],
        )
        ended = self.tasks.transition(
            job.uuid,
            TaskStatus.CANCELED,
            run_id=job.run_id,
            allowed=(TaskStatus.QUEUED, TaskStatus.RUNNING),
            errorMessage=f"Maximum runtime of {limit:g} seconds exceeded",
        )
        job.cancel("max runtime")
        if ended.ok:
            metrics.task_ended(self.tasks.r, "cancelled", self.tasks.field(job.uuid, "startedAt"))
            event(
                log,
                "task.finished",
                uuid=job.uuid,
                worker=self.id,
                run=job.run_id,
                outcome="cancelled",
                reason="maximum runtime exceeded",
            )
            self.notify_end(job.uuid)

    def _cancel_listener(self) -> None:
        while not self.stopping.is_set():
            try:
                pubsub = self.tasks.r.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(Keys.cancel_channel)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        with self.jobs_lock:
                            job = self.jobs.get(str(message["data"]))
                        if job is not None:
                            job.cancel("canceled")
            except Exception as exc:  # noqa: BLE001 - reconnect after a Redis outage
                log.warning("cancel listener: %s; reconnecting", exc)
                self.stopping.wait(1.0)

    # --- ODM progress datagrams -------------------------------------------------------------
    def _progress_listener(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # several workers on one host share ODM's fixed port; whichever receives a datagram records it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", self.settings.progress_port))
        sock.settimeout(PROGRESS_WRITE_SECONDS / 2)
        # the latest value per task and run not stored yet: Redis unavailable, or stored less than
        # PROGRESS_WRITE_SECONDS ago (a burst of datagrams is one write of its highest value)
        held: dict[tuple[str, str], float] = {}
        written: dict[tuple[str, str], float] = {}  # when each task's progress was last stored (monotonic)
        while not self.stopping.is_set():
            try:
                data, _ = sock.recvfrom(1024)
            except OSError:  # includes the timeout: time to store what is held
                data = b""
            parsed = parse_datagram(data) if data else None
            run_id = engine_run_id(parsed[1]) if parsed else None
            if parsed and run_id:  # a datagram of no engine run of this host's workers is dropped
                key = (parsed[0], run_id)
                held[key] = max(held.get(key, 0.0), parsed[2])
            now = time.monotonic()
            for key, value in list(held.items()):
                uuid, run = key
                if value < 100 and now - written.get(key, -PROGRESS_WRITE_SECONDS) < PROGRESS_WRITE_SECONDS:
                    continue
                try:
                    # a superseded run's engine still running somewhere never moves the task's progress
                    self.tasks.set_progress(uuid, value * ENGINE_SHARE, run_id=run)
                except Exception as exc:  # noqa: BLE001 - Redis restarting: keep the value, retry later
                    log.warning("progress of %s held back: %s", uuid, exc)
                    break
                written[key] = now
                if held.get(key) == value:
                    del held[key]
            if len(written) > 1000:  # forget tasks not heard from for a while
                written = {k: t for k, t in written.items() if now - t < 60}

    # --- webhooks -------------------------------------------------------------------------
    def _webhook_loop(self) -> None:
        # claim no more than the senders can start now: a claimed delivery waiting in the pool past its
        # visibility window would be claimed again and posted twice
        sending: set[Future[Any]] = set()
        with ThreadPoolExecutor(max_workers=WEBHOOK_SENDERS, thread_name_prefix="webhook") as pool:
            while not self.stopping.wait(WEBHOOK_POLL_SECONDS):
                sending = {f for f in sending if not f.done()}
                free = WEBHOOK_SENDERS - len(sending)
                if free <= 0:
                    continue
                claimed = _guard(lambda n=free: outbox.claim(self.tasks.r, n, outbox.VISIBILITY_SECONDS))
                for member in claimed or []:
                    sending.add(pool.submit(_guard, lambda m=member: self.deliver(m)))

    def deliver(self, member: str) -> bool:
        """One attempt at one queued webhook; re-scheduled with backoff on failure."""
        from workers.webhooks import send_webhook

        entry = json.loads(member)
        try:
            check_url(entry["url"], self.settings.blocked_networks)
        except UnsafeInput as exc:
            log.warning("webhook %s dropped: %s", redact_url(entry["url"]), exc)
            outbox.delivered(self.tasks.r, member)
            metrics.count(self.tasks.r, "webhook_failures")
            self._webhook_event(entry, "webhook.failed", reason=str(exc), retry=False)
            return False
        problems: list[str] = []
        blocked = self.settings.blocked_networks
        if send_webhook(entry["url"], entry["payload"], blocked, retries=1, on_failure=problems.append):
            outbox.delivered(self.tasks.r, member)
            self._webhook_event(entry, "webhook.sent")
            return True
        again = outbox.failed(self.tasks.r, member)
        self._webhook_event(entry, "webhook.failed", reason=problems[-1] if problems else None, retry=again)
        return False

    def _webhook_event(self, entry: dict[str, Any], name: str, **fields: Any) -> None:
        payload = entry.get("payload") or {}
        event(
            log,
            name,
            level=logging.INFO if name == "webhook.sent" else logging.WARNING,
            uuid=payload.get("uuid"),
            worker=self.id,
            url=redact_url(entry["url"]),
            attempt=int(entry.get("attempt", 0)) + 1,
            **fields,
        )

    # --- reaper and janitor -----------------------------------------------------------------
    def _reaper_loop(self) -> None:
        period = max(1.0, self.settings.lease_seconds / 2)
        last_janitor = 0.0
        while not self.stopping.wait(period):
            if not self.tasks.r.set(Keys.reaper_lock, self.id, nx=True, px=int(period * 1000)):
                continue
            _guard(self.reap)
            if time.monotonic() - last_janitor > 60:
                last_janitor = time.monotonic()
                _guard(self.janitor)

    def reap(self) -> list[str]:
        """Re-queue running tasks whose worker stopped renewing the lease; fail them after max attempts.

        Also re-sends the message of a task nobody has claimed although a worker serving its queue has had a
        free slot for a while: its message was lost (taken by a worker that died before claiming it). A
        second message for the same run is harmless: the first claim takes the lease, later ones are dropped.
        """
        requeued = []
        workers = self.tasks.live_workers(self.settings.worker_ttl)
        free_queues = {
            q
            for w in workers
            if len(w.get("running", ())) < int(w.get("slots", 0))
            for q in w.get("queues", ())
        }
        free = free_slots(workers, self.tasks.occupancy())
        # right after a Redis restart that this worker lived through, every lease and heartbeat may have
        # lapsed while Redis was down: give the live workers time to beat and take their leases again
        # before calling any of them lost
        window = self.settings.lease_seconds + 2 * self.settings.heartbeat_seconds
        # (Redis counts its uptime in whole seconds: one more keeps a worker started with Redis from waiting)
        settling = self.tasks.redis_uptime() + 1 < min(window, time.time() - self.started_at)
        grace_ms = 1000 * max(2 * self.settings.heartbeat_seconds, self.settings.lease_seconds) * 2
        for uuid in self.tasks.active_uuids():
            status, run_id, worker, queue, enqueued = self.tasks.r.hmget(
                Keys.task(uuid), "status", "runId", "worker", "queue", "enqueuedAt"
            )
            if not worker:
                queue = queue or QUEUE_CPU
                if queue == QUEUE_GPU and free[QUEUE_GPU] < 0 < free[QUEUE_CPU]:
                    # more tasks wait for a GPU than GPU workers have slots, and a CPU slot is free:
                    # the cpu queue (which GPU workers serve too) takes it now; the gpu message of this
                    # run is dropped by whoever gets it second
                    free[QUEUE_GPU] += 1
                    free[QUEUE_CPU] -= 1
                    self.tasks.update(uuid, run_id=run_id, queue=QUEUE_CPU, enqueuedAt=now_ms())
                    self.celery.send_task(PROCESS_TASK, args=[uuid, run_id], queue=QUEUE_CPU)
                    requeued.append(uuid)
                    log.info("task %s waited for a busy GPU; moved to the cpu queue", uuid)
                elif queue in free_queues and now_ms() - int(enqueued or 0) > grace_ms:
                    self.tasks.update(uuid, run_id=run_id, enqueuedAt=now_ms())
                    self.celery.send_task(PROCESS_TASK, args=[uuid, run_id], queue=queue)
                    requeued.append(uuid)
                    log.warning("task %s was never claimed; its message was sent again", uuid)
                continue
            if status != str(int(TaskStatus.RUNNING)) or settling or self.tasks.has_lease(uuid):
                continue
            if self.requeue(uuid, run_id, f"Worker {worker} stopped responding"):
                requeued.append(uuid)
                metrics.count(self.tasks.r, "lease_takeovers")
                event(
                    log,
                    "task.handed_over",
                    level=logging.WARNING,
                    uuid=uuid,
                    worker=worker,
                    run=run_id,
                    reaper=self.id,
                    reason="worker lost (lease expired)",
                )
        return requeued

    def requeue(self, uuid: str, run_id: str, why: str, count_attempt: bool = True) -> bool:
        """Hand a run that cannot finish here to another worker under a new run id; fail after max attempts.

        A run lost with its worker counts as an attempt; a run handed back by a worker that is shutting down
        (count_attempt=False) does not: stopping workers must never fail a task. The task goes to whichever
        queue has a free slot and reports RUNNING only when one is free for it, else QUEUED. Progress and
        the first start are kept (clients never see them go backwards).
        """
        attempt, options = self.tasks.r.hmget(Keys.task(uuid), "attempt", "options")
        attempts = int(attempt or 1)
        line = f"{why} during attempt {attempts}."
        if count_attempt and attempts >= self.settings.max_attempts:
            self.tasks.append_output(uuid, run_id, [line + " Giving up."])
            failed = self.tasks.transition(
                uuid,
                TaskStatus.FAILED,
                run_id=run_id,
                errorMessage=f"Processing was interrupted {attempts} times (worker lost)",
            )
            if failed.ok:
                metrics.task_ended(self.tasks.r, "failed", self.tasks.field(uuid, "startedAt"))
                event(
                    log,
                    "task.finished",
                    level=logging.WARNING,
                    uuid=uuid,
                    run=run_id,
                    outcome="failed",
                    reason=f"interrupted {attempts} times (worker lost)",
                )
                self.notify_end(uuid)
            return False
        new_run = new_run_id()
        self.tasks.append_output(uuid, run_id, [line + " Re-queued."])
        workers = self.tasks.live_workers(self.settings.worker_ttl)
        if self.stopping.is_set():
            workers = [w for w in workers if w.get("id") != self.id]
        moved = self.tasks.requeue_decided(
            uuid,
            decide_for(json.loads(options or "[]"), workers),
            allowed=(TaskStatus.RUNNING, TaskStatus.QUEUED),
            run_id=run_id,
            runId=new_run,
            attempt=attempts + 1 if count_attempt else attempts,
            worker=None,
            enqueuedAt=now_ms(),
        )
        if moved.ok:
            queue = self.tasks.field(uuid, "queue") or QUEUE_CPU
            self.celery.send_task(PROCESS_TASK, args=[uuid, new_run], queue=queue)
        return moved.ok

    def notify_end(self, uuid: str, images: Any = None) -> None:
        """Queue the webhooks of a task this worker just ended (the one transition that ended it).

        `images` is the list for the payload, or a function returning it, called only when a webhook
        goes out (a task without webhooks costs no read of its images.json).
        """
        try:
            record = self.tasks.get(uuid)
        except TaskNotFound:
            return
        if not (record.get("webhook") or self.settings.webhook):
            return
        listed = images() if callable(images) else images
        outbox.notify_task_end(
            self.tasks.r, record, self.settings.webhook, self.settings.webhook_retries, listed or []
        )

    def janitor(self) -> None:
        """Forget long-dead workers; delete finished tasks and abandoned uploads older than the cleanup period."""
        self.tasks.prune_workers(self.settings.worker_ttl)
        minutes = self.settings.cleanup_minutes
        if minutes <= 0:
            return
        cutoff = minutes * 60
        for uuid in self.tasks.finished_before(time.time() - cutoff):
            self.tasks.delete(uuid)
            self.store.delete_prefix(task_prefix(uuid))
            log.info("task %s removed after %d minutes", uuid, minutes)
        for uuid in self.tasks.stale_sessions(cutoff):
            self.tasks.drop_session(uuid)
            self.store.delete_prefix(task_prefix(uuid))
            log.info("abandoned upload %s removed", uuid)


def parse_progress(data: bytes) -> tuple[str, float] | None:
    """`PGUP/<pid>/<project name>/<float>` as ODM sends it: (name, progress); None for anything else."""
    parsed = parse_datagram(data)
    return (parsed[0], parsed[2]) if parsed else None


def parse_datagram(data: bytes) -> tuple[str, int, float] | None:
    """`PGUP/<pid>/<project name>/<float>`: (name, pid, progress 0-100); None for anything else."""
    try:
        text = data.decode("ascii").strip()
        tag, pid, name, value = text.split("/", 3)
        if tag != "PGUP":
            return None
        uuidlib.UUID(name)
        progress = float(value)
        sender = int(pid)
    except (UnicodeDecodeError, ValueError):
        return None
    if progress != progress:  # NaN
        return None
    return name, sender, min(100.0, max(0.0, progress))


RUN_ID_VARIABLE = "ODM_FARM_RUN_ID"  # set in every engine's environment (workers/pipeline.py)


def engine_run_id(pid: int) -> str | None:
    """The farm run an engine process on this host belongs to, from its environment; None when it is gone
    or no engine of ours (ODM and every process it starts inherit the variable)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = RUN_ID_VARIABLE.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode("ascii", errors="replace") or None
    return None


def _pid_alive(text: str) -> bool:
    try:
        pid = int(text)
    except ValueError:
        return False
    return pid != os.getpid() and _exists(pid)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _guard(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a background loop must survive a Redis hiccup
        log.warning("%s failed: %s", getattr(fn, "__name__", "background step"), exc)
        return None
