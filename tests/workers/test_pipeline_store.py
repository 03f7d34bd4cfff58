"""Storing a run's results and announcing its end: objects stored side by side with all.zip last, and no read of
images.json for a task nobody is told about. In-process pipeline on a real Redis, a local store and the
simulate engine."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shared import outbox
from shared.models import TaskStatus
from shared.node import inputs_prefix, results_prefix
from shared.storage import StorageError
from tests.workers.test_runtime import MakeRuntime, make_runtime, new_task  # noqa: F401 - fixture
from workers import files, pipeline
from workers.runtime import WorkerRuntime


def queued_task(rt: WorkerRuntime, **fields: Any) -> tuple[str, str]:
    rt.scratch.mkdir(parents=True, exist_ok=True)
    uuid, run_id = new_task(rt.tasks, TaskStatus.QUEUED, worker=None)
    if fields:
        rt.tasks.update(uuid, **fields)
    rt.store.put_bytes(inputs_prefix(uuid) + "a.jpg", b"\xff\xd8\xff\xe0" + os.urandom(100))
    return uuid, run_id


class RecordingPuts:
    """Wraps the store's put_file and put_stream: records when each put starts and ends and how many run
    at once."""

    def __init__(self, rt: WorkerRuntime, hold: float = 0.1, fail: str = "") -> None:
        self.hold, self.fail = hold, fail
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.spans: dict[str, tuple[float, float]] = {}
        for name in ("put_file", "put_stream"):
            setattr(rt.store, name, self.wrap(getattr(rt.store, name)))

    def wrap(self, put: Any) -> Any:
        def recorded(key: str, source: Any) -> Any:
            started = time.monotonic()
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(self.hold)  # a store round trip
                if self.fail and key.endswith(self.fail):
                    raise StorageError(f"upload of {key!r} failed")
                return put(key, source)
            finally:
                with self.lock:
                    self.running -= 1
                self.spans[key] = (started, time.monotonic())

        return recorded


def test_results_are_stored_side_by_side_and_all_zip_only_after_every_other_object(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(simulate_seconds=0.0)
    uuid, run_id = queued_task(rt)
    puts = RecordingPuts(rt)
    assert pipeline.process(rt, uuid, run_id) == "completed"
    prefix = results_prefix(uuid, run_id)
    others = {k: span for k, span in puts.spans.items() if not k.endswith("all.zip")}
    assert len(others) >= 3 and prefix + "images.json" in others
    assert puts.most > 1  # stored side by side, not one after the other
    zip_started = puts.spans[prefix + "all.zip"][0]
    assert all(ended <= zip_started for _, ended in others.values())
    assert all(rt.store.exists(key) for key in puts.spans)
    assert rt.tasks.status(uuid) is TaskStatus.COMPLETED


def test_a_failed_result_upload_fails_the_run_and_leaves_no_results(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(simulate_seconds=0.0)
    uuid, run_id = queued_task(rt)
    puts = RecordingPuts(rt, fail="images.json")
    assert pipeline.process(rt, uuid, run_id) == "failed"
    record = rt.tasks.get(uuid)
    assert record["status"] == str(int(TaskStatus.FAILED))
    assert "images.json" in record["errorMessage"]
    assert not any(key.endswith("all.zip") for key in puts.spans)  # never started
    assert rt.store.list(results_prefix(uuid, run_id)) == []


def test_a_task_without_webhooks_ends_without_reading_its_images_json(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(simulate_seconds=0.0)
    read: list[str] = []
    get_bytes = rt.store.get_bytes

    def recording_get(key: str) -> bytes:
        read.append(key)
        return get_bytes(key)

    rt.store.get_bytes = recording_get  # type: ignore[method-assign]
    uuid, run_id = queued_task(rt)
    assert pipeline.process(rt, uuid, run_id) == "completed"
    images_json = [key for key in read if key.endswith("images.json")]  # (the checkpoint's manifest is read)
    assert images_json == [] and outbox.pending(rt.tasks.r) == 0

    # a task with a webhook: its images.json is read once and travels in the payload
    uuid, run_id = queued_task(rt, webhook="https://example.org/hook")
    assert pipeline.process(rt, uuid, run_id) == "completed"
    assert [key for key in read if key.endswith("images.json")] == [
        results_prefix(uuid, run_id) + "images.json"
    ]
    (member,) = rt.tasks.r.zrange(outbox.KEY, 0, -1)
    payload = json.loads(member)["payload"]
    assert payload["uuid"] == uuid and payload["images"]


def test_inputs_are_fetched_side_by_side_and_intact_small_or_big(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = make_runtime(simulate_seconds=0.0)
    monkeypatch.setattr(pipeline, "SMALL_OBJECT", 1000)  # objects above it come in parallel ranges
    uuid, run_id = queued_task(rt)
    sent = {f"img{n}.jpg": b"\xff\xd8\xff\xe0" + os.urandom(500 if n % 2 else 5000) for n in range(6)}
    rt.store.delete_prefix(inputs_prefix(uuid))
    for name, data in sent.items():
        rt.store.put_bytes(inputs_prefix(uuid) + name, data)
    lock, state = threading.Lock(), {"running": 0, "most": 0}

    def counted(read: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                state["running"] += 1
                state["most"] = max(state["most"], state["running"])
            try:
                time.sleep(0.1)  # a store round trip
                return read(*args, **kwargs)
            finally:
                with lock:
                    state["running"] -= 1

        return call

    rt.store.iter_range = counted(rt.store.iter_range)  # type: ignore[method-assign]
    rt.store.get_to_file = counted(rt.store.get_to_file)  # type: ignore[method-assign]
    received: dict[str, bytes] = {}
    place = files.place_inputs

    def seen(inputs: Path, *args: Any, **kwargs: Any) -> Any:
        received.update({p.name: p.read_bytes() for p in inputs.iterdir()})
        return place(inputs, *args, **kwargs)

    monkeypatch.setattr(files, "place_inputs", seen)
    assert pipeline.process(rt, uuid, run_id) == "completed"
    assert received == sent
    assert state["most"] > 1
    assert rt.tasks.get(uuid)["imagesCount"] == "6"
