"""The worker runtime's recovery logic on a real Redis and local store: progress datagrams, reaper, janitor, watchdog."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.models import TaskStatus
from shared.queue import PROCESS_TASK, make_celery
from shared.settings import Settings
from shared.taskstore import Keys, TaskStore, new_run_id
from tests.support.farm import RedisServer
from workers.engines.base import Command
from workers.engines.simulate import SimulateEngine
from workers.runner import Run
from workers.runtime import Job, WorkerRuntime, parse_progress

S = TaskStatus
UUID = "0b7e9c4e-2d6a-4c1f-9a57-1f3f5d2a8e10"

MakeRuntime = Callable[..., WorkerRuntime]


# --- parse_progress -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (f"PGUP/1234/{UUID}/45.5".encode(), (UUID, 45.5)),
        (f"PGUP/1234/{UUID}/0".encode(), (UUID, 0.0)),
        (f"PGUP/1/{UUID}/100.0\n".encode(), (UUID, 100.0)),
        (f"  PGUP/1/{UUID}/7  ".encode(), (UUID, 7.0)),
        (f"PGUP/1/{UUID}/-5".encode(), (UUID, 0.0)),
        (f"PGUP/1/{UUID}/-inf".encode(), (UUID, 0.0)),
        (f"PGUP/1/{UUID}/250".encode(), (UUID, 100.0)),
        (f"PGUP/1/{UUID}/inf".encode(), (UUID, 100.0)),
        (f"PGUP/1/{UUID}/1e3".encode(), (UUID, 100.0)),
    ],
)
def test_parse_progress_valid(data: bytes, expected: tuple[str, float]) -> None:
    assert parse_progress(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"PGUP",
        f"PGUP/1/{UUID}".encode(),
        f"PGUP/1/{UUID}/".encode(),
        f"PGUP/1/{UUID}/abc".encode(),
        f"PGUP/1/{UUID}/5/6".encode(),
        f"pgup/1/{UUID}/50".encode(),
        f"XGUP/1/{UUID}/50".encode(),
        f"PGUP/1/{UUID}/nan".encode(),
        f"PGUP/1/{UUID}/NaN".encode(),
        f"PGUP/1/{UUID}/-nan".encode(),
        b"PGUP/1/project/50",
        b"PGUP/1/../../etc/passwd/50",
        b"PGUP/1//50",
        b"PGUP/1/odm_project/50",
        f"PGUP/1/{UUID}x/50".encode(),
        f"PGUP/1/{UUID[:-1]}/50".encode(),
        f"PGUP/1/{UUID}\xe9/50".encode("latin-1"),
        b"PGUP/1/\xff\xfe\xfd/50",
        "PGUP/1/ünïcode/50".encode(),
        f"PGUP/1/{UUID}/٥٠".encode(),  # Arabic-Indic digits: float() accepts them, ascii does not
        b"\x00\x01\x02",
    ],
)
def test_parse_progress_rejects(data: bytes) -> None:
    assert parse_progress(data) is None


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture
def make_runtime(redis_server: RedisServer, tmp_path: Path) -> Iterator[MakeRuntime]:
    """A WorkerRuntime on a flushed Redis database and a local store, never start()ed."""
    url = redis_server.url(redis_server.fresh_db())
    made: list[WorkerRuntime] = []

    def make(**overrides: Any) -> WorkerRuntime:
        values: dict[str, Any] = {"redis_url": url, "data_dir": tmp_path, "lease_seconds": 5.0, "heartbeat_seconds": 1.0, "max_attempts": 2,
                                  "worker_gpu": False, "worker_name": f"w-test{len(made)}"}
        settings = Settings(**{**values, **overrides})
        rt = WorkerRuntime(settings, make_celery(settings), engine=SimulateEngine())
        made.append(rt)
        return rt

    yield make
    for rt in made:
        for job in rt.running():
            job.cancel("test over")
        rt.celery.close()
        rt.tasks.r.close()


@pytest.fixture
def rt(make_runtime: MakeRuntime) -> WorkerRuntime:
    return make_runtime()


def new_task(tasks: TaskStore, status: TaskStatus = S.RUNNING, worker: str | None = "w-dead", attempt: int = 1,
             queue: str | None = "cpu") -> tuple[str, str]:
    """A committed task, claimed by `worker` when one is given; returns (uuid, run id)."""
    uuid, run_id = str(uuidlib.uuid4()), new_run_id()
    tasks.create_session(uuid, {"options": []})
    tasks.add_session_files(uuid, {"a.jpg": 1})
    extra: dict[str, Any] = {"queue": queue} if queue else {}
    tasks.commit_session(uuid, 1_000_000 if status is S.RUNNING else 0, run_id, extra)  # slots free or not
    assert tasks.status(uuid) is status
    fields: dict[str, Any] = {"attempt": attempt, "startedAt": int(time.time() * 1000)}
    if worker:
        fields["worker"] = worker
    assert tasks.update(uuid, run_id=run_id, **fields)
    tasks.append_output(uuid, run_id, ["engine line"])
    return uuid, run_id


def broker_messages(tasks: TaskStore, queue: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in a queue: the kombu Redis transport keeps each queue as a list."""
    messages = []
    for raw in reversed(tasks.r.lrange(queue, 0, -1)):  # LPUSH: oldest last
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "args": args, "kwargs": kwargs})
    return messages


# --- reaper -----------------------------------------------------------------------------------------
def test_reap_requeues_a_running_task_whose_worker_is_gone(rt: WorkerRuntime) -> None:
    uuid, old_run = new_task(rt.tasks, worker="w-dead")
    assert rt.reap() == [uuid]
    record = rt.tasks.get(uuid)
    assert record["status"] == str(int(S.QUEUED)), "no live worker has a free slot: the task waits"
    assert record["runId"] != old_run
    assert record["attempt"] == "2"
    assert "worker" not in record
    assert record["progress"] == "0"
    assert rt.tasks.output(uuid) == ["engine line", "Worker w-dead stopped responding during attempt 1. Re-queued."]
    assert broker_messages(rt.tasks, "cpu") == [{"task": PROCESS_TASK, "args": [uuid, record["runId"]],
                                                 "kwargs": {}}]
    assert rt.tasks.active_uuids() == [uuid]
    # the old run is locked out; the new one owns the task
    assert not rt.tasks.append_output(uuid, old_run, ["late"])
    assert not rt.tasks.transition(uuid, S.COMPLETED, run_id=old_run).ok
    assert rt.tasks.append_output(uuid, record["runId"], ["new run"])
    # now unclaimed: a second pass leaves it for the worker that takes the message
    assert rt.reap() == []
    assert len(broker_messages(rt.tasks, "cpu")) == 1


def test_reap_routes_requeued_tasks_to_free_slots(rt: WorkerRuntime) -> None:
    # one GPU worker (serving gpu and cpu) and one CPU worker, one free slot each: of two tasks lost with
    # their worker, one goes to the GPU and the other to the CPU worker, and both report RUNNING
    rt.tasks.heartbeat("g", {"id": "g", "queues": ["gpu", "cpu"], "slots": 1, "running": []})
    rt.tasks.heartbeat("c", {"id": "c", "queues": ["cpu"], "slots": 1, "running": []})
    first, _ = new_task(rt.tasks, queue="gpu")
    second, _ = new_task(rt.tasks, queue=None)
    assert sorted(rt.reap()) == sorted([first, second])
    on_gpu = [m["args"] for m in broker_messages(rt.tasks, "gpu")]
    on_cpu = [m["args"] for m in broker_messages(rt.tasks, "cpu")]
    assert len(on_gpu) == 1 and len(on_cpu) == 1
    for uuid, run_id in on_gpu + on_cpu:
        record = rt.tasks.get(uuid)
        assert record["runId"] == run_id and record["status"] == str(int(S.RUNNING))
        assert record["queue"] == ("gpu" if [uuid, run_id] in on_gpu else "cpu")


def test_reap_moves_a_task_waiting_for_a_busy_gpu_to_a_free_cpu(rt: WorkerRuntime) -> None:
    rt.tasks.heartbeat("g", {"id": "g", "queues": ["gpu", "cpu"], "slots": 1, "running": []})
    rt.tasks.heartbeat("c", {"id": "c", "queues": ["cpu"], "slots": 1, "running": []})
    busy, busy_run = new_task(rt.tasks, queue="gpu", worker="g")
    rt.tasks.take_lease(busy, busy_run, 60)
    waiting, run_id = new_task(rt.tasks, S.QUEUED, queue="gpu", worker=None)
    assert rt.reap() == [waiting]
    assert broker_messages(rt.tasks, "cpu") == [{"task": PROCESS_TASK, "args": [waiting, run_id], "kwargs": {}}]
    assert rt.tasks.get(waiting)["queue"] == "cpu"
    assert rt.reap() == [], "moved once"


def test_reap_gives_up_with_a_webhook(make_runtime: MakeRuntime) -> None:
    from shared import outbox
    from tests.support.local_http import local_server, reply

    rt = make_runtime(blocked_networks=())  # the receiver listens on loopback
    with local_server() as server:
        server.routes["/hook"] = lambda h: reply(h, 200)
        uuid, _ = new_task(rt.tasks, worker="w-dead", attempt=2)
        rt.tasks.update(uuid, webhook=server.url("/hook"))
        assert rt.reap() == []
        assert rt.tasks.status(uuid) is S.FAILED
        for member in outbox.claim(rt.tasks.r):
            assert rt.deliver(member)
        bodies = [json.loads(r.body) for r in server.received if r.path == "/hook"]
        assert [(b["uuid"], b["status"]["code"]) for b in bodies] == [(uuid, 30)]
        assert "interrupted 2 times" in bodies[0]["status"]["errorMessage"]


def test_reap_leaves_a_task_with_a_live_lease_alone(rt: WorkerRuntime) -> None:
    uuid, run_id = new_task(rt.tasks, worker="w-alive")
    rt.tasks.take_lease(uuid, run_id, 0.3)
    before = rt.tasks.get(uuid)
    assert rt.reap() == []
    assert rt.tasks.get(uuid) == before
    assert rt.tasks.output(uuid) == ["engine line"]
    assert broker_messages(rt.tasks, "cpu") == []
    time.sleep(0.4)  # the worker stops renewing
    assert rt.reap() == [uuid]
    assert rt.tasks.get(uuid)["attempt"] == "2"


def test_reap_fails_a_task_that_used_its_attempts(rt: WorkerRuntime) -> None:
    uuid, run_id = new_task(rt.tasks, worker="w-dead", attempt=2)
    assert rt.reap() == []
    record = rt.tasks.get(uuid)
    assert record["status"] == str(int(S.FAILED))
    assert record["errorMessage"] == "Processing was interrupted 2 times (worker lost)"
    assert record["runId"] == run_id
    assert rt.tasks.output(uuid)[-1] == "Worker w-dead stopped responding during attempt 2. Giving up."
    assert broker_messages(rt.tasks, "cpu") == []
    assert rt.tasks.active_uuids() == []
    assert rt.tasks.finished_before(time.time() + 1) == [uuid]


def test_reap_counts_attempts_across_lost_workers(rt: WorkerRuntime) -> None:
    uuid, _ = new_task(rt.tasks, worker="w1")
    assert rt.reap() == [uuid]
    # a second worker takes the re-queued message, claims the run, and is lost too
    run2 = rt.tasks.get(uuid)["runId"]
    assert rt.tasks.transition(uuid, S.RUNNING, run_id=run2, allowed=(S.QUEUED, S.RUNNING), worker="w2").ok
    assert rt.reap() == []
    record = rt.tasks.get(uuid)
    assert record["status"] == str(int(S.FAILED))
    assert record["errorMessage"] == "Processing was interrupted 2 times (worker lost)"
    assert rt.tasks.output(uuid)[-2:] == ["Worker w1 stopped responding during attempt 1. Re-queued.",
                                          "Worker w2 stopped responding during attempt 2. Giving up."]
    assert len(broker_messages(rt.tasks, "cpu")) == 1


def test_reap_leaves_unclaimed_and_finished_tasks_alone(rt: WorkerRuntime) -> None:
    queued, _ = new_task(rt.tasks, S.QUEUED, worker=None)
    running_unclaimed, _ = new_task(rt.tasks, S.RUNNING, worker=None)
    queued_with_worker, _ = new_task(rt.tasks, S.QUEUED, worker="w-dead")
    done, done_run = new_task(rt.tasks, S.RUNNING, worker="w-dead")
    rt.tasks.transition(done, S.COMPLETED, run_id=done_run)
    snapshot = {u: rt.tasks.get(u) for u in (queued, running_unclaimed, queued_with_worker, done)}
    assert rt.reap() == []
    assert {u: rt.tasks.get(u) for u in snapshot} == snapshot
    assert broker_messages(rt.tasks, "cpu") == []


def test_reap_skips_a_task_removed_meanwhile(rt: WorkerRuntime) -> None:
    uuid, _ = new_task(rt.tasks)
    rt.tasks.r.sadd(Keys.active, "0" * 8 + "-0000-0000-0000-" + "0" * 12)  # a stale member without a record
    rt.tasks.delete(uuid)
    assert rt.reap() == []
    assert all(uuid not in key for key in rt.tasks.r.scan_iter())


# --- janitor ----------------------------------------------------------------------------------------
def _put_objects(rt: WorkerRuntime, uuid: str) -> None:
    rt.store.put_bytes(f"{uuid}/inputs/a.jpg", b"image")
    rt.store.put_bytes(f"{uuid}/results/all.zip", b"zip")


def test_janitor_removes_old_finished_tasks_and_stale_uploads(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(cleanup_minutes=10)
    old = time.time() - 11 * 60
    old_done, run = new_task(rt.tasks)
    rt.tasks.transition(old_done, S.COMPLETED, run_id=run)
    old_canceled, _ = new_task(rt.tasks)
    rt.tasks.transition(old_canceled, S.CANCELED)
    recent_done, run = new_task(rt.tasks)
    rt.tasks.transition(recent_done, S.FAILED, run_id=run)
    active, _ = new_task(rt.tasks, S.RUNNING, worker=None)
    rt.tasks.r.zadd(Keys.finished, {old_done: old, old_canceled: old - 3600, recent_done: time.time() - 9 * 60})
    old_upload, recent_upload = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    for upload in (old_upload, recent_upload):
        rt.tasks.create_session(upload, {"options": []})
        rt.tasks.add_session_files(upload, {"a.jpg": 5})
    rt.tasks.r.zadd(Keys.uploads, {old_upload: old})
    everything = (old_done, old_canceled, recent_done, active, old_upload, recent_upload)
    for uuid in everything:
        _put_objects(rt, uuid)

    rt.janitor()

    gone = (old_done, old_canceled, old_upload)
    keys = list(rt.tasks.r.scan_iter())
    for uuid in gone:
        assert all(uuid not in key for key in keys), uuid
        assert uuid not in rt.tasks.list_uuids()
        assert rt.store.list(f"{uuid}/") == []
    assert rt.tasks.r.zscore(Keys.uploads, old_upload) is None
    assert rt.tasks.r.zrange(Keys.finished, 0, -1) == [recent_done]
    assert rt.tasks.list_uuids() == [recent_done, active]
    assert rt.tasks.session(recent_upload) is not None
    assert rt.tasks.session_files(recent_upload) == {"a.jpg": 5}
    for uuid in (recent_done, active, recent_upload):
        assert len(rt.store.list(f"{uuid}/")) == 2, uuid


def test_janitor_never_removes_active_tasks(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(cleanup_minutes=1)
    uuid, run_id = new_task(rt.tasks)
    rt.tasks.r.hset(Keys.task(uuid), "committedAt", 0)
    rt.tasks.r.zadd(Keys.tasks, {uuid: 0})
    rt.janitor()
    assert rt.tasks.get(uuid)["runId"] == run_id


def test_janitor_disabled_with_zero_minutes(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(cleanup_minutes=0)
    uuid, run = new_task(rt.tasks)
    rt.tasks.transition(uuid, S.COMPLETED, run_id=run)
    rt.tasks.r.zadd(Keys.finished, {uuid: 0})
    upload = str(uuidlib.uuid4())
    rt.tasks.create_session(upload, {})
    rt.tasks.r.zadd(Keys.uploads, {upload: 0})
    rt.janitor()
    assert rt.tasks.exists(uuid) and rt.tasks.session(upload) is not None


# --- watchdog ---------------------------------------------------------------------------------------
def running_job(rt: WorkerRuntime, lease: bool = True, **job_fields: Any) -> Job:
    uuid, run_id = new_task(rt.tasks, worker=rt.id)
    if lease:
        rt.tasks.take_lease(uuid, run_id, rt.settings.lease_seconds)
    job = Job(uuid, run_id, **job_fields)
    rt.register(job)
    return job


def sleeper(tmp_path: Path) -> tuple[Run, threading.Thread, list[int]]:
    """A real engine process that would run for a minute, waited on in a thread."""
    run = Run(Command([sys.executable, "-c", "import time; time.sleep(60)"]), lambda lines: None,
              tmp_path / f"console-{uuidlib.uuid4().hex}.txt")
    run.start()
    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(run.wait()), daemon=True)
    waiter.start()
    return run, waiter, codes


def test_watch_leaves_a_healthy_job_running_and_renews_its_lease(rt: WorkerRuntime) -> None:
    job = running_job(rt)
    rt.tasks.r.pexpire(Keys.lease(job.uuid), 1000)
    rt._watch_once(renew=True)
    assert not job.cancelled.is_set()
    assert rt.tasks.r.pttl(Keys.lease(job.uuid)) > 4000
    rt._watch_once(renew=False)
    assert not job.cancelled.is_set()


def test_watch_cancels_a_canceled_task_and_kills_its_engine(rt: WorkerRuntime, tmp_path: Path) -> None:
    job = running_job(rt)
    other = running_job(rt)
    run, waiter, codes = sleeper(tmp_path)
    job.run = run
    assert rt.tasks.transition(job.uuid, S.CANCELED).ok  # what the API does
    rt._watch_once(renew=False)
    assert job.cancelled.is_set() and job.reason == "canceled"
    waiter.join(10)
    assert codes and codes[0] < 0
    assert not other.cancelled.is_set()
    assert rt.tasks.status(job.uuid) is S.CANCELED


def test_watch_cancels_a_removed_task(rt: WorkerRuntime) -> None:
    job = running_job(rt)
    rt.tasks.delete(job.uuid)
    rt._watch_once(renew=False)
    assert job.cancelled.is_set() and job.reason == "removed"


def test_watch_cancels_a_superseded_run(rt: WorkerRuntime) -> None:
    job = running_job(rt)
    rt.tasks.transition(job.uuid, S.RUNNING, run_id=job.run_id, allowed=(S.RUNNING,), runId=new_run_id())
    rt._watch_once(renew=False)
    assert job.cancelled.is_set() and job.reason == "superseded"


def test_watch_cancels_a_run_the_reaper_requeued(make_runtime: MakeRuntime) -> None:
    # a worker that stalled past its lease finds its task re-queued, and stops its copy of the run
    rt, reaper = make_runtime(), make_runtime()
    job = running_job(rt, lease=False)
    assert reaper.reap() == [job.uuid]
    rt._watch_once(renew=True)
    assert job.cancelled.is_set() and job.reason == "superseded"


def test_watch_takes_a_lapsed_lease_again_while_the_task_is_still_its_own(rt: WorkerRuntime) -> None:
    # a Redis restart longer than the lease drops it; nobody else has the task, so the run goes on
    job = running_job(rt, lease=False)
    rt._watch_once(renew=True)
    assert not job.cancelled.is_set()
    assert rt.tasks.r.get(Keys.lease(job.uuid)) == job.run_id


def test_watch_cancels_when_the_lease_is_lost(rt: WorkerRuntime) -> None:
    job = running_job(rt, lease=False)
    rt.tasks.r.set(Keys.lease(job.uuid), "another-run")  # e.g. the reaper's new run got it first
    rt._watch_once(renew=False)
    assert not job.cancelled.is_set()
    rt._watch_once(renew=True)
    assert job.cancelled.is_set() and job.reason == "lease lost"


def test_watch_cancels_after_max_runtime(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    rt = make_runtime(max_runtime=1.5)
    late = running_job(rt, started=time.monotonic() - 5)
    fresh = running_job(rt)
    run, waiter, codes = sleeper(tmp_path)
    late.run = run
    rt._watch_once(renew=True)
    assert late.cancelled.is_set() and late.reason == "max runtime"
    assert not fresh.cancelled.is_set()
    record = rt.tasks.get(late.uuid)
    assert record["status"] == str(int(S.CANCELED))
    assert record["errorMessage"] == "Maximum runtime of 1.5 seconds exceeded"
    assert rt.tasks.output(late.uuid)[-1] == (
        "Task exceeded this node's maximum runtime of 1.5 seconds and was cancelled.")
    assert rt.tasks.active_uuids() == [fresh.uuid]
    waiter.join(10)
    assert codes and codes[0] < 0
    assert rt.tasks.status(fresh.uuid) is S.RUNNING


def test_watch_max_runtime_never_overwrites_a_finished_task(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(max_runtime=1)
    job = running_job(rt, started=time.monotonic() - 5)
    assert rt.tasks.transition(job.uuid, S.COMPLETED, run_id=job.run_id).ok
    rt._watch_once(renew=False)
    assert rt.tasks.status(job.uuid) is S.COMPLETED


def test_watch_with_no_jobs_does_nothing(rt: WorkerRuntime) -> None:
    rt._watch_once(renew=True)
    assert list(rt.tasks.r.scan_iter()) == []


# --- lost messages ------------------------------------------------------------------------------------
def _age(rt: WorkerRuntime, uuid: str, ms: int) -> None:
    rt.tasks.r.hset(f"odmfarm:task:{uuid}", "enqueuedAt", int(time.time() * 1000) - ms)


def test_an_unclaimed_task_is_sent_again_when_a_worker_has_been_free(rt: WorkerRuntime) -> None:
    uuid, run_id = new_task(rt.tasks, worker=None)
    rt.tasks.heartbeat("idle", {"name": "idle", "queues": ["cpu"], "slots": 2, "running": []})
    _age(rt, uuid, 0)
    assert rt.reap() == [], "a message sent a moment ago may still be on its way"
    _age(rt, uuid, 3_600_000)
    assert rt.reap() == [uuid]
    assert broker_messages(rt.tasks, "cpu")[-1]["args"] == [uuid, run_id], "same run: a duplicate is dropped"
    assert rt.reap() == [], "sent again at most once per grace period"


def test_an_unclaimed_task_waits_while_the_farm_is_full(rt: WorkerRuntime) -> None:
    uuid, _ = new_task(rt.tasks, status=S.QUEUED, worker=None)
    _age(rt, uuid, 3_600_000)
    rt.tasks.heartbeat("busy", {"name": "busy", "queues": ["cpu"], "slots": 1, "running": ["other"]})
    rt.tasks.heartbeat("gpu-only", {"name": "gpu-only", "queues": ["gpu"], "slots": 1, "running": []})
    assert rt.reap() == []
    assert broker_messages(rt.tasks, "cpu") == []


def test_janitor_forgets_workers_dead_for_long(rt: WorkerRuntime) -> None:
    rt.tasks.heartbeat("ghost", {"name": "ghost"})
    rt.tasks.heartbeat("alive", {"name": "alive"})
    rt.tasks.r.zadd("odmfarm:workers:beat", {"ghost": time.time() - 86_400})
    rt.janitor()
    assert rt.tasks.r.hkeys("odmfarm:workers") == ["alive"]


# --- webhook loop ---------------------------------------------------------------------------------------
def test_webhook_loop_never_claims_more_than_it_can_send(make_runtime: MakeRuntime,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # a slow receiver (1 s per POST) and a short visibility window: a delivery claimed but left waiting in
    # the sender pool past the window is claimed again and posted twice
    from shared import outbox
    from tests.support.local_http import local_server, reply

    monkeypatch.setattr(outbox, "VISIBILITY_SECONDS", 1.5)
    monkeypatch.setattr(outbox.claim, "__defaults__", (10, 1.5))  # (limit, visibility)
    rt = make_runtime(blocked_networks=())

    def slow(handler: Any) -> None:
        time.sleep(1.0)
        reply(handler, 200)

    with local_server() as server:
        server.routes["/hook"] = slow
        for n in range(12):
            outbox.enqueue(rt.tasks.r, server.url("/hook"), {"n": n}, attempts=3)
        loop = threading.Thread(target=rt._webhook_loop, daemon=True)
        loop.start()
        try:
            deadline = time.monotonic() + 30
            while outbox.pending(rt.tasks.r) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.2)  # any second post of a delivery would arrive by now
        finally:
            rt.stopping.set()
            loop.join(10)
        sent = sorted(json.loads(r.body)["n"] for r in server.received)
        assert sent == list(range(12)), "every webhook exactly once"


def test_reap_counts_a_lease_takeover_for_every_farm_process(rt: WorkerRuntime) -> None:
    from shared import metrics

    new_task(rt.tasks, worker="w-dead")
    new_task(rt.tasks, S.QUEUED, worker=None)  # waiting, not taken over
    rt.reap()
    assert rt.tasks.r.hget(metrics.KEY, "lease_takeovers") == "1"
    rt.reap()
    assert rt.tasks.r.hget(metrics.KEY, "lease_takeovers") == "1", "the re-queued run holds no worker yet"


def test_a_give_up_counts_a_failed_task_with_its_duration(make_runtime: MakeRuntime) -> None:
    from shared import metrics

    rt = make_runtime(max_attempts=1)
    uuid, _ = new_task(rt.tasks, worker="w-dead")
    rt.tasks.update(uuid, startedAt=int(time.time() * 1000) - 90_000)
    rt.reap()
    counted = rt.tasks.r.hgetall(metrics.KEY)
    assert counted["tasks_failed"] == "1" and counted["duration:failed:count"] == "1"
    assert "duration:failed:60" not in counted, "90 s is over the 60 s bucket"
    assert counted["duration:failed:300"] == "1" and 89 < float(counted["duration:failed:sum"]) < 100
    assert "lease_takeovers" not in counted
