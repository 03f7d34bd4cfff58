"""The node's business rules behind the NodeODM routes: sessions, uploads, commit, cancel, remove, restart, info."""

from __future__ import annotations

import json
import logging
import threading
import uuid as uuidlib
from typing import Any

import orjson
from celery import Celery

from shared import metrics, outbox
from shared import options as optionlib
from shared.accounts import NODE, Accounts, Caller
from shared.errors import InvalidRequest, TaskNotFound
from shared.events import event
from shared.models import TaskStatus
from shared.queue import PROCESS_TASK, QUEUE_CPU, decide_for
from shared.safety import UnsafeInput, normalize_outputs, safe_filename
from shared.settings import Settings
from shared.storage import ObjectStore
from shared.tasks import INFO_FIELDS, task_info_json
from shared.taskstore import Decide, Keys, TaskStore, count_images, is_image_name, new_run_id, now_ms

log = logging.getLogger(__name__)

API_VERSION = "2.2.4"


def inputs_prefix(uuid: str) -> str:
    return f"{uuid}/inputs/"


def results_prefix(uuid: str, run_id: str = "") -> str:
    """Where results live: each run writes under its own run id, so a late run can never overwrite another."""
    return f"{uuid}/results/{run_id}/" if run_id else f"{uuid}/results/"


def task_prefix(uuid: str) -> str:
    return f"{uuid}/"


class Node:
    """One farm as NodeODM clients see it. Stateless: everything lives in Redis and the object store."""

    def __init__(self, settings: Settings, tasks: TaskStore, store: ObjectStore, celery: Celery) -> None:
        self.settings = settings
        self.tasks = tasks
        self.store = store
        self.celery = celery
        self._catalogs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        self._catalog_lock = threading.Lock()
        self.accounts = Accounts(tasks.r, settings)
        self._lists: dict[str | None, tuple[str, bytes]] = {}  # index owner -> (version, /task/list body)
        self._lists_lock = threading.Lock()

    # --- workers, engines, options --------------------------------------------------------
    def live_workers(self) -> list[dict[str, Any]]:
        # not cached: a worker that just joined or left must show at once (routing, slots, /info)
        return self.tasks.live_workers(self.settings.worker_ttl)

    def catalog(self, workers: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Options every live engine accepts; the last published list when no worker is alive."""
        workers = self.live_workers() if workers is None else workers
        digests = tuple(sorted({w["optionsDigest"] for w in workers if w.get("optionsDigest")}))
        with self._catalog_lock:
            cached = self._catalogs.get(digests)
        if cached is None:
            cached = self._load_catalog(digests)
            with self._catalog_lock:
                self._catalogs = {digests: cached}  # one entry: the set of live engines rarely changes
        return cached

    def _load_catalog(self, digests: tuple[str, ...]) -> list[dict[str, Any]]:
        catalogs = [c for c in (self.tasks.engine_options(d) for d in digests) if c is not None]
        if not catalogs:
            last = self.tasks.r.get(Keys.engine_last)
            published = self.tasks.engine_options(last) if last else None
            catalogs = [published] if published else [optionlib.load_bundled_catalog()]
        return catalogs[0] if len(catalogs) == 1 else optionlib.merge_catalogs(catalogs)

    def info(self, caller: Caller = NODE) -> dict[str, Any]:
        workers, active = self.tasks.live_workers_and_active(self.settings.worker_ttl)
        engines = sorted({(w.get("engine", ""), w.get("engineVersion", "")) for w in workers})
        engine, version = engines[0] if engines else (self.settings.engine_name, "")
        # several workers on one host share its cores and memory: count each host once
        hosts = list({w.get("host") or w.get("id") or id(w): w for w in workers}.values())
        return {
            "version": API_VERSION,
            "taskQueueCount": active,
            "totalMemory": sum(int(h.get("totalMemory", 0)) for h in hosts),
            "availableMemory": sum(int(h.get("availableMemory", 0)) for h in hosts),
            "cpuCores": sum(int(h.get("cpuCores", 0)) for h in hosts),
            "maxImages": self.accounts.limits(caller.user).max_images,
            "maxParallelTasks": sum(int(w.get("slots", 0)) for w in workers),
            "engineVersion": version,
            "engine": engine,
            "workers": len(workers),
        }

    def validate_options(self, raw: Any, skip_post_processing: bool) -> list[dict[str, Any]]:
        try:
            return optionlib.validate_options(raw, self.catalog(), skip_post_processing=skip_post_processing)
        except optionlib.InvalidOptions as exc:
            raise InvalidRequest(str(exc)) from None

    # --- creating tasks -------------------------------------------------------------------
    def init_session(self, form: dict[str, str], set_uuid: str | None, caller: Caller = NODE) -> str:
        uuid = self._new_uuid(set_uuid)
        skip = str(form.get("skipPostProcessing", "")).strip().lower() in ("true", "1")
        fields: dict[str, Any] = {
            "options": self.validate_options(form.get("options"), skip),
            "skipPostProcessing": skip,
            "name": str(form.get("name") or "").strip()[:1024],
        }
        try:
            outputs = normalize_outputs(form.get("outputs"))
        except UnsafeInput as exc:
            raise InvalidRequest(str(exc)) from None
        if outputs is not None:
            fields["outputs"] = outputs
        if form.get("webhook"):
            fields["webhook"] = str(form["webhook"]).strip()
        if form.get("dateCreated"):
            fields["dateCreated"] = parse_date_created(form["dateCreated"])
        if form.get("zipurl"):
            fields["zipurl"] = str(form["zipurl"]).strip()
        if caller.user:
            fields["owner"] = caller.user
            if caller.submodel:
                fields["submodel"] = "1"
        if not self.tasks.create_session(uuid, fields):
            raise InvalidRequest(f"Invalid set-uuid: {set_uuid}" if set_uuid else "Could not create task")
        return uuid

    def _new_uuid(self, set_uuid: str | None) -> str:
        if set_uuid is None or set_uuid == "":
            return str(uuidlib.uuid4())
        try:
            parsed = str(uuidlib.UUID(set_uuid))
        except (ValueError, AttributeError, TypeError):
            raise InvalidRequest(f"Invalid set-uuid: {set_uuid}") from None
        if self.tasks.exists(parsed) or self.tasks.session(parsed):
            raise InvalidRequest(f"Invalid set-uuid: {set_uuid}")
        return parsed

    def require_session(self, uuid: str, caller: Caller = NODE) -> dict[str, str]:
        session = self.tasks.session(uuid) if _looks_like_uuid(uuid) else None
        # another user's upload answers exactly like an unknown one
        if not session or not caller.sees(session.get("owner")):
            raise InvalidRequest("Invalid uuid (not found)")
        return session

    def upload_key(self, uuid: str, filename: str) -> tuple[str, str]:
        try:
            name = safe_filename(filename)
        except UnsafeInput as exc:
            raise InvalidRequest(str(exc), no_retry=True) from None
        return name, inputs_prefix(uuid) + name

    def check_image_limit(self, uuid: str, new_names: list[str]) -> None:
        limit = self.accounts.limits(self._owner(uuid)).max_images
        if limit is None:
            return
        names = set(self.tasks.session_files(uuid)) | set(new_names)
        count = count_images(names)
        if count > limit:
            raise InvalidRequest(
                f"{count} images uploaded, but this node can only process up to {limit}.", no_retry=True
            )

    def check_storage(self, uuid: str, sizes: dict[str, int]) -> None:
        """Refuse an upload that would take the user's stored uploads past their byte limit."""
        owner = self._owner(uuid)
        limit = self.accounts.limits(owner).max_bytes if owner else None
        if limit is None or owner is None:
            return
        old = self.tasks.session_files(uuid)
        after = self.tasks.stored_bytes(owner) + sum(n - old.get(k, 0) for k, n in sizes.items())
        if after > limit:
            raise InvalidRequest(
                f"Storage quota exceeded: this upload would store {after} bytes, but your limit is {limit} "
                "bytes. Remove finished tasks to free space.",
                no_retry=True,
            )

    def _owner(self, uuid: str) -> str | None:
        # without accounts no task has an owner: spare the upload path the look-ups
        return self.tasks.owner(uuid) if self.settings.accounts else None

    def refuse_empty_images(self, sizes: dict[str, int]) -> None:
        """A 0-byte image can never be processed: refuse it now rather than fail the task later."""
        empty = sorted(name for name, size in sizes.items() if size == 0 and is_image_name(name))
        if empty:
            raise InvalidRequest(f"Invalid file {empty[0]}: it is empty (0 bytes).", no_retry=True)

    def record_uploads(self, uuid: str, files: dict[str, int]) -> None:
        self.tasks.add_session_files(uuid, files)

    def commit(self, uuid: str, caller: Caller = NODE) -> str:
        session = self.require_session(uuid, caller)
        # parallel uploads each pass check_image_limit before any of them is recorded: count again here
        self.check_image_limit(uuid, [])
        options = json.loads(session.get("options") or "[]")
        run_id = new_run_id()
        decide = self.decide(options)
        if self._owner_full(session):
            # the claim enforces the limit (workers/pipeline.py); here the task only reports that it waits
            base = decide
            decide = lambda active: (base(active)[0], TaskStatus.QUEUED)  # noqa: E731
        # durable before the task exists: a committed task's inputs survive a power loss
        self.store.make_durable(inputs_prefix(uuid))
        record = self.tasks.commit_session(uuid, decide, run_id, {"enqueuedAt": now_ms()})
        metrics.count(self.tasks.r, "tasks_created")
        event(
            log,
            "task.created",
            uuid=uuid,
            run=run_id,
            queue=record.get("queue"),
            images=int(record["imagesCount"]),
        )
        self._enqueue(uuid, run_id, record["queue"])
        return uuid

    def decide(self, options: list[dict[str, Any]]) -> Decide:
        return decide_for(options, self.live_workers())

    def _owner_full(self, record: dict[str, str]) -> bool:
        """Whether the task's user already runs as many tasks as they may (submodels do not count)."""
        owner = record.get("owner")
        limit = self.accounts.limits(owner).max_running if owner and not record.get("submodel") else None
        if limit is None or owner is None:
            return False
        running = [t for t in self.tasks.owned_active(owner) if t["status"] == "20" and not t["submodel"]]
        return len(running) >= limit

    def list_uuids(self, caller: Caller = NODE) -> list[str]:
        if caller.admin:
            return self.tasks.list_uuids()
        return self.tasks.list_owned(caller.user or "")

    def list_json(self, caller: Caller = NODE, offset: int = 0, limit: int | None = None) -> bytes:
        """/task/list: [{"uuid": ...}] in creation order, a page of it with `limit`; read from the index
        (every task for the node and admins, the user's own otherwise), never by scanning records."""
        owner = None if caller.admin else (caller.user or "")
        if offset or limit is not None:
            return _list_body(self.tasks.list_page(owner, offset, limit))
        # the whole list: kept while the index does not change (a 100,000-task body takes ~0.1 s to build)
        with self._lists_lock:
            cached = self._lists.get(owner)
        version, uuids = self.tasks.list_if_changed(owner, cached[0] if cached else "")
        if uuids is None and cached is not None:
            return cached[1]
        body = _list_body(uuids or [])
        if len(uuids or ()) >= LIST_CACHE_MIN:
            with self._lists_lock:
                self._lists.pop(owner, None)
                self._lists[owner] = (version, body)
                while len(self._lists) > LIST_CACHE_ENTRIES:
                    del self._lists[next(iter(self._lists))]  # the least recently stored
        return body

    # --- the polled reads: one Redis round trip each --------------------------------------
    def info_json(self, uuid: str, caller: Caller = NODE, with_output: int | None = None) -> bytes:
        """/task/{uuid}/info as JSON, with the console from line `with_output` when given."""
        record, output = self._view(uuid, caller, _INFO_READ, with_output)
        return task_info_json(record, output)

    def console(self, uuid: str, caller: Caller = NODE, start: int = 0) -> list[str]:
        """/task/{uuid}/output: the console from line `start` (Python-slice style)."""
        return self._view(uuid, caller, ("uuid", "owner"), start)[1] or []

    def _view(
        self, uuid: str, caller: Caller, fields: tuple[str, ...], console_from: int | None
    ) -> tuple[dict[str, str], list[str] | None]:
        if not _looks_like_uuid(uuid):
            raise TaskNotFound(uuid)
        values, lines = self.tasks.view(uuid, fields, console_from)
        record = {k: v for k, v in values.items() if v is not None}
        if "uuid" not in record or not caller.sees(record.get("owner")):
            raise TaskNotFound(uuid)  # another user's task answers exactly like an unknown one
        return record, lines

    def _enqueue(self, uuid: str, run_id: str, queue: str) -> None:
        self.celery.send_task(PROCESS_TASK, args=[uuid, run_id], queue=queue)

    # --- task commands --------------------------------------------------------------------
    def get(self, uuid: str, caller: Caller = NODE) -> dict[str, str]:
        if not _looks_like_uuid(uuid):
            raise TaskNotFound(uuid)
        record = self.tasks.get(uuid)
        if not caller.sees(record.get("owner")):
            raise TaskNotFound(uuid)  # another user's task answers exactly like an unknown one
        return record

    def cancel(self, uuid: str, notify: bool = True, caller: Caller = NODE) -> None:
        """CANCELED from any status, as the reference does (a finished task too: its results stay until
        removed). Whoever ends a task announces it: a cancel that ends an active task queues its webhook
        here, exactly once (the transition succeeds once); the worker only stops its run."""
        record = self.get(uuid, caller)
        result = self.tasks.transition(uuid, TaskStatus.CANCELED, errorMessage=None, deferred=None)
        if result.previous is None:
            raise TaskNotFound(uuid)
        if result.ok:
            self.tasks.publish_cancel(uuid)
            if result.previous.active:
                metrics.task_ended(self.tasks.r, "cancelled", self.tasks.field(uuid, "startedAt"))
                event(log, "task.finished", uuid=uuid, outcome="cancelled", reason="canceled by a client")
            if notify and result.previous.active:
                outbox.notify_task_end(
                    self.tasks.r,
                    self.tasks.get(uuid),
                    self.settings.webhook,
                    self.settings.webhook_retries,
                    [],
                )
            if result.previous.active and record.get("owner"):
                wake_deferred(self.tasks, self.celery, record["owner"])

    def remove(self, uuid: str, caller: Caller = NODE) -> None:
        session = self.tasks.session(uuid) if _looks_like_uuid(uuid) else None
        if session and not self.tasks.exists(uuid) and caller.sees(session.get("owner")):
            # an upload the client gave up on: its files and session go now, not at the janitor's cleanup
            self.store.delete_prefix(task_prefix(uuid))
            self.tasks.drop_session(uuid)
            return
        self.cancel(uuid, notify=False, caller=caller)
        self.tasks.delete(uuid)
        self.store.delete_prefix(task_prefix(uuid))

    def restart(self, uuid: str, raw_options: Any = None, caller: Caller = NODE) -> None:
        record = self.get(uuid, caller)
        fields: dict[str, Any] = {}
        if raw_options not in (None, ""):
            skip = record.get("skipPostProcessing") == "1"
            fields["options"] = self.validate_options(raw_options, skip)
        options = fields.get("options") or json.loads(record.get("options") or "[]")
        run_id = new_run_id()
        decide = self.decide(options)
        if self._owner_full(record):
            base = decide
            decide = lambda active: (base(active)[0], TaskStatus.QUEUED)  # noqa: E731
        result = self.tasks.requeue_decided(
            uuid,
            decide,
            allowed=(TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELED),
            clear_output=True,
            runId=run_id,
            attempt=1,
            progress=0,
            processingTime=-1,
            startedAt=None,
            errorMessage=None,
            worker=None,
            resultsRun=None,
            deferred=None,
            enqueuedAt=now_ms(),
            **fields,
        )
        if result.previous is None:
            raise TaskNotFound(uuid)
        if not result.ok:
            raise InvalidRequest("Task cannot be restarted")
        # every earlier run's results go: the new run writes under its own run id
        self.store.delete_prefix(results_prefix(uuid))
        self._enqueue(uuid, run_id, self.tasks.field(uuid, "queue") or QUEUE_CPU)


_INFO_READ = ("owner", *INFO_FIELDS)

# whole /task/list bodies each API process keeps: only long lists (shorter ones are cheaper to rebuild), of
# the last few indexes read (the node's and a few users')
LIST_CACHE_MIN = 1000
LIST_CACHE_ENTRIES = 4


def _list_body(uuids: list[str]) -> bytes:
    return orjson.dumps([{"uuid": uuid} for uuid in uuids])


def wake_deferred(tasks: TaskStore, celery: Celery, owner: str) -> int:
    """Send again the tasks of `owner` deferred for their running limit: one of the owner's runs ended.

    Each message's claim checks the limit again (TaskStore.claim_within_limit), so waking them all is safe:
    those still over the limit are deferred again. The reaper re-sends unclaimed tasks too, should this
    call be missed (a worker killed at the end of a run).
    """
    woken = 0
    for task in tasks.owned_active(owner):
        if task["deferred"] and task["status"] == str(int(TaskStatus.QUEUED)) and task["runId"]:
            celery.send_task(
                PROCESS_TASK, args=[task["uuid"], task["runId"]], queue=task["queue"] or QUEUE_CPU
            )
            woken += 1
    return woken


# dateCreated is milliseconds since 1970; past year 9999 no date can be shown (and task names are dates)
MAX_DATE_CREATED = 253402300799999


def parse_date_created(raw: Any) -> int:
    """A client's dateCreated as int milliseconds; refused (not clamped: a wrong date would be shown as if
    it were right) when it is not a number or not between 1970 and the end of year 9999."""
    shown = str(raw)[:40]
    try:
        number = float(str(raw).strip())
    except (TypeError, ValueError):
        raise InvalidRequest(f"Invalid dateCreated: {shown} (not a number)", no_retry=True) from None
    if not (0 <= number <= MAX_DATE_CREATED):  # also false for NaN
        raise InvalidRequest(
            f"Invalid dateCreated: {shown} (expected milliseconds since 1970, at most {MAX_DATE_CREATED})",
            no_retry=True,
        )
    return int(number)


def _looks_like_uuid(value: str) -> bool:
    try:
        uuidlib.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(value) <= 64


__all__ = ["Node", "API_VERSION", "inputs_prefix", "results_prefix", "task_prefix", "wake_deferred"]
