"""Separate hosts: S3 storage, two workers with their own scratch, API replicas, routing, recovery of lost workers."""

from __future__ import annotations

import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families
from pyodm.types import TaskStatus

from tests.e2e.helpers import (
    engine_pgids,
    group_alive,
    make_images,
    slow_image,
    task_info,
    wait_engine,
    wait_status,
)
from tests.support.farm import Farm, wait_until


def s3_settings(s3_server: Any) -> dict[str, str]:
    return s3_server.env(s3_server.create_bucket())


def worker_of(farm: Farm, uuid: str) -> str:
    return farm.redis.hget(f"odmfarm:task:{uuid}", "worker") or ""


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_two_workers_on_s3_with_two_api_replicas(farm_factory, s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = s3_settings(s3_server)
    farm: Farm = farm_factory(apis=2, workers=0, env=env, worker_slots=1, simulate_seconds=1.5)
    farm.start_worker("w1")
    farm.start_worker("w2")
    info = farm.get("/info", api=1).json()
    assert info["maxParallelTasks"] == 2 and info["workers"] == 2

    nodes = [farm.node(0), farm.node(1)]
    tasks = [nodes[i % 2].create_task(make_images(tmp_path / f"t{i}", 3), {"dsm": True}) for i in range(4)]
    for task in tasks:
        task.wait_for_completion(interval=0.3)
    used = {worker_of(farm, t.uuid) for t in tasks}
    assert used == {"w1", "w2"}, f"both workers should take tasks: {used}"

    # downloads from either replica: parallel ranges (small chunks force PyODM's ranged path)
    first = Path(tasks[0].download_zip(str(tmp_path / "ranged"), parallel_chunks_size=0.004))
    streamed = farm.get(f"/task/{tasks[0].uuid}/download/all.zip", api=1)
    assert first.read_bytes() == streamed.content
    with zipfile.ZipFile(first) as zf:
        assert zf.testzip() is None
        assert "odm_dem/dsm.tif" in zf.namelist()

    # results live in S3, not on any disk of the API; scratch folders were cleaned
    keys = {o["Key"] for o in s3_server.client.list_objects_v2(Bucket=env["ODM_FARM_S3_BUCKET"])["Contents"]}
    run_id = farm.redis.hget(f"odmfarm:task:{tasks[0].uuid}", "resultsRun")
    assert f"tasks/{tasks[0].uuid}/results/{run_id}/all.zip" in keys
    assert f"tasks/{tasks[0].uuid}/inputs/img1.jpg" in keys
    assert files_under(farm.root / "data") == [] and files_under(farm.root / "storage") == []
    for name in ("w1", "w2"):
        assert files_under(farm.root / name / "scratch") == [], f"{name} left scratch files"

    # the redirect: a replica configured to answer 302 with a presigned URL; PyODM follows it per range
    redirecting = farm.start_api(ODM_FARM_DOWNLOAD_REDIRECT="true")
    port = int(redirecting.name.split("-")[1])
    answer = requests.get(f"http://127.0.0.1:{port}/task/{tasks[0].uuid}/download/all.zip",
                          params=farm.params(), allow_redirects=False, timeout=30)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(s3_server.endpoint)
    via_redirect = Path(farm.node(2).get_task(tasks[0].uuid).download_zip(
        str(tmp_path / "redirected"), parallel_chunks_size=0.004))
    assert via_redirect.read_bytes() == first.read_bytes()
    ranged = requests.get(answer.headers["Location"], headers={"Range": "bytes=10-19"}, timeout=30)
    assert ranged.status_code == 206 and ranged.content == first.read_bytes()[10:20]

    # what the redirects handed to the store shows in /metrics: the whole file, or the range asked
    def redirected() -> float:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", params=farm.params(), timeout=30).text
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "odm_farm_download_redirected_bytes_total")

    before = redirected()
    url = f"http://127.0.0.1:{port}/task/{tasks[0].uuid}/download/all.zip"
    for headers in ({}, {"Range": "bytes=10-19"}):
        requests.get(url, params=farm.params(), headers=headers, allow_redirects=False, timeout=30)
    assert redirected() - before == first.stat().st_size + 10


def test_one_upload_split_across_replicas(farm_factory, s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(apis=2, workers=1, env=s3_settings(s3_server))
    images = make_images(tmp_path, 4)
    uuid = farm.post("/task/new/init", api=0, data={"name": "split upload"}).json()["uuid"]
    for i, path in enumerate(images):
        with open(path, "rb") as fh:
            assert farm.post(f"/task/new/upload/{uuid}", api=i % 2,
                             files={"images": (Path(path).name, fh)}).json() == {"success": True}
    assert farm.post(f"/task/new/commit/{uuid}", api=1).json() == {"uuid": uuid}
    done = wait_status(farm, uuid, (40,))
    assert done["imagesCount"] == 4 and done["name"] == "split upload"
    assert task_info(farm, uuid, api=0) == task_info(farm, uuid, api=1)
    a = farm.get(f"/task/{uuid}/download/all.zip", api=0).content
    b = farm.get(f"/task/{uuid}/download/all.zip", api=1).content
    assert a == b and len(a) > 1000


def test_gpu_routing_and_fallback_to_cpu(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(workers=0, worker_slots=2, simulate_seconds=0.3)
    gpu = farm.start_worker("gpu1", ODM_FARM_WORKER_GPU="true", ODM_FARM_WORKER_QUEUES="gpu")
    farm.start_worker("cpu1", ODM_FARM_WORKER_GPU="false")
    workers = {w["name"]: w for w in farm.get("/workers").json()}
    assert workers["gpu1"]["gpu"] is True and workers["gpu1"]["queues"] == ["gpu"]
    assert workers["cpu1"]["queues"] == ["cpu"]

    node = farm.node()
    wants_gpu = []
    for i in range(3):  # one at a time: a free GPU is preferred (a busy one sends tasks to free CPU slots)
        wants_gpu.append(node.create_task(make_images(tmp_path / f"g{i}", 2)))
        wants_gpu[-1].wait_for_completion(interval=0.3)
    no_gpu = [node.create_task(make_images(tmp_path / f"c{i}", 2), {"no-gpu": True}) for i in range(2)]
    for task in no_gpu:
        task.wait_for_completion(interval=0.3)
    assert {worker_of(farm, t.uuid) for t in wants_gpu} == {"gpu1"}
    assert {worker_of(farm, t.uuid) for t in no_gpu} == {"cpu1"}

    gpu.stop()  # a clean stop deregisters at once; a crashed one drops out after the heartbeat TTL
    wait_until(lambda: "gpu1" not in {w["name"] for w in farm.get("/workers").json()}, 15, "gpu1 still listed")
    later = node.create_task(make_images(tmp_path / "later", 2))
    later.wait_for_completion(interval=0.3)
    assert worker_of(farm, later.uuid) == "cpu1"
    assert farm.redis.hget(f"odmfarm:task:{later.uuid}", "queue") == "cpu"


def test_a_worker_that_stops_beating_disappears_from_info(farm_factory) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(workers=0, worker_ttl=3, heartbeat_seconds=0.5)
    farm.start_worker("a", ODM_FARM_WORKER_SLOTS="1")
    victim = farm.start_worker("b", ODM_FARM_WORKER_SLOTS="3")
    wait_until(lambda: farm.get("/info").json()["maxParallelTasks"] == 4, 10, "slots not summed")
    victim.stop(signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: farm.get("/info").json()["maxParallelTasks"] == 1, 30, "dead worker still in /info")
    assert time.monotonic() - started < 10


def test_a_killed_worker_task_is_requeued_and_completes(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(workers=0, worker_slots=1, lease_seconds=3, simulate_seconds=0.5)
    farm.start_worker("w1")
    farm.start_worker("w2")
    task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 5)])
    pgid = wait_engine(farm, task.uuid)
    owner = worker_of(farm, task.uuid)
    survivor = "w2" if owner == "w1" else "w1"
    victim = next(w for w in farm.workers if w.log.stem == owner)
    victim.stop(signal.SIGKILL)

    info = wait_status(farm, task.uuid, (40, 30), timeout=90)
    assert info["status"]["code"] == 40, info
    assert worker_of(farm, task.uuid) == survivor
    console = farm.get(f"/task/{task.uuid}/output").json()
    assert any(f"Worker {owner} stopped responding" in line and "Re-queued" in line for line in console)
    assert farm.redis.hget(f"odmfarm:task:{task.uuid}", "attempt") == "2"
    assert task.info().status == TaskStatus.COMPLETED

    # the host's worker comes back: it kills what is left of the orphaned engine and drops the stale scratch
    farm.start_worker(owner)
    wait_until(lambda: not group_alive(pgid), 15, "orphaned engine not killed by the restarted worker")
    assert engine_pgids(farm, task.uuid) == []
    assert not list((farm.root / owner / "scratch").glob(f"{task.uuid}-*"))


def test_a_stopping_worker_hands_its_task_over_at_once(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a lease far longer than the test: only the hand-over on shutdown can explain a quick completion
    farm: Farm = farm_factory(workers=0, worker_slots=1, lease_seconds=300, simulate_seconds=0.5)
    farm.start_worker("w1")
    farm.start_worker("w2")
    task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 4)])
    pgid = wait_engine(farm, task.uuid)
    owner = worker_of(farm, task.uuid)
    victim = next(w for w in farm.workers if w.log.stem == owner)
    started = time.monotonic()
    victim.stop(signal.SIGTERM)
    assert time.monotonic() - started < 10, "a warm shutdown must not wait for the run to finish"
    assert not group_alive(pgid), "the stopping worker's engine must be gone"
    info = wait_status(farm, task.uuid, (40, 30), timeout=60)
    assert info["status"]["code"] == 40
    assert worker_of(farm, task.uuid) != owner
    console = farm.get(f"/task/{task.uuid}/output").json()
    assert any(f"Worker {owner} is shutting down" in line and "Re-queued" in line for line in console)


def test_failed_scratch_is_kept_only_when_asked(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.e2e.helpers import failing_image

    farm: Farm = farm_factory(workers=0, simulate_seconds=0.2)
    farm.start_worker("keeper", ODM_FARM_KEEP_FAILED_SCRATCH="true")
    task = farm.node().create_task(make_images(tmp_path, 1) + [failing_image(tmp_path, 1)])
    assert wait_status(farm, task.uuid, (30, 40))["status"]["code"] == 30
    kept = list((farm.root / "keeper" / "scratch").glob(f"{task.uuid}-*"))
    assert len(kept) == 1 and (kept[0] / "project" / task.uuid / "task_output.txt").exists()
    ok = farm.node().create_task(make_images(tmp_path / "ok", 1))
    assert wait_status(farm, ok.uuid, (30, 40))["status"]["code"] == 40
    # the scratch folder goes right after the COMPLETED transition, in the run's last step
    wait_until(lambda: not list((farm.root / "keeper" / "scratch").glob(f"{ok.uuid}-*")), 10,
               "successful runs leave nothing")
    # a restarted worker cleans stale scratch but keeps what was kept on purpose
    farm.workers[0].stop()
    farm.start_worker("keeper")
    assert kept[0].exists()
