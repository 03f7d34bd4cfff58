"""The Redis task store: the one key schema, task records, upload sessions, console, progress, workers, leases.

Every state change is written when it happens. Status changes go through one Lua script that checks the
transition table (shared.models.TRANSITIONS) and the run id, so a late write from a cancelled or superseded
run can never overwrite what the API decided.
"""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from shared.errors import InvalidRequest, TaskNotFound
from shared.models import TRANSITIONS, TaskStatus, default_task_name
from shared.outage import HOLD_SECONDS, RETRIED_ERRORS, OutageRetry

NS = "odmfarm"

# Given (queue, worker) of every QUEUED/RUNNING task: the queue for a task ('' = keep it) and whether it
# reports RUNNING (a slot is free for it) or QUEUED.
Decide = Callable[[list[tuple[str, str]]], tuple[str, TaskStatus]]


class Keys:
    """Every Redis key the farm uses."""

    tasks = f"{NS}:tasks"  # zset uuid -> creation sequence
    seq = f"{NS}:seq"
    active = f"{NS}:active"  # set of QUEUED/RUNNING uuids
    finished = f"{NS}:finished"  # zset uuid -> finish time (s), for cleanup
    uploads = f"{NS}:uploads"  # zset uuid -> last activity (s), for cleanup
    workers = f"{NS}:workers"  # hash worker id -> json
    beats = f"{NS}:workers:beat"  # zset worker id -> last heartbeat (s)
    engine_last = f"{NS}:engine:last"
    cancel_channel = f"{NS}:cancel"
    reaper_lock = f"{NS}:reaper"
    webhooks = f"{NS}:webhooks"  # zset delivery json -> when due (shared/outbox.py)
    metrics = f"{NS}:metrics"  # hash counter/histogram field -> value (shared/metrics.py)
    users = f"{NS}:users"  # set of user names (shared/accounts.py)

    @staticmethod
    def task(uuid: str) -> str:
        return f"{NS}:task:{uuid}"

    @staticmethod
    def output(uuid: str) -> str:
        return f"{NS}:task:{uuid}:output"

    @staticmethod
    def lease(uuid: str) -> str:
        return f"{NS}:lease:{uuid}"

    @staticmethod
    def upload(uuid: str) -> str:
        return f"{NS}:upload:{uuid}"

    @staticmethod
    def upload_files(uuid: str) -> str:
        return f"{NS}:upload:{uuid}:files"

    @staticmethod
    def engine(digest: str) -> str:
        return f"{NS}:engine:{digest}"

    @staticmethod
    def user(name: str) -> str:
        return f"{NS}:user:{name}"  # hash: name, password (argon2), admin, maxImages, maxRunning, maxBytes

    @staticmethod
    def user_tokens(name: str) -> str:
        return f"{NS}:user:{name}:tokens"  # set of the sha256 of the user's login tokens

    @staticmethod
    def user_tasks(name: str) -> str:
        return f"{NS}:user:{name}:tasks"  # zset uuid -> creation sequence, the user's /task/list

    @staticmethod
    def user_bytes(name: str) -> str:
        return f"{NS}:user:{name}:bytes"  # bytes of input files the user's sessions and tasks hold

    @staticmethod
    def auth_token(digest: str) -> str:
        return f"{NS}:authtoken:{digest}"  # hash user, digest, expires; expires with the token

    @staticmethod
    def login_failures(kind: str, who: str) -> str:
        return f"{NS}:loginfail:{kind}:{who}"  # counter of failed logins, expires with the window


# KEYS: task, active, finished, output ; ARGV: target, allowed-from csv, run id ('' = any), clear output (0/1),
# now (s), then field/value pairs. Returns {1, old status} on success, {0, old status or -1 when missing}.
_TRANSITION = """
local st = redis.call('HMGET', KEYS[1], 'status', 'runId', 'uuid')
local cur = st[1]
if not cur then return {0, -1} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {0, tonumber(cur)} end
if ARGV[3] ~= '' and st[2] ~= ARGV[3] then return {0, tonumber(cur)} end
local set, gone = {'status', ARGV[1]}, {}
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] == '\\0' then gone[#gone + 1] = ARGV[i] else set[#set + 1] = ARGV[i]; set[#set + 1] = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], unpack(set))
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
local uuid = st[3]
if ARGV[1] == '10' or ARGV[1] == '20' then
  redis.call('SADD', KEYS[2], uuid); redis.call('ZREM', KEYS[3], uuid)
else
  redis.call('SREM', KEYS[2], uuid); redis.call('ZADD', KEYS[3], ARGV[5], uuid)
end
if ARGV[4] == '1' then redis.call('DEL', KEYS[4]) end
return {1, tonumber(cur)}
"""

# KEYS: task ; ARGV: progress. Progress only grows, and only while the task runs.
_PROGRESS = """
local st = redis.call('HMGET', KEYS[1], 'status', 'progress', 'runId')
if st[1] ~= '20' then return 0 end
if ARGV[2] ~= '' and st[3] ~= ARGV[2] then return 0 end
local cur = tonumber(st[2] or '0')
local new = tonumber(ARGV[1])
if new > cur then redis.call('HSET', KEYS[1], 'progress', ARGV[1]) return 1 end
return 0
"""

# KEYS: task, output ; ARGV: run id, number of the first line ('' = not numbered), lines... Lines of a superseded
# run or a removed task are dropped (-1). Numbered lines (1, 2, ... per run) already stored are skipped, so a
# batch re-sent after a lost reply (a Redis restart) is stored once; the task's `consoleSeq` is "<run>:<last>".
_APPEND = """
local st = redis.call('HMGET', KEYS[1], 'runId', 'consoleSeq')
if st[1] ~= ARGV[1] then return -1 end
local from = 3
if ARGV[2] ~= '' then
  local stored = 0
  local mark = st[2]
  if mark then
    local run, n = string.match(mark, '^(.*):(%d+)$')
    if run == ARGV[1] then stored = tonumber(n) end
  end
  local first = tonumber(ARGV[2])
  from = 3 + math.max(0, stored - first + 1)
  local last = first + #ARGV - 3
  if last > stored then redis.call('HSET', KEYS[1], 'consoleSeq', ARGV[1] .. ':' .. last) end
end
local length = nil
for i = from, #ARGV, 500 do length = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV))) end
return length or redis.call('LLEN', KEYS[2])
"""

# KEYS: beats, workers, active ; ARGV: oldest live heartbeat. Returns {active count, {worker json...}}.
_LIVE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local infos = {}
if #ids > 0 then infos = redis.call('HMGET', KEYS[2], unpack(ids)) end
return {redis.call('SCARD', KEYS[3]), infos}
"""

# KEYS: lease, task ; ARGV: run id, ms. 1 when this run now holds the lease.
_TAKE_LEASE = """
if redis.call('HGET', KEYS[2], 'runId') ~= ARGV[1] then return 0 end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease, task ; ARGV: run id, ms, worker id. 1 when the run holds the lease (again) for ms.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder or ARGV[3] == '' then return 0 end
local st = redis.call('HMGET', KEYS[2], 'runId', 'status', 'worker')
if st[1] == ARGV[1] and st[2] == '20' and st[3] == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: task ; ARGV: run id, owner, limit. The claim of a task whose owner may run `limit` tasks at once: 1 and
# the task RUNNING when fewer of the owner's other tasks run (split-merge submodels are not counted: they are
# part of their parent's run), else 0 and the task QUEUED and marked `deferred` until one of them ends
# (shared.node.wake_deferred). One script, so that two workers claiming two tasks of one user at once cannot
# both start. The owner's active tasks are found from the active set (only QUEUED/RUNNING tasks, few).
_CLAIM_LIMITED = """
if redis.call('HGET', KEYS[1], 'runId') ~= ARGV[1] then return -1 end
local me = redis.call('HGET', KEYS[1], 'uuid')
local running = 0
for _, uuid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if uuid ~= me then
    local t = redis.call('HMGET', KEYS[3] .. uuid, 'owner', 'status', 'submodel')
    if t[1] == ARGV[2] and t[2] == '20' and t[3] ~= '1' then running = running + 1 end
  end
end
if running >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', '10', 'deferred', '1')
  return 0
end
redis.call('HSET', KEYS[1], 'status', '20')
redis.call('HDEL', KEYS[1], 'deferred')
return 1
"""

# KEYS: task, output ; ARGV: first console line ('' = no console), then field names. What the polled read
# routes need in one command: {the fields (nil when missing)} or {the fields, the console from that line}.
_VIEW = """
local record = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] == '' then return {record} end
return {record, redis.call('LRANGE', KEYS[2], ARGV[1], -1)}
"""

# KEYS: a task index (zset), seq ; ARGV: the version the caller holds. The index's version (creations so far,
# members now: a creation raises the first, a removal lowers the second, so no change keeps both) and, unless
# it is the caller's, every uuid: {version} or {version, uuids}.
_LIST_IF_CHANGED = """
local version = (redis.call('GET', KEYS[2]) or '0') .. ':' .. redis.call('ZCARD', KEYS[1])
if version == ARGV[1] then return {version} end
return {version, redis.call('ZRANGE', KEYS[1], 0, -1)}
"""

_DELETE = "\0"  # a field value meaning "remove this field" in transitions


def now_ms() -> int:
    return int(time.time() * 1000)


def new_run_id() -> str:
    return uuidlib.uuid4().hex[:12]


@dataclass
class Transition:
    ok: bool
    previous: TaskStatus | None  # None when the task does not exist


class TaskStore:
    def __init__(self, client: redis.Redis) -> None:
        # Any: redis-py types every reply as bytes | str even with decode_responses=True
        self.r: Any = client
        self._transition = client.register_script(_TRANSITION)
        self._progress = client.register_script(_PROGRESS)
        self._append = client.register_script(_APPEND)
        self._live = client.register_script(_LIVE)
        self._renew = client.register_script(_RENEW)
        self._take = client.register_script(_TAKE_LEASE)
        self._claim_limited = client.register_script(_CLAIM_LIMITED)
        self._view = client.register_script(_VIEW)
        self._list_if_changed = client.register_script(_LIST_IF_CHANGED)

    @classmethod
    def from_url(cls, url: str, hold_seconds: float = HOLD_SECONDS) -> TaskStore:
        # a Redis restart should be a slow answer, not an error: clients retry timeouts and dropped
        # connections, but WebODM fails a task on a 5xx. Commands are retried for up to HOLD_SECONDS
        # (shared/outage.py), a budget the API shares between all commands of one request.
        return cls(
            redis.Redis.from_url(
                url,
                decode_responses=True,
                health_check_interval=30,
                socket_keepalive=True,
                socket_connect_timeout=5,
                retry=OutageRetry(hold_seconds),
                retry_on_error=list(RETRIED_ERRORS),
            )
        )

    # --- upload sessions ------------------------------------------------------------------
    def create_session(self, uuid: str, fields: dict[str, Any]) -> bool:
        """A new upload session; False when the uuid is already used by a session or a task."""
        if self.r.exists(Keys.task(uuid)):
            return False
        record = {k: _encode(v) for k, v in fields.items()}
        record["uuid"] = uuid
        pipe = self.r.pipeline()
        pipe.hsetnx(Keys.upload(uuid), "uuid", uuid)
        created = pipe.execute()[0]
        if not created:
            return False
        pipe.hset(Keys.upload(uuid), mapping=record)
        pipe.zadd(Keys.uploads, {uuid: time.time()})
        pipe.execute()
        return True

    def session(self, uuid: str) -> dict[str, str] | None:
        data = self.r.hgetall(Keys.upload(uuid))
        return data or None

    def session_files(self, uuid: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(Keys.upload_files(uuid)).items()}

    def add_session_files(self, uuid: str, files: dict[str, int]) -> None:
        owner = self.r.hget(Keys.upload(uuid), "owner")
        pipe = self.r.pipeline()
        if owner and files:
            # a file uploaded again under the same name replaces the first copy: count the difference
            old = self.r.hmget(Keys.upload_files(uuid), list(files))
            delta = sum(size - int(before or 0) for size, before in zip(files.values(), old, strict=True))
            pipe.incrby(Keys.user_bytes(owner), delta)
        if files:  # HSET with no pairs is an error; a zipurl-only task records no files
            pipe.hset(Keys.upload_files(uuid), mapping=files)
        pipe.zadd(Keys.uploads, {uuid: time.time()})
        pipe.execute()

    def commit_session(
        self, uuid: str, slots: int | Decide, run_id: str, extra: dict[str, Any]
    ) -> dict[str, str]:
        """Turn an upload session into a task record, atomically; a second commit finds no session.

        The task's queue and whether it reports RUNNING (a slot is free for it) or QUEUED (it waits) are
        decided by `slots` (a Decide, or a plain slot count) in the same transaction, so that simultaneous
        commits cannot all claim the last free slot.
        """
        decide = slots if callable(slots) else _count_rule(slots)
        skey, fkey, tkey = Keys.upload(uuid), Keys.upload_files(uuid), Keys.task(uuid)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(skey, fkey, Keys.active)
                    # one snapshot of both: a commit that wins in between must not look like a session
                    # without files
                    snapshot = self.r.pipeline()
                    snapshot.hgetall(skey)
                    snapshot.hgetall(fkey)
                    session, files = snapshot.execute()
                    queue, status = decide(self.occupancy())
                    if not session:
                        raise InvalidRequest("Invalid uuid (not found)")
                    if not files and not session.get("zipurl"):
                        raise InvalidRequest("Need at least 1 file.")
                    record = dict(session)
                    record.update({k: _encode(v) for k, v in extra.items()})
                    if queue:
                        record["queue"] = queue
                    record.update(
                        {
                            "status": str(int(status)),
                            "runId": run_id,
                            "attempt": "1",
                            "progress": "0",
                            "processingTime": "-1",
                            "inputs": json.dumps(sorted(files)),
                            "imagesCount": str(count_images(files)),
                            "inputBytes": str(sum(int(v) for v in files.values())),
                            "committedAt": str(now_ms()),
                        }
                    )
                    if not record.get("dateCreated"):
                        record["dateCreated"] = str(now_ms())
                    if not record.get("name"):
                        record["name"] = default_task_name(int(record["dateCreated"]))
                    pipe.multi()
                    pipe.hset(tkey, mapping=record)
                    seq = self.r.incr(Keys.seq)
                    pipe.zadd(Keys.tasks, {uuid: seq})
                    if record.get("owner"):
                        pipe.zadd(Keys.user_tasks(record["owner"]), {uuid: seq})
                    pipe.sadd(Keys.active, uuid)
                    pipe.delete(skey, fkey)
                    pipe.zrem(Keys.uploads, uuid)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def drop_session(self, uuid: str) -> None:
        owner = self.r.hget(Keys.upload(uuid), "owner")
        if owner:
            size = sum(self.session_files(uuid).values())
            if self.r.delete(Keys.upload_files(uuid)):  # once: a second drop finds no files
                self.r.decrby(Keys.user_bytes(owner), size)
        self.r.delete(Keys.upload(uuid), Keys.upload_files(uuid))
        self.r.zrem(Keys.uploads, uuid)

    def stale_sessions(self, older_than_s: float) -> list[str]:
        return list(self.r.zrangebyscore(Keys.uploads, "-inf", time.time() - older_than_s))

    # --- task records ---------------------------------------------------------------------
    def get(self, uuid: str) -> dict[str, str]:
        data = self.r.hgetall(Keys.task(uuid))
        if not data:
            raise TaskNotFound(uuid)
        return data

    def exists(self, uuid: str) -> bool:
        return bool(self.r.exists(Keys.task(uuid)))

    def status(self, uuid: str) -> TaskStatus | None:
        value = self.r.hget(Keys.task(uuid), "status")
        return TaskStatus(int(value)) if value else None

    def update(self, uuid: str, run_id: str | None = None, **fields: Any) -> bool:
        """Set plain fields (not status); with run_id, only while that run still owns the task."""
        key = Keys.task(uuid)
        if run_id is not None:
            return self.transition_fields(uuid, run_id, fields)
        if not self.r.exists(key):
            return False
        self.r.hset(key, mapping={k: _encode(v) for k, v in fields.items()})
        return True

    def transition_fields(self, uuid: str, run_id: str, fields: dict[str, Any]) -> bool:
        current = self.status(uuid)
        if current is None:
            return False
        return self.transition(uuid, current, run_id=run_id, allowed=(current,), **fields).ok

    def list_uuids(self) -> list[str]:
        return list(self.r.zrange(Keys.tasks, 0, -1))

    def list_page(self, owner: str | None = None, offset: int = 0, limit: int | None = None) -> list[str]:
        """uuids in creation order from the index (every task, or `owner`'s): one ZRANGE of the page only."""
        key = Keys.tasks if owner is None else Keys.user_tasks(owner)
        if limit is not None and limit <= 0:
            return []
        return list(self.r.zrange(key, offset, -1 if limit is None else offset + limit - 1))

    def list_if_changed(self, owner: str | None, version: str) -> tuple[str, list[str] | None]:
        """The index's version and, unless it is still `version`, every uuid of it (as list_page)."""
        key = Keys.tasks if owner is None else Keys.user_tasks(owner)
        reply = self._list_if_changed(keys=[key, Keys.seq], args=[version])
        return str(reply[0]), (list(reply[1]) if len(reply) > 1 else None)

    def view(
        self, uuid: str, fields: Sequence[str], console_from: int | None = None
    ) -> tuple[dict[str, str | None], list[str] | None]:
        """Some fields of a task (each None when missing) and, with `console_from`, its console from that
        line (Python-slice style, as `output`), in one round trip: what the polled routes read."""
        if console_from is None:
            values = self.r.hmget(Keys.task(uuid), *fields)
            return dict(zip(fields, values, strict=True)), None
        replies = self._view(keys=[Keys.task(uuid), Keys.output(uuid)], args=[int(console_from), *fields])
        return dict(zip(fields, replies[0], strict=True)), list(replies[1])

    def active_count(self) -> int:
        return int(self.r.scard(Keys.active))

    def active_uuids(self) -> list[str]:
        return list(self.r.smembers(Keys.active))

    def transition(
        self,
        uuid: str,
        target: TaskStatus,
        *,
        run_id: str | None = None,
        allowed: Iterable[TaskStatus] | None = None,
        clear_output: bool = False,
        **fields: Any,
    ) -> Transition:
        args = _transition_args(target, allowed, run_id, clear_output, fields)
        ok, previous = self._transition(keys=_transition_keys(uuid), args=args)
        return Transition(bool(ok), None if previous == -1 else TaskStatus(previous))

    def occupancy(self) -> list[tuple[str, str]]:
        """(queue, worker) of every QUEUED/RUNNING task; worker is '' while no worker has claimed it."""
        uuids = self.active_uuids()
        if not uuids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for uuid in uuids:
            pipe.hmget(Keys.task(uuid), "queue", "worker", "deferred")
        # a task deferred for its user's running limit neither waits for a slot nor holds one ("-" is
        # no worker): it must not make other users' tasks report QUEUED
        return [(q or "", "-" if d else w or "") for q, w, d in pipe.execute()]

    def requeue_decided(
        self,
        uuid: str,
        decide: Decide,
        *,
        allowed: Iterable[TaskStatus],
        run_id: str | None = None,
        clear_output: bool = False,
        **fields: Any,
    ) -> Transition:
        """A transition back to the queue (restart, re-queue) whose queue and status (RUNNING or QUEUED)
        `decide` picks from the farm's occupancy in the same transaction, as commit_session does."""
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(Keys.active, Keys.task(uuid))
                    queue, status = decide(self.occupancy())
                    if queue:
                        fields["queue"] = queue
                    args = _transition_args(status, allowed, run_id, clear_output, fields)
                    pipe.multi()
                    self._transition(keys=_transition_keys(uuid), args=args, client=pipe)
                    ok, previous = pipe.execute()[0]
                    return Transition(bool(ok), None if previous == -1 else TaskStatus(previous))
                except redis.WatchError:
                    continue

    def delete(self, uuid: str) -> bool:
        owner, size = self.r.hmget(Keys.task(uuid), "owner", "inputBytes")
        pipe = self.r.pipeline()
        pipe.delete(Keys.task(uuid), Keys.output(uuid), Keys.lease(uuid))
        pipe.zrem(Keys.tasks, uuid)
        pipe.srem(Keys.active, uuid)
        pipe.zrem(Keys.finished, uuid)
        if owner:
            pipe.zrem(Keys.user_tasks(owner), uuid)
        deleted = bool(pipe.execute()[0])
        if owner and deleted and size:  # only the call that deleted the record gives the bytes back
            self.r.decrby(Keys.user_bytes(owner), int(size))
        return deleted

    # --- owners ---------------------------------------------------------------------------
    def list_owned(self, owner: str) -> list[str]:
        return list(self.r.zrange(Keys.user_tasks(owner), 0, -1))

    def owner(self, uuid: str) -> str | None:
        """The user a task or an upload session belongs to ('' for the node's own)."""
        value = self.r.hget(Keys.task(uuid), "owner") or self.r.hget(Keys.upload(uuid), "owner")
        return value or None

    def stored_bytes(self, owner: str) -> int:
        return int(self.r.get(Keys.user_bytes(owner)) or 0)

    def owned_active(self, owner: str) -> list[dict[str, str]]:
        """owner's QUEUED/RUNNING tasks: uuid, status, runId, queue, deferred, submodel."""
        uuids = self.active_uuids()
        pipe = self.r.pipeline(transaction=False)
        names = ("uuid", "owner", "status", "runId", "queue", "deferred", "submodel")
        for uuid in uuids:
            pipe.hmget(Keys.task(uuid), *names)
        rows = [dict(zip(names, values, strict=True)) for values in pipe.execute()]
        return [row for row in rows if row["owner"] == owner and row["uuid"]]

    def claim_within_limit(self, uuid: str, run_id: str, owner: str, limit: int) -> bool | None:
        """True: the run may start (the task is RUNNING); False: deferred; None: the run is stale."""
        result = int(
            self._claim_limited(
                keys=[Keys.task(uuid), Keys.active, Keys.task("")], args=[run_id, owner, int(limit)]
            )
        )
        return None if result < 0 else bool(result)

    def finished_before(self, when_s: float) -> list[str]:
        return list(self.r.zrangebyscore(Keys.finished, "-inf", when_s))

    # --- console and progress -------------------------------------------------------------
    def append_output(self, uuid: str, run_id: str, lines: list[str], first: int | None = None) -> bool:
        """False when the run was superseded. `first`: the number of lines[0] in the run's numbered console
        (from 1), so that a retried call stores each line once."""
        if not lines:
            return True
        number = "" if first is None else str(int(first))
        args = [run_id, number, *lines]
        return int(self._append(keys=[Keys.task(uuid), Keys.output(uuid)], args=args)) >= 0

    def output(self, uuid: str, start: int = 0) -> list[str]:
        """Lines from `start`, Python-slice style: negative = the last |start| lines (LRANGE counts a
        negative index from the end and clamps one before the first line to the first, as a slice does)."""
        return list(self.r.lrange(Keys.output(uuid), start, -1))

    def set_progress(self, uuid: str, progress: float, run_id: str = "") -> bool:
        """Raise a RUNNING task's progress (never lowers it); with `run_id`, only while that run is the task's."""
        progress = min(100.0, max(0.0, float(progress)))
        return bool(self._progress(keys=[Keys.task(uuid)], args=[round(progress, 2), run_id]))

    # --- leases ---------------------------------------------------------------------------
    def take_lease(self, uuid: str, run_id: str, seconds: float) -> bool:
        """Claim a run: only the task's current run gets it, once (a duplicate message gets False).

        A lease still held by a run that is no longer the task's current one (cancelled, restarted or handed
        over while it winds down) does not block the new run: it is replaced, and the old run learns at its
        next renewal that it was superseded.
        """
        return bool(
            self._take(keys=[Keys.lease(uuid), Keys.task(uuid)], args=[run_id, max(1, int(seconds * 1000))])
        )

    def field(self, uuid: str, name: str) -> str | None:
        value = self.r.hget(Keys.task(uuid), name)
        return None if value is None else str(value)

    def renew_lease(self, uuid: str, run_id: str, seconds: float, worker: str = "") -> bool:
        """Only the run that holds the lease renews it; a superseded run learns it has been replaced.

        A lease that expired while Redis was down (a restart longer than the lease) is taken again by the
        run that still owns the task (its run id, RUNNING, claimed by `worker`): a healthy run is not lost
        to an outage.
        """
        return bool(
            self._renew(
                keys=[Keys.lease(uuid), Keys.task(uuid)], args=[run_id, max(1, int(seconds * 1000)), worker]
            )
        )

    def redis_uptime(self) -> float:
        """Seconds since Redis itself started: right after a restart, leases and heartbeats may have lapsed."""
        return float(self.r.info("server").get("uptime_in_seconds", 0))

    def has_lease(self, uuid: str) -> bool:
        return bool(self.r.exists(Keys.lease(uuid)))

    def release_lease(self, uuid: str, run_id: str) -> None:
        script = (
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        )
        self.r.eval(script, 1, Keys.lease(uuid), run_id)

    # --- cancel notifications -------------------------------------------------------------
    def publish_cancel(self, uuid: str) -> None:
        self.r.publish(Keys.cancel_channel, uuid)

    # --- workers and engines --------------------------------------------------------------
    def publish_engine(self, options: list[dict[str, Any]]) -> str:
        import hashlib

        text = json.dumps(options)
        digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
        self.r.set(Keys.engine(digest), text)
        self.r.set(Keys.engine_last, digest)
        return digest

    def engine_options(self, digest: str) -> list[dict[str, Any]] | None:
        text = self.r.get(Keys.engine(digest))
        return json.loads(text) if text else None

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        pipe = self.r.pipeline()
        pipe.hset(Keys.workers, worker_id, json.dumps(info))
        pipe.zadd(Keys.beats, {worker_id: time.time()})
        pipe.execute()

    def remove_worker(self, worker_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.hdel(Keys.workers, worker_id)
        pipe.zrem(Keys.beats, worker_id)
        pipe.execute()

    def live_workers(self, ttl_s: float) -> list[dict[str, Any]]:
        return self.live_workers_and_active(ttl_s)[0]

    def live_workers_and_active(self, ttl_s: float) -> tuple[list[dict[str, Any]], int]:
        """Live workers and the QUEUED/RUNNING count in one round trip: /info is polled constantly."""
        count, infos = self._live(keys=[Keys.beats, Keys.workers, Keys.active], args=[time.time() - ttl_s])
        return [json.loads(v) for v in infos if v], int(count)

    def prune_workers(self, ttl_s: float) -> None:
        gone = self.r.zrangebyscore(Keys.beats, "-inf", time.time() - max(ttl_s * 10, 600))
        if gone:
            self.r.hdel(Keys.workers, *gone)
            self.r.zrem(Keys.beats, *gone)


IMAGE_EXCLUDED_SUFFIXES = (".txt", ".zip")


def is_image_name(name: str) -> bool:
    lowered = name.lower()
    return not lowered.endswith(IMAGE_EXCLUDED_SUFFIXES) and not lowered.startswith("align.")


def count_images(files: Iterable[str]) -> int:
    return sum(1 for name in files if is_image_name(name))


def _count_rule(slots: int) -> Decide:
    return lambda active: ("", TaskStatus.RUNNING if len(active) < slots else TaskStatus.QUEUED)


def _transition_keys(uuid: str) -> list[str]:
    return [Keys.task(uuid), Keys.active, Keys.finished, Keys.output(uuid)]


def _transition_args(
    target: TaskStatus,
    allowed: Iterable[TaskStatus] | None,
    run_id: str | None,
    clear_output: bool,
    fields: dict[str, Any],
) -> list[Any]:
    allowed = TRANSITIONS[target] if allowed is None else tuple(allowed)
    args: list[Any] = [
        int(target),
        ",".join(str(int(s)) for s in allowed),
        run_id or "",
        "1" if clear_output else "0",
        time.time(),
    ]
    for name, value in fields.items():
        args += [name, _DELETE if value is None else _encode(value)]
    return args


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, TaskStatus):
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
