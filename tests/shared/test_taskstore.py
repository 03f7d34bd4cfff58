"""The Redis task store on a real redis-server: sessions, commit, transitions, console, progress, leases, workers."""

from __future__ import annotations

import json
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shared.errors import InvalidRequest, TaskNotFound
from shared.models import TaskStatus, can_transition
from shared.taskstore import Keys, TaskStore, count_images, is_image_name, new_run_id
from tests.support.farm import RedisServer

S = TaskStatus


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url(redis_server.fresh_db())


@pytest.fixture
def store(redis_url: str) -> Iterator[TaskStore]:
    tasks = TaskStore.from_url(redis_url)
    yield tasks
    tasks.r.close()


FULL = 0  # commit_session slots: no free slot, the task reports QUEUED
FREE = 1_000_000  # a free slot: the task reports RUNNING


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def make_task(store: TaskStore, status: TaskStatus = S.QUEUED, files: dict[str, int] | None = None,
              **session: Any) -> tuple[str, str]:
    """A committed task; returns (uuid, run id)."""
    uuid, run_id = new_uuid(), new_run_id()
    assert store.create_session(uuid, {"options": [], **session})
    store.add_session_files(uuid, files if files is not None else {"a.jpg": 1})
    store.commit_session(uuid, FREE if status is S.RUNNING else FULL, run_id, {})
    if status not in (S.QUEUED, S.RUNNING):
        assert store.transition(uuid, status, run_id=run_id).ok
    return uuid, run_id


def dump(r: redis.Redis) -> dict[str, Any]:
    """Every key of the database with its contents, for 'nothing changed' and 'nothing left' checks."""
    data: dict[str, Any] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "string":
            data[key] = r.get(key)
        elif kind == "hash":
            data[key] = r.hgetall(key)
        elif kind == "list":
            data[key] = r.lrange(key, 0, -1)
        elif kind == "set":
            data[key] = sorted(r.smembers(key))
        elif kind == "zset":
            data[key] = r.zrange(key, 0, -1, withscores=True)
        else:
            data[key] = kind
    return data


# --- upload sessions ----------------------------------------------------------------------------
def test_create_session_stores_encoded_fields(store: TaskStore) -> None:
    uuid = new_uuid()
    options = [{"name": "dsm", "value": True}]
    assert store.create_session(uuid, {"options": options, "skipPostProcessing": True, "name": "t1"})
    session = store.session(uuid)
    assert session is not None
    assert session["uuid"] == uuid
    assert json.loads(session["options"]) == options
    assert session["skipPostProcessing"] == "1"
    assert session["name"] == "t1"
    assert store.r.zscore(Keys.uploads, uuid) == pytest.approx(time.time(), abs=5)
    assert not store.exists(uuid)
    assert store.session(new_uuid()) is None


def test_duplicate_session_uuid_is_refused(store: TaskStore) -> None:
    uuid = new_uuid()
    assert store.create_session(uuid, {"name": "first"})
    assert not store.create_session(uuid, {"name": "second"})
    assert store.session(uuid)["name"] == "first"  # type: ignore[index]


def test_session_uuid_of_an_existing_task_is_refused(store: TaskStore) -> None:
    uuid, _ = make_task(store)
    assert not store.create_session(uuid, {"name": "again"})
    assert store.session(uuid) is None


def test_session_files_by_name_replace(store: TaskStore) -> None:
    uuid = new_uuid()
    store.create_session(uuid, {})
    assert store.session_files(uuid) == {}
    store.add_session_files(uuid, {"a.jpg": 10, "b.jpg": 20})
    store.add_session_files(uuid, {"a.jpg": 30, "c.txt": 5})
    assert store.session_files(uuid) == {"a.jpg": 30, "b.jpg": 20, "c.txt": 5}


def test_commit_turns_the_session_into_a_task_record(store: TaskStore) -> None:
    uuid, run_id = new_uuid(), new_run_id()
    options = [{"name": "dsm", "value": True}]
    store.create_session(uuid, {"options": options, "name": "my task", "webhook": "http://h/x"})
    store.add_session_files(uuid, {"b.jpg": 2, "a.jpg": 1, "gcp_list.txt": 3})
    before = int(time.time() * 1000)
    record = store.commit_session(uuid, FREE, run_id, {"queue": "cpu", "enqueuedAt": 123})
    after = int(time.time() * 1000)

    stored = store.get(uuid)
    assert stored == record
    assert stored["uuid"] == uuid
    assert stored["status"] == "20"
    assert stored["runId"] == run_id
    assert stored["attempt"] == "1"
    assert stored["progress"] == "0"
    assert stored["processingTime"] == "-1"
    assert json.loads(stored["inputs"]) == ["a.jpg", "b.jpg", "gcp_list.txt"]
    assert stored["imagesCount"] == "2"
    assert before <= int(stored["committedAt"]) <= after
    assert before <= int(stored["dateCreated"]) <= after
    assert stored["name"] == "my task"
    assert json.loads(stored["options"]) == options
    assert stored["webhook"] == "http://h/x"
    assert stored["queue"] == "cpu" and stored["enqueuedAt"] == "123"
    # the session is gone, the task is listed and active
    assert store.session(uuid) is None
    assert store.session_files(uuid) == {}
    assert store.r.zscore(Keys.uploads, uuid) is None
    assert store.list_uuids() == [uuid]
    assert store.active_uuids() == [uuid]
    assert store.status(uuid) is S.RUNNING


def test_commit_names_the_task_after_its_creation_date(store: TaskStore) -> None:
    uuid, _ = make_task(store, dateCreated=1704164645678)
    record = store.get(uuid)
    assert record["dateCreated"] == "1704164645678"
    assert record["name"] == "Task of 2024-01-02T03:04:05.678Z"


@pytest.mark.parametrize(
    ("files", "count"),
    [
        ({"a.jpg": 1, "b.JPG": 1, "c.tif": 1, "d.png": 1}, 4),
        ({"a.jpg": 1, "gcp_list.txt": 1, "geo.txt": 1, "IMAGE_GROUPS.TXT": 1}, 1),
        ({"a.jpg": 1, "seed.zip": 1, "more.ZIP": 1}, 1),
        ({"a.jpg": 1, "align.las": 1, "align.laz": 1, "Align.tif": 1}, 1),
        ({"myalign.jpg": 1, "txt.jpg": 1, "zip.jpeg": 1}, 3),
    ],
)
def test_images_count_excludes_txt_zip_and_align_files(store: TaskStore, files: dict[str, int],
                                                      count: int) -> None:
    uuid, _ = make_task(store, files=files)
    assert store.get(uuid)["imagesCount"] == str(count)
    assert count_images(files) == count


def test_is_image_name() -> None:
    assert is_image_name("DJI_0001.JPG")
    assert not is_image_name("notes.TxT")
    assert not is_image_name("align.tif")
    assert is_image_name("aligned.tif")


def test_list_uuids_is_creation_order_whatever_date_created_says(store: TaskStore) -> None:
    uuids = [make_task(store, dateCreated=date)[0] for date in (3_000_000, 1_000_000, 2_000_000, 5)]
    assert store.list_uuids() == uuids


def test_list_order_is_commit_order_not_session_order(store: TaskStore) -> None:
    first, second = new_uuid(), new_uuid()
    for uuid in (first, second):
        store.create_session(uuid, {})
        store.add_session_files(uuid, {"a.jpg": 1})
    store.commit_session(second, FULL, new_run_id(), {})
    store.commit_session(first, FULL, new_run_id(), {})
    assert store.list_uuids() == [second, first]


def test_second_commit_is_refused(store: TaskStore) -> None:
    uuid, run_id = make_task(store)
    record = store.get(uuid)
    with pytest.raises(InvalidRequest, match=r"^Invalid uuid \(not found\)$"):
        store.commit_session(uuid, FULL, new_run_id(), {})
    assert store.get(uuid) == record
    assert store.list_uuids() == [uuid]


def test_commit_of_an_unknown_session_is_refused(store: TaskStore) -> None:
    with pytest.raises(InvalidRequest, match=r"Invalid uuid \(not found\)"):
        store.commit_session(new_uuid(), FULL, new_run_id(), {})
    assert store.list_uuids() == []


def test_commit_without_files_is_refused_and_keeps_the_session(store: TaskStore) -> None:
    uuid = new_uuid()
    store.create_session(uuid, {})
    with pytest.raises(InvalidRequest, match=r"^Need at least 1 file\.$"):
        store.commit_session(uuid, FULL, new_run_id(), {})
    assert not store.exists(uuid)
    assert store.session(uuid) is not None
    assert store.list_uuids() == [] and store.active_uuids() == []


def test_commit_with_a_zipurl_needs_no_files(store: TaskStore) -> None:
    uuid, _ = make_task(store, files={}, zipurl="http://example/images.zip")
    record = store.get(uuid)
    assert record["zipurl"] == "http://example/images.zip"
    assert record["imagesCount"] == "0"
    assert json.loads(record["inputs"]) == []


def test_concurrent_commits_exactly_one_wins(store: TaskStore, redis_url: str) -> None:
    for _round in range(10):
        uuid = new_uuid()
        store.create_session(uuid, {"options": []})
        store.add_session_files(uuid, {f"{i}.jpg": i for i in range(20)})
        threads = 8
        barrier = threading.Barrier(threads)
        wins: list[str] = []
        errors: list[str] = []
        unexpected: list[BaseException] = []

        def commit(run_id: str, uuid: str = uuid, barrier: threading.Barrier = barrier,
                   wins: list[str] = wins, errors: list[str] = errors,
                   unexpected: list[BaseException] = unexpected) -> None:
            own = TaskStore.from_url(redis_url)  # one client per thread, as separate API processes would
            try:
                barrier.wait()
                own.commit_session(uuid, FULL, run_id, {})
                wins.append(run_id)
            except InvalidRequest as exc:
                errors.append(exc.message)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                unexpected.append(exc)
            finally:
                own.r.close()

        workers = [threading.Thread(target=commit, args=(new_run_id(),)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)
        assert not unexpected
        assert len(wins) == 1
        assert errors == ["Invalid uuid (not found)"] * (threads - 1)
        assert store.get(uuid)["runId"] == wins[0]
        assert store.get(uuid)["imagesCount"] == "20"
    assert len(store.list_uuids()) == 10 == len(set(store.list_uuids()))
    assert store.active_count() == 10


def test_commit_reports_running_while_a_slot_is_free(store: TaskStore) -> None:
    statuses = []
    for _ in range(4):
        uuid = new_uuid()
        store.create_session(uuid, {})
        store.add_session_files(uuid, {"a.jpg": 1})
        statuses.append(store.commit_session(uuid, 2, new_run_id(), {})["status"])
    assert statuses == ["20", "20", "10", "10"]
    # a finished task no longer holds a slot: 3 active of 4 leaves one free
    store.transition(store.list_uuids()[0], S.CANCELED)
    for expected in ("20", "10"):
        uuid = new_uuid()
        store.create_session(uuid, {})
        store.add_session_files(uuid, {"a.jpg": 1})
        assert store.commit_session(uuid, 4, new_run_id(), {})["status"] == expected


def test_concurrent_commits_do_not_overbook_slots(store: TaskStore, redis_url: str) -> None:
    slots, sessions = 3, 12
    uuids = [new_uuid() for _ in range(sessions)]
    for uuid in uuids:
        store.create_session(uuid, {})
        store.add_session_files(uuid, {"a.jpg": 1})
    barrier = threading.Barrier(sessions)
    statuses: dict[str, str] = {}
    failures: list[BaseException] = []

    def commit(uuid: str) -> None:
        own = TaskStore.from_url(redis_url)
        try:
            barrier.wait()
            statuses[uuid] = own.commit_session(uuid, slots, new_run_id(), {})["status"]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            own.r.close()

    threads = [threading.Thread(target=commit, args=(uuid,)) for uuid in uuids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not failures
    assert sorted(statuses.values()) == ["10"] * (sessions - slots) + ["20"] * slots
    assert {u: store.get(u)["status"] for u in uuids} == statuses
    assert store.active_count() == sessions


def test_stale_and_dropped_sessions(store: TaskStore) -> None:
    old, recent = new_uuid(), new_uuid()
    store.create_session(old, {})
    store.create_session(recent, {})
    store.add_session_files(old, {"a.jpg": 1})
    store.r.zadd(Keys.uploads, {old: time.time() - 3600})
    assert store.stale_sessions(600) == [old]
    store.drop_session(old)
    assert store.session(old) is None and store.session_files(old) == {}
    assert store.stale_sessions(0) == [recent]


# --- records and transitions --------------------------------------------------------------------
def test_get_of_an_unknown_task_raises(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        store.get(new_uuid())
    assert store.status(new_uuid()) is None


def test_allowed_transition_sets_and_deletes_fields(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.QUEUED)
    store.update(uuid, errorMessage="old")
    result = store.transition(uuid, S.RUNNING, run_id=run_id, worker="w1", errorMessage=None, attempt=2)
    assert result.ok and result.previous is S.QUEUED
    record = store.get(uuid)
    assert record["status"] == "20" and record["worker"] == "w1" and record["attempt"] == "2"
    assert "errorMessage" not in record


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_transition_follows_the_table(store: TaskStore, current: TaskStatus, target: TaskStatus) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    if current is not S.RUNNING:
        assert store.transition(uuid, current).ok
    before = store.get(uuid)
    result = store.transition(uuid, target, errorMessage="x")
    assert result.previous is current
    assert result.ok == can_transition(current, target)
    if result.ok:
        assert store.status(uuid) is target
    else:
        assert store.get(uuid) == before


def test_transition_of_a_missing_task_creates_nothing(store: TaskStore) -> None:
    uuid = new_uuid()
    result = store.transition(uuid, S.CANCELED, errorMessage="x")
    assert not result.ok and result.previous is None
    assert dump(store.r) == {}


def test_write_from_an_old_run_id_is_refused_and_changes_nothing(store: TaskStore) -> None:
    uuid, old_run = make_task(store, S.RUNNING)
    store.append_output(uuid, old_run, ["line 1"])
    new_run = new_run_id()
    assert store.transition(uuid, S.RUNNING, run_id=old_run, runId=new_run, attempt=2).ok
    snapshot = dump(store.r)
    for target in S:
        result = store.transition(uuid, target, run_id=old_run, clear_output=True, errorMessage="late")
        assert not result.ok and result.previous is S.RUNNING
    assert not store.update(uuid, run_id=old_run, imagesCount=99)
    assert not store.append_output(uuid, old_run, ["late line"])
    assert dump(store.r) == snapshot
    # the current run may still write
    assert store.update(uuid, run_id=new_run, imagesCount=7)
    assert store.get(uuid)["imagesCount"] == "7"


def test_canceled_is_never_overwritten_by_the_run(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    assert store.transition(uuid, S.CANCELED, errorMessage=None).ok  # what the API does
    snapshot = store.get(uuid)
    assert not store.transition(uuid, S.COMPLETED, run_id=run_id, progress=100).ok
    assert not store.transition(uuid, S.FAILED, run_id=run_id, errorMessage="Cannot process dataset").ok
    assert not store.transition(uuid, S.COMPLETED, progress=100).ok
    assert not store.transition(uuid, S.FAILED, errorMessage="boom").ok
    assert not store.transition(uuid, S.RUNNING, run_id=run_id, allowed=(S.QUEUED, S.RUNNING)).ok  # a claim
    assert store.get(uuid) == snapshot
    assert store.status(uuid) is S.CANCELED
    assert not store.set_progress(uuid, 50)


def test_active_set_and_finished_zset_follow_the_status(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.QUEUED)
    assert store.active_uuids() == [uuid] and store.r.zscore(Keys.finished, uuid) is None
    store.transition(uuid, S.RUNNING, run_id=run_id)
    assert store.active_uuids() == [uuid] and store.r.zscore(Keys.finished, uuid) is None
    store.transition(uuid, S.FAILED, run_id=run_id)
    assert store.active_uuids() == []
    assert store.r.zscore(Keys.finished, uuid) == pytest.approx(time.time(), abs=5)
    assert store.finished_before(time.time() + 1) == [uuid]
    assert store.finished_before(time.time() - 60) == []
    # restart
    assert store.transition(uuid, S.QUEUED, runId=new_run_id()).ok
    assert store.active_uuids() == [uuid] and store.r.zscore(Keys.finished, uuid) is None
    assert store.active_count() == 1
    store.transition(uuid, S.CANCELED)
    assert store.active_count() == 0 and store.finished_before(time.time() + 1) == [uuid]


def test_clear_output(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    store.append_output(uuid, run_id, ["a", "b"])
    store.transition(uuid, S.FAILED, run_id=run_id)
    assert store.transition(uuid, S.QUEUED, clear_output=False).ok
    assert store.output(uuid) == ["a", "b"]
    store.transition(uuid, S.CANCELED)
    assert store.transition(uuid, S.QUEUED, clear_output=True).ok
    assert store.output(uuid) == []


def test_update_of_a_missing_task_creates_nothing(store: TaskStore) -> None:
    assert not store.update(new_uuid(), imagesCount=3)
    assert not store.update(new_uuid(), run_id="r", imagesCount=3)
    assert dump(store.r) == {}


# --- progress -----------------------------------------------------------------------------------
def test_progress_only_grows_and_is_clamped(store: TaskStore) -> None:
    uuid, _ = make_task(store, S.RUNNING)

    def progress() -> float:
        return float(store.get(uuid)["progress"])

    assert not store.set_progress(uuid, -5)
    assert progress() == 0
    assert store.set_progress(uuid, 12.3456)
    assert progress() == 12.35
    assert not store.set_progress(uuid, 10)
    assert not store.set_progress(uuid, 12.35)
    assert progress() == 12.35
    assert store.set_progress(uuid, 50)
    assert not store.set_progress(uuid, float("nan"))
    assert progress() == 50
    assert store.set_progress(uuid, 250)
    assert progress() == 100
    assert not store.set_progress(uuid, float("inf"))
    assert progress() == 100


@pytest.mark.parametrize("status", [S.QUEUED, S.FAILED, S.COMPLETED, S.CANCELED])
def test_progress_is_ignored_unless_running(store: TaskStore, status: TaskStatus) -> None:
    uuid, _ = make_task(store, S.RUNNING)
    store.transition(uuid, status)
    before = store.get(uuid)["progress"]
    assert not store.set_progress(uuid, 42)
    assert store.get(uuid)["progress"] == before


def test_progress_of_another_run_is_ignored(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    assert not store.set_progress(uuid, 60, run_id="superseded-run")
    assert float(store.get(uuid)["progress"]) == 0
    assert store.set_progress(uuid, 30, run_id=run_id)
    assert float(store.get(uuid)["progress"]) == 30


def test_progress_of_a_missing_task_creates_nothing(store: TaskStore) -> None:
    assert not store.set_progress(new_uuid(), 42)
    assert dump(store.r) == {}


# --- console ------------------------------------------------------------------------------------
def test_append_output_keeps_order(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    assert store.append_output(uuid, run_id, ["one", "two"])
    assert store.append_output(uuid, run_id, ["three", "", "ünïcode ✓"])
    assert store.output(uuid) == ["one", "two", "three", "", "ünïcode ✓"]


def test_append_output_stores_a_large_batch_in_order_and_once(store: TaskStore) -> None:
    # a batch is pushed in chunks inside one script call: more lines than one chunk (and than Lua's
    # unpack could take at once), each stored once in order, a numbered retry stored once
    uuid, run_id = make_task(store, S.RUNNING)
    lines = [f"line {n}" for n in range(9_001)]
    assert store.append_output(uuid, run_id, lines, first=1)
    assert store.append_output(uuid, run_id, [*lines, "last"], first=1)  # the reply was lost: sent again
    assert store.output(uuid) == [*lines, "last"]
    assert store.append_output(uuid, run_id, lines[:10000])
    assert store.r.llen(Keys.output(uuid)) == 2 * len(lines) + 1


def test_transition_sets_many_fields_and_deletes_several_at_once(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.QUEUED)
    store.update(uuid, errorMessage="old", deferred="1", progress=5)
    fields = {f"extra{n}": n for n in range(50)}
    result = store.transition(uuid, S.RUNNING, run_id=run_id, errorMessage=None, deferred=None, **fields)
    assert result.ok and result.previous is S.QUEUED
    record = store.get(uuid)
    assert record["status"] == "20" and record["progress"] == "5"
    assert "errorMessage" not in record and "deferred" not in record
    assert all(record[name] == str(n) for name, n in fields.items())
    assert uuid in store.active_uuids()


def test_append_output_with_a_wrong_run_id_is_refused(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    store.append_output(uuid, run_id, ["mine"])
    assert not store.append_output(uuid, "someone-else", ["theirs"])
    assert not store.append_output(uuid, "", ["theirs"])
    assert store.output(uuid) == ["mine"]


def test_append_output_for_a_deleted_task_recreates_nothing(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    store.append_output(uuid, run_id, ["before"])
    assert store.delete(uuid)
    assert not store.append_output(uuid, run_id, ["after"])
    assert not store.set_progress(uuid, 80)
    assert not store.transition(uuid, S.FAILED, run_id=run_id).ok
    assert all(uuid not in key for key in dump(store.r))


def test_output_slices_like_python(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    lines: list[str] = []
    for n in range(8):
        for start in range(-n - 3, n + 4):
            assert store.output(uuid, start) == lines[start:], (n, start)
        line = f"line {n}"
        store.append_output(uuid, run_id, [line])
        lines.append(line)
    assert store.output(uuid, 10**9) == [] and store.output(uuid, -(10**9)) == lines


def test_output_of_an_unknown_task_is_empty(store: TaskStore) -> None:
    assert store.output(new_uuid()) == []
    assert store.output(new_uuid(), -3) == []


# --- leases -------------------------------------------------------------------------------------
def test_lease_take_renew_release_by_owner_only(store: TaskStore) -> None:
    uuid, run = make_task(store)
    assert not store.has_lease(uuid)
    assert store.take_lease(uuid, "run-old", 5) is False, "only the task's current run may claim it"
    assert store.take_lease(uuid, run, 5) is True
    assert store.take_lease(uuid, run, 5) is False, "a second taker (a duplicate message) is refused"
    assert store.has_lease(uuid)
    assert 4000 < store.r.pttl(Keys.lease(uuid)) <= 5000
    assert not store.renew_lease(uuid, "run-b", 60)
    assert store.r.pttl(Keys.lease(uuid)) <= 5000
    assert store.renew_lease(uuid, run, 60)
    assert 55_000 < store.r.pttl(Keys.lease(uuid)) <= 60_000
    store.release_lease(uuid, "run-b")
    assert store.has_lease(uuid) and store.r.get(Keys.lease(uuid)) == run
    store.release_lease(uuid, run)
    assert not store.has_lease(uuid)
    assert not store.renew_lease(uuid, run, 60)  # a released lease is not brought back
    assert not store.has_lease(uuid)


def test_a_new_run_claims_a_lease_still_held_by_a_superseded_run(store: TaskStore) -> None:
    # a restart or hand-over gives the task a new run id while the old run still winds down holding the
    # lease: the new run's claim must not be dropped as a duplicate (it would wait for the reaper)
    uuid, old = make_task(store, S.RUNNING)
    assert store.take_lease(uuid, old, 60)
    new = new_run_id()
    assert store.transition(uuid, S.QUEUED, run_id=old, allowed=(S.RUNNING,), runId=new).ok
    assert store.take_lease(uuid, new, 60) is True
    assert store.r.get(Keys.lease(uuid)) == new
    assert not store.renew_lease(uuid, old, 60), "the old run learns it was superseded"
    store.release_lease(uuid, old)
    assert store.has_lease(uuid), "the old run's release leaves the new lease alone"


def test_lease_expires(store: TaskStore) -> None:
    uuid, run_a = make_task(store)
    other, run_b = make_task(store)
    store.take_lease(uuid, run_a, 0.2)
    store.take_lease(other, run_b, 0.2)
    assert store.has_lease(uuid)
    time.sleep(0.1)
    assert store.renew_lease(other, run_b, 5)
    time.sleep(0.25)
    assert not store.has_lease(uuid)
    assert not store.renew_lease(uuid, run_a, 5)
    assert store.has_lease(other)


# --- workers and engines ------------------------------------------------------------------------
def test_heartbeat_and_live_workers(store: TaskStore) -> None:
    store.heartbeat("w1", {"id": "w1", "slots": 2})
    store.heartbeat("w2", {"id": "w2", "slots": 1})
    store.heartbeat("w2", {"id": "w2", "slots": 3})  # a later beat replaces the info
    assert sorted(store.live_workers(30), key=lambda w: w["id"]) == [{"id": "w1", "slots": 2},
                                                                     {"id": "w2", "slots": 3}]
    store.r.zadd(Keys.beats, {"w1": time.time() - 31})
    assert store.live_workers(30) == [{"id": "w2", "slots": 3}]
    assert len(store.live_workers(60)) == 2
    store.remove_worker("w2")
    assert store.live_workers(30) == []
    assert store.r.hkeys(Keys.workers) == ["w1"]


def test_prune_drops_only_long_dead_workers(store: TaskStore) -> None:
    for name in ("alive", "late", "dead"):
        store.heartbeat(name, {"id": name})
    store.r.zadd(Keys.beats, {"late": time.time() - 100, "dead": time.time() - 700})
    store.prune_workers(5)  # gone after max(10 * ttl, 600) s
    assert sorted(store.r.hkeys(Keys.workers)) == ["alive", "late"]
    assert sorted(store.r.zrange(Keys.beats, 0, -1)) == ["alive", "late"]
    assert [w["id"] for w in store.live_workers(5)] == ["alive"]
    store.r.zadd(Keys.beats, {"late": time.time() - 1000})
    store.prune_workers(90)  # 10 * ttl = 900 s
    assert sorted(store.r.hkeys(Keys.workers)) == ["alive"]


def test_live_workers_when_none(store: TaskStore) -> None:
    assert store.live_workers(30) == []
    store.prune_workers(30)


def test_publish_engine_and_engine_options(store: TaskStore) -> None:
    options = [{"name": "dsm", "type": "bool", "value": "false", "domain": "bool", "help": "h"}]
    digest = store.publish_engine(options)
    assert store.engine_options(digest) == options
    assert store.r.get(Keys.engine_last) == digest
    reordered = [{k: options[0][k] for k in reversed(list(options[0]))}]
    assert store.publish_engine(reordered) == digest  # the digest ignores key order
    other = store.publish_engine(options + [{"name": "x", "type": "int", "value": "1", "domain": "", "help": ""}])
    assert other != digest
    assert store.r.get(Keys.engine_last) == other
    assert store.engine_options(digest) is not None
    assert store.engine_options("0" * 16) is None


# --- delete -------------------------------------------------------------------------------------
def test_delete_removes_every_key_of_the_task(store: TaskStore) -> None:
    keep, keep_run = make_task(store, S.RUNNING)
    store.append_output(keep, keep_run, ["kept"])
    for final in (S.RUNNING, S.FAILED):
        uuid, run_id = make_task(store, S.RUNNING, files={"a.jpg": 1, "b.jpg": 2})
        store.append_output(uuid, run_id, ["x", "y"])
        store.take_lease(uuid, run_id, 60)
        store.set_progress(uuid, 40)
        if final is not S.RUNNING:
            store.transition(uuid, final, run_id=run_id)
        assert store.delete(uuid)
        assert not store.delete(uuid)
        for key, value in dump(store.r).items():
            assert uuid not in key
            assert uuid not in json.dumps(value), key
        assert not store.exists(uuid) and not store.has_lease(uuid)
    assert store.list_uuids() == [keep] and store.output(keep) == ["kept"] and store.active_uuids() == [keep]


def test_numbered_console_lines_are_stored_once_when_a_batch_is_sent_again(store: TaskStore) -> None:
    uuid, run_id = make_task(store, S.RUNNING)
    assert store.append_output(uuid, run_id, ["a", "b"], first=1)
    assert store.append_output(uuid, run_id, ["a", "b"], first=1)  # the reply was lost: sent again
    assert store.append_output(uuid, run_id, ["a", "b", "c"], first=1)  # again, with a new line behind
    assert store.append_output(uuid, run_id, ["farm line"])  # not numbered: always appended
    assert store.append_output(uuid, run_id, ["d"], first=4)
    assert store.output(uuid) == ["a", "b", "c", "farm line", "d"]
    # the next run numbers from 1 again
    new_run = new_run_id()
    assert store.transition(uuid, S.RUNNING, run_id=run_id, runId=new_run, attempt=2).ok
    assert store.append_output(uuid, new_run, ["e"], first=1)
    assert store.output(uuid)[-1] == "e"


def test_a_lapsed_lease_is_taken_again_only_by_the_run_and_worker_that_own_the_task(store: TaskStore) -> None:
    # a Redis restart longer than the lease drops it; the healthy run must get it back, nobody else
    uuid, run = make_task(store, S.RUNNING)
    store.update(uuid, worker="w1")
    assert store.take_lease(uuid, run, 0.1)
    time.sleep(0.15)
    assert not store.has_lease(uuid)
    assert not store.renew_lease(uuid, run, 5), "without a worker id nothing is taken again"
    assert not store.renew_lease(uuid, run, 5, worker="w2"), "another worker's run is not this one"
    assert not store.renew_lease(uuid, "other-run", 5, worker="w1")
    assert store.renew_lease(uuid, run, 5, worker="w1")
    assert store.r.get(Keys.lease(uuid)) == run
    store.transition(uuid, S.CANCELED)
    store.release_lease(uuid, run)
    assert not store.renew_lease(uuid, run, 5, worker="w1"), "a cancelled task's lease is not taken again"


def test_a_users_running_limit_holds_when_workers_claim_at_once(redis_url: str, store: TaskStore) -> None:
    """Tasks of one user claimed by parallel workers: exactly `limit` start, the rest wait QUEUED, deferred."""
    tasks = [make_task(store, S.RUNNING, owner="ann") for _ in range(6)]
    other = make_task(store, S.RUNNING, owner="ben")
    split = make_task(store, S.RUNNING, owner="ann", submodel="1")  # part of its parent's run: not counted
    results: dict[str, bool | None] = {}
    barrier = threading.Barrier(len(tasks))

    def claim(uuid: str, run_id: str) -> None:
        own = TaskStore.from_url(redis_url)  # one client per thread, as separate workers would
        barrier.wait()
        results[uuid] = own.claim_within_limit(uuid, run_id, "ann", 2)

    threads = [threading.Thread(target=claim, args=t) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [u for u, ok in results.items() if ok]
    assert len(started) == 2, results
    for uuid, _ in tasks:
        record = store.get(uuid)
        assert record["status"] == str(int(S.RUNNING if uuid in started else S.QUEUED))
        assert ("deferred" in record) is (uuid not in started)
    assert store.status(other[0]) is S.RUNNING and store.status(split[0]) is S.RUNNING
    assert store.claim_within_limit(tasks[0][0], "stale-run", "ann", 2) is None
    # a deferred task neither waits for a slot nor holds one
    deferred = {u for u, ok in results.items() if not ok}
    assert sum(1 for _, w in store.occupancy() if w == "-") == len(deferred)


def test_a_users_stored_bytes_follow_uploads_commits_and_removals(store: TaskStore) -> None:
    uuid = new_uuid()
    assert store.create_session(uuid, {"options": [], "owner": "ann"})
    store.add_session_files(uuid, {"a.jpg": 100, "b.jpg": 50})
    store.add_session_files(uuid, {"a.jpg": 70})  # sent again: replaces the first copy
    assert store.stored_bytes("ann") == 120
    store.commit_session(uuid, FREE, new_run_id(), {})
    assert store.stored_bytes("ann") == 120 and store.list_owned("ann") == [uuid]
    assert store.delete(uuid) and not store.delete(uuid)
    assert store.stored_bytes("ann") == 0 and store.list_owned("ann") == []
    dropped = new_uuid()
    assert store.create_session(dropped, {"options": [], "owner": "ann"})
    store.add_session_files(dropped, {"c.jpg": 30})
    store.drop_session(dropped)
    store.drop_session(dropped)
    assert store.stored_bytes("ann") == 0
