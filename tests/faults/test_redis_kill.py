"""Redis killed (SIGKILL) and restarted from its append-only file, mid-upload and mid-task: nothing is lost.

Redis runs with AOF and `appendfsync always`, so every write Redis acknowledged is on disk when it dies:
anything missing afterwards was lost by the farm, not by Redis's fsync policy. (`odm-farm up` runs
`everysec`, which can lose the last second of writes on a host crash.) Outages last OUTAGE seconds, shorter
than the lease, so a healthy run must not lose its attempt. While Redis is down, a client polls the API:
no answer may be a 5xx (PyODM and WebODM turn a 5xx into a failed task).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from odm_farm.redis_server import free_port, start_redis
from tests.e2e.helpers import make_images, slow_image, wait_status
from tests.support.farm import TOKEN, Farm, farm_env, wait_until
from tests.support.faults import Timeline, record, storage_dir, wait_claim, wait_phase

from .conftest import FAST

OUTAGE = 4.0
LEASE = 10


@dataclass
class AofRedis:
    data: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_redis(self.data, self.port, persistent=True)
        redis.Redis(port=self.port).config_set("appendfsync", "always")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown save, only what the AOF already holds
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Poller:
    """A client asking the API during the outage; records every status code."""

    farm: Farm
    paths: list[str]
    codes: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.paths:
                try:
                    answer = requests.get(self.farm.url + path, params=self.farm.params(), timeout=30)
                    self.codes.append(answer.status_code)
                    if answer.status_code >= 500:
                        self.failures.append(f"{path}: {answer.status_code} {answer.text[:200]}")
                except requests.RequestException as exc:
                    self.failures.append(
                        f"{path}: {type(exc).__name__}"
                    )  # clients retry; recorded for the report
            time.sleep(0.2)


@pytest.fixture(scope="module")
def aof(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path_factory.mktemp("aof") / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def farm(aof: AofRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("redisfarm")
    env = farm_env(root, f"redis://127.0.0.1:{aof.port}/0", token=TOKEN, **{**FAST, "lease_seconds": LEASE})
    farm = Farm(root, env, token=TOKEN)
    try:
        farm.start_api()
        farm.start_worker("w1")
        yield farm
    finally:
        farm.stop()


def outage(aof: AofRedis, farm: Farm, paths: list[str], timeline: Timeline, note: Any = None) -> Poller:
    poller = Poller(farm, paths)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    before = note() if note else ""
    aof.kill()
    timeline.mark(f"redis killed {before}")
    time.sleep(OUTAGE)
    aof.start()
    timeline.mark("redis restarted from its AOF")
    time.sleep(1.0)
    poller.stop.set()
    thread.join(40)
    return poller


def stage_lines(console: list[str]) -> list[str]:
    pattern = re.compile(r"(Running|Finished) \w+ stage|ODM app finished")
    return [m.group(0) for line in console if (m := pattern.search(line))]


def test_redis_killed_mid_upload(aof: AofRedis, farm: Farm, tmp_path: Path) -> None:
    count = 60
    images = make_images(tmp_path, count, size=1_000_000)
    timeline = Timeline()
    result: dict[str, Any] = {}

    def upload() -> None:
        try:
            result["task"] = farm.node().create_task(
                images, parallel_uploads=4, max_retries=10, retry_timeout=1
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    r = farm.redis

    def uploaded() -> int:
        return max([r.hlen(key) for key in r.scan_iter(match="odmfarm:upload:*:files")] or [0])

    wait_until(lambda: uploaded() >= 8, 30, "the upload never started")
    poller = outage(
        aof, farm, ["/info", "/task/list"], timeline, lambda: f"after {uploaded()} of {count} files"
    )
    uploader.join(120)
    print(timeline)
    assert "error" not in result, f"PyODM's upload failed through the Redis restart: {result.get('error')!r}"
    task = result["task"]
    info = wait_status(farm, task.uuid, (30, 40, 50), timeout=60)
    assert info["status"]["code"] == 40, info
    assert info["imagesCount"] == count
    stored = sorted(p.name for p in (storage_dir(farm) / task.uuid / "inputs").iterdir())
    assert stored == sorted(Path(p).name for p in images), "stored inputs differ from the uploaded images"
    assert all(code < 500 for code in poller.codes), poller.failures


def test_redis_killed_mid_task(aof: AofRedis, farm: Farm, tmp_path: Path) -> None:
    node = farm.node()
    control = node.create_task(make_images(tmp_path / "control", 3))
    assert wait_status(farm, control.uuid, (30, 40, 50))["status"]["code"] == 40
    expected = stage_lines(farm.get(f"/task/{control.uuid}/output").json())

    timeline = Timeline()
    task = node.create_task(make_images(tmp_path / "in", 2) + [slow_image(tmp_path / "in", 6)])
    claim = wait_claim(farm, task.uuid)
    wait_phase(farm, claim, task.uuid, "engine")
    time.sleep(1.0)
    poller = outage(aof, farm, ["/info", f"/task/{task.uuid}/info", f"/task/{task.uuid}/output"], timeline)
    info = wait_status(farm, task.uuid, (30, 40, 50), timeout=60)
    timeline.mark(f"status {info['status']}")
    print(timeline)
    assert info["status"]["code"] == 40, info
    assert info["imagesCount"] == 3
    assert record(farm, task.uuid)["attempt"] == "1", "an outage shorter than the lease must not cost a run"
    console = farm.get(f"/task/{task.uuid}/output").json()
    assert stage_lines(console) == expected, "console lines lost, duplicated or out of order"
    assert len([line for line in console if "started processing" in line]) == 1
    assert all(code < 500 for code in poller.codes), poller.failures


def test_redis_down_longer_than_the_lease_does_not_cost_a_healthy_run(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Leases and heartbeats lapse while Redis is down; the live runs take their leases again, nobody reaps."""
    server = AofRedis(tmp_path_factory.mktemp("aof-long") / "redis", free_port())
    server.start()
    root = tmp_path_factory.mktemp("longoutage")
    env = farm_env(root, f"redis://127.0.0.1:{server.port}/0", token=TOKEN, **FAST)  # lease 3 s
    farm = Farm(root, env, token=TOKEN)
    try:
        farm.start_api()
        farm.start_worker("w1")
        farm.start_worker("w2")
        task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 12)])
        claim = wait_claim(farm, task.uuid)
        wait_phase(farm, claim, task.uuid, "engine")
        server.kill()
        time.sleep(3 * FAST["lease_seconds"])  # every lease and heartbeat has expired when Redis returns
        server.start()
        info = wait_status(farm, task.uuid, (30, 40, 50), timeout=90)
        assert info["status"]["code"] == 40, info
        assert record(farm, task.uuid)["attempt"] == "1", "a Redis outage must not cost a healthy run"
        console = farm.get(f"/task/{task.uuid}/output").json()
        assert len([line for line in console if "started processing" in line]) == 1, console
    finally:
        farm.stop()
        server.stop()
