"""End to end with PyODM, the client most users' software goes through, against gunicorn + Celery + Redis."""

from __future__ import annotations

import json
import os
import time
import uuid as uuidlib
import zipfile
from pathlib import Path

import pytest
from pyodm import Node
from pyodm.exceptions import NodeResponseError, TaskFailedError
from pyodm.types import TaskStatus

from tests.e2e.helpers import (
    engine_pgids,
    failing_image,
    group_alive,
    make_images,
    slow_image,
    task_info,
    wait_engine,
    wait_status,
)
from tests.support.farm import Farm, wait_until


def test_info_and_options(farm: Farm) -> None:
    info = farm.node().info()
    assert info.version == "2.2.4"
    assert info.engine == "simulate" and info.engine_version == "3.5.0"
    assert info.max_parallel_tasks == 2
    assert info.cpu_cores >= 1 and info.total_memory > 0
    options = {o.name: o for o in farm.node().options()}
    assert len(options) == 80
    assert options["feature-quality"].type == "enum" and "ultra" in options["feature-quality"].domain
    assert options["mesh-octree-depth"].domain == "integer: 1 <= x <= 14"
    assert options["dsm"].value == "false"


def test_full_lifecycle_with_pyodm(farm: Farm, tmp_path: Path) -> None:
    node = farm.node()
    images = make_images(tmp_path / "in", 3)
    task = node.create_task(images, {"dsm": True, "dtm": True, "orthophoto-resolution": 2, "bogus-option": 1},
                            name="lifecycle")
    info = task.info()
    assert info.name == "lifecycle" and info.images_count == 3
    assert info.status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.COMPLETED)
    names = [o["name"] for o in info.options]
    assert "bogus-option" not in names and {"dsm", "dtm", "pc-ept", "cog", "gltf"} <= set(names)
    task.wait_for_completion(interval=0.3)

    info = task.info(with_output=-3)
    assert info.status == TaskStatus.COMPLETED and info.progress == 100 and info.processing_time > 0
    assert len(info.output) == 3
    full = task.output()
    assert len(full) > 10 and full[-3:] == info.output
    assert task.output(line=-2) == full[-2:]
    assert task.output(line=5) == full[5:]

    out = tmp_path / "out"
    task.download_assets(str(out))
    for rel in ("odm_orthophoto/odm_orthophoto.tif", "odm_dem/dsm.tif", "odm_dem/dtm.tif",
                "odm_georeferencing/odm_georeferenced_model.laz", "images.json", "cameras.json",
                "task_output.txt", "odm_report/report.pdf", "entwine_pointcloud/ept.json"):
        assert (out / rel).is_file(), rel
    assert (out / "odm_orthophoto/odm_orthophoto.tif").read_bytes()[:4] in (b"II*\x00", b"MM\x00*")
    console = (out / "task_output.txt").read_text()
    assert "odm_orthophoto" in console
    assert not (out / "images").exists(), "inputs must not be part of all.zip"

    # restart with new options: back to the start, output cleared, then the new options produce new outputs
    task.restart({"skip-orthophoto": True})
    info = task.info()
    assert info.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)
    assert {"name": "skip-orthophoto", "value": True} in info.options
    assert "dsm" not in [o["name"] for o in info.options]
    task.wait_for_completion(interval=0.3)
    out2 = tmp_path / "out2"
    task.download_assets(str(out2))
    assert not (out2 / "odm_orthophoto/odm_orthophoto.tif").exists()
    assert not (out2 / "odm_dem/dsm.tif").exists()

    task.remove()
    with pytest.raises(NodeResponseError, match="not found"):
        task.info()
    assert not list((farm.root / "storage").glob(f"{task.uuid}*")), "remove must delete the stored files"
    assert farm.redis.keys(f"odmfarm:*{task.uuid}*") == []
    assert {"uuid": task.uuid} not in farm.get("/task/list").json()


def test_cancel_kills_the_engine_process_tree(farm: Farm, tmp_path: Path) -> None:
    images = make_images(tmp_path, 2) + [slow_image(tmp_path, 120)]
    task = farm.node().create_task(images)
    pgid = wait_engine(farm, task.uuid)
    wait_until(lambda: task.info().progress > 0, 30, "no progress while running")
    assert group_alive(pgid)
    started = time.monotonic()
    task.cancel()
    wait_until(lambda: not group_alive(pgid), 2.0, "engine process group still alive 2 s after cancel")
    assert time.monotonic() - started <= 2.0
    time.sleep(1.0)
    info = task.info()
    assert info.status == TaskStatus.CANCELED
    # nothing later overwrites CANCELED, and the slot is free again
    assert farm.get("/info").json()["taskQueueCount"] == 0
    assert task.cancel() is True  # cancel of a cancelled task succeeds
    task.remove()


def test_failure_exit_code_becomes_the_contract_message(farm: Farm, tmp_path: Path) -> None:
    task = farm.node().create_task(make_images(tmp_path, 2) + [failing_image(tmp_path, 137)])
    with pytest.raises(TaskFailedError):
        task.wait_for_completion(interval=0.3)
    info = task_info(farm, task.uuid)
    assert info["status"] == {"code": 30, "errorMessage": "Not enough memory"}
    task.remove()


def test_wrong_token_and_unknown_uuid(farm: Farm) -> None:
    bad = Node("127.0.0.1", farm.ports[0], token="wrong")
    with pytest.raises(NodeResponseError, match="Invalid authentication token"):
        bad.info()
    body = farm.get("/info", params={"token": "wrong"}).json()
    assert body == {"error": "Invalid authentication token: token does not match."}
    assert farm.get("/task/list", params={"token": ""}).json()["error"].startswith("Invalid authentication token")
    assert farm.get("/info", params={"_debugUnauthorized": "1"}).status_code == 401
    unknown = str(uuidlib.uuid4())
    with pytest.raises(NodeResponseError, match=f"{unknown} not found"):
        farm.node().get_task(unknown).info()
    assert farm.get(f"/task/{unknown}/output").json() == {"error": f"{unknown} not found"}
    assert farm.get("/task/not-a-uuid/info").json() == {"error": "not-a-uuid not found"}
    assert farm.post("/task/cancel", data={"uuid": unknown}).json() == {
        "success": False, "error": f"{unknown} not found"}


def test_set_uuid_and_chunked_upload_errors(farm: Farm, tmp_path: Path) -> None:
    chosen = str(uuidlib.uuid4())
    task = farm.node().create_task(make_images(tmp_path, 2), task_uuid=chosen)
    assert task.uuid == chosen
    again = farm.post("/task/new/init", headers={"set-uuid": chosen}).json()
    assert again == {"error": f"Invalid set-uuid: {chosen}"}
    assert farm.post("/task/new/init", headers={"set-uuid": "nope"}).json() == {"error": "Invalid set-uuid: nope"}
    # upload to an unknown session, upload without a file, commit without files, double commit
    assert farm.post(f"/task/new/upload/{uuidlib.uuid4()}", files={"images": ("a.jpg", b"x")}).json() == {
        "error": "Invalid uuid (not found)"}
    session = farm.post("/task/new/init").json()["uuid"]
    assert farm.post(f"/task/new/upload/{session}", data={"x": "1"}).json() == {
        "error": "Need at least 1 file.", "noRetry": True}
    assert farm.post(f"/task/new/commit/{session}").json() == {"error": "Need at least 1 file."}
    farm.post(f"/task/new/upload/{session}", files={"images": ("a.jpg", b"x")})
    farm.post(f"/task/new/upload/{session}", files={"images": ("a.jpg", b"x")})  # a retried file
    assert farm.post(f"/task/new/commit/{session}").json() == {"uuid": session}
    assert farm.post(f"/task/new/commit/{session}").json() == {"error": "Invalid uuid (not found)"}
    assert task_info(farm, session)["imagesCount"] == 1, "a retried file must not become a duplicate image"
    wait_status(farm, session, (40,))
    wait_status(farm, chosen, (40,))
    for uuid in (session, chosen):
        farm.post("/task/remove", data={"uuid": uuid})


def test_invalid_options_are_refused_with_the_collected_errors(farm: Farm) -> None:
    options = json.dumps([{"name": "feature-quality", "value": "bogus"}, {"name": "mesh-octree-depth", "value": 99},
                          {"name": "dsm", "value": "maybe"}])
    body = farm.post("/task/new/init", data={"options": options}).json()
    errors = json.loads(body["error"])
    assert {"name": "feature-quality", "error": "Invalid value bogus (not in enum)"} in errors
    assert {e["name"] for e in errors} == {"feature-quality", "mesh-octree-depth", "dsm"}
    assert "error" in farm.post("/task/new/init", data={"options": "{not json"}).json()
    for hostile in ("5", "null", '"x"', '[1, 2]', '[{"name": {"a": 1}, "value": 1}]'):
        answer = farm.post("/task/new/init", data={"options": hostile})
        assert answer.status_code == 200 and ("error" in answer.json() or "uuid" in answer.json()), hostile


def test_max_images_is_refused_at_upload(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small = farm_factory(max_images=2)
    with pytest.raises(NodeResponseError, match="can only process up to 2"):
        small.node().create_task(make_images(tmp_path, 3))
    assert small.get("/info").json()["maxImages"] == 2
    assert small.get("/task/list").json() == []


def test_api_restart_loses_nothing(farm: Farm, tmp_path: Path) -> None:
    images = make_images(tmp_path, 2) + [slow_image(tmp_path, 6)]
    task = farm.node().create_task(images, name="survivor")
    wait_engine(farm, task.uuid)
    wait_until(lambda: task.info().progress > 0, 30, "no progress")
    before = task.info(with_output=0)
    api = farm.apis[0]
    port = farm.ports[0]
    api.stop()
    farm.apis.remove(api)
    time.sleep(1.0)
    farm.start_api(port=port)
    after = task.info(with_output=0)
    assert after.name == "survivor" and after.progress >= before.progress
    assert after.output[: len(before.output)] == before.output
    task.wait_for_completion(interval=0.3)
    assert task.info().status == TaskStatus.COMPLETED
    with zipfile.ZipFile(task.download_zip(str(tmp_path / "z"))) as zf:
        assert "odm_orthophoto/odm_orthophoto.tif" in zf.namelist()
    task.remove()


def test_progress_never_goes_backwards(farm: Farm, tmp_path: Path) -> None:
    task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 3)])
    seen = []
    while True:
        info = task_info(farm, task.uuid)
        seen.append(info["progress"])
        if info["status"]["code"] not in (10, 20):
            break
        time.sleep(0.05)
    assert seen == sorted(seen) and seen[-1] == 100
    assert any(0 < p < 90 for p in seen), seen
    farm.post("/task/remove", data={"uuid": task.uuid})


def test_engine_process_group_is_gone_after_completion(farm: Farm, tmp_path: Path) -> None:
    task = farm.node().create_task(make_images(tmp_path, 2))
    task.wait_for_completion(interval=0.3)
    assert engine_pgids(farm, task.uuid) == []
    # the scratch folder goes in the run's last step, right after the COMPLETED transition
    wait_until(lambda: not list((farm.root / "worker1" / "scratch").glob(f"{task.uuid}-*")), 10,
               "scratch not cleaned")
    task.remove()


def test_cors_and_error_content_type(farm: Farm) -> None:
    response = farm.get(f"/task/{uuidlib.uuid4()}/info")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert os.environ.get("ODM_FARM_TOKEN") is None


def test_metrics_describe_the_farm(farm: Farm) -> None:
    text = farm.get("/metrics").text
    values = {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    }
    assert values["odm_farm_workers"] == 1 and values["odm_farm_slots"] == 2
    assert values["odm_farm_worker_free_disk_bytes"] > 0
    assert "odm_farm_tasks_active" in values and "odm_farm_webhooks_pending" in values
    refused = farm.get("/metrics", params={"token": "wrong"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
