"""ODM's split-merge across the farm: a client that behaves like ODM's LocalRemoteExecutor sends submodels."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from pyodm import Node
from pyodm.types import TaskStatus

from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm

# what ODM's ToolchainTask asks a node to send back (opendm/remote.py), plus a seeded file to prove seed.zip
TOOLCHAIN_OUTPUTS = ["odm_orthophoto/cutline.gpkg", "odm_orthophoto/odm_orthophoto_cut.tif", "odm_dem",
                     "odm_report", "odm_georeferencing", "opensfm/camera_models.json"]


def build_submodel(root: Path, name: str) -> Path:
    project = root / name
    make_images(project / "images", 3, prefix=f"{name}_")
    (project / "opensfm").mkdir(parents=True)
    (project / "opensfm" / "camera_models.json").write_text(json.dumps({"submodel": name}))
    (project / "opensfm" / "reference_lla.json").write_text('{"latitude": 46, "longitude": -91, "altitude": 0}')
    (project / "gcp_list.txt").write_text("EPSG:4326\n")
    with zipfile.ZipFile(project / "seed.zip", "w") as zf:
        for rel in ("opensfm/camera_models.json", "opensfm/reference_lla.json"):
            zf.write(project / rel, rel)
        zf.writestr("opensfm/features/empty", "")  # ODM's touch files for missing optional folders
    return project


class SplitMergeClient:
    """What ODM's LocalRemoteExecutor does per submodel (opendm/remote.py), with PyODM."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.delays = 0
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.uuids: list[str] = []

    def process(self, project: Path) -> None:
        images = sorted(str(p) for p in (project / "images").iterdir())
        images += [str(project / "gcp_list.txt"), str(project / "seed.zip")]
        for _ in range(60):
            task = self.node.create_task(images, {"dsm": True, "orthophoto-resolution": 5},
                                         skip_post_processing=True, outputs=TOOLCHAIN_OUTPUTS)
            info = task.info(with_output=-3)
            if info.status == TaskStatus.QUEUED:
                # ODM reads QUEUED as "node full": it removes the task and tries again later
                with self.lock:
                    self.delays += 1
                task.remove()
                time.sleep(0.5)
                continue
            assert info.status in (TaskStatus.RUNNING, TaskStatus.COMPLETED), info.status
            assert isinstance(info.output, list) and len(info.output) <= 3

            def refuse_requeue(status: Any) -> None:
                assert status.status != TaskStatus.QUEUED, "a RUNNING task turned QUEUED"

            task.wait_for_completion(status_callback=refuse_requeue, interval=0.3)
            task.download_assets(str(project))
            with self.lock:
                self.uuids.append(task.uuid)
            task.remove()
            return
        self.errors.append(f"{project.name}: never accepted")


def test_submodels_run_concurrently_on_two_workers(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(workers=0, worker_slots=1, simulate_seconds=1.0)
    farm.start_worker("w1")
    farm.start_worker("w2")
    client = SplitMergeClient(Node.from_url(f"{farm.url}?token={farm.token}"))
    projects = [build_submodel(tmp_path, f"submodel_{i:04d}") for i in range(4)]
    seen_workers: set[str] = set()

    def watch() -> None:
        while any(t.is_alive() for t in threads):
            for uuid in farm.redis.smembers("odmfarm:active"):
                worker = farm.redis.hget(f"odmfarm:task:{uuid}", "worker")
                if worker:
                    seen_workers.add(worker)
            time.sleep(0.05)

    threads = [threading.Thread(target=client.process, args=(p,)) for p in projects]
    for t in threads:
        t.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads:
        t.join(180)
    watcher.join()

    assert client.errors == []
    assert len(client.uuids) == 4
    assert seen_workers == {"w1", "w2"}, seen_workers
    assert client.delays > 0, "with 2 slots and 4 submodels some must have been told the farm was full"
    for project in projects:
        for rel in ("odm_dem/dsm.tif", "odm_report/report.pdf", "odm_georeferencing/odm_georeferenced_model.laz"):
            assert (project / rel).is_file(), f"{project.name}: {rel} missing"
        # the seeded file came back through the project root, untouched
        assert json.loads((project / "opensfm/camera_models.json").read_text()) == {"submodel": project.name}
        assert not (project / "odm_orthophoto" / "odm_orthophoto.tif").exists(), "outputs must limit all.zip"
        assert not (project / "entwine_pointcloud").exists(), "skipPostProcessing must not add EPT"
    assert farm.get("/task/list").json() == []


def test_a_split_task_sends_submodels_back_to_the_farm(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(public_url="http://127.0.0.1:9/farm", simulate_seconds=0.2)
    task = farm.node().create_task(make_images(tmp_path, 3), {"split": 2, "split-overlap": 10})
    wait_status(farm, task.uuid, (40, 30))
    console = "\n".join(farm.get(f"/task/{task.uuid}/output").json())
    assert "submodels are sent back to the farm at http://127.0.0.1:9/farm" in console
    options = next(o for o in task.info().options if o["name"] == "split")
    assert options["value"] == 2
    # the engine's own banner shows the argument it was given (ODM prints its options the same way): the
    # worker's loopback proxy, which adds the token itself, so the token is in neither argv nor console
    assert "sm_cluster: http://127.0.0.1:" in console, console[:3000]
    assert "test-token" not in console
