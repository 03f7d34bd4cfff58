"""Checkpoints and resume with real Redis, Celery workers and object stores (local and SeaweedFS S3).

A worker killed with -9 during a late stage: the task completes on the other worker, resumed from the last
checkpoint (the stages before it are not computed again). A restart resumes the same way, or reruns from the
earliest stage changed options affect. A corrupted checkpoint makes the run start over, saying why. Removing a
task deletes its checkpoints.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from shared.storage.local import LocalStore
from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm, wait_until
from tests.support.faults import kill_worker, storage_dir, wait_claim, wait_gone
from workers import checkpoints

RESUMED = "Resuming from checkpoint after stage"
COMPUTED_OPENSFM = "running opensfm detect_features"  # the stand-in prints it only when it computes opensfm


@pytest.fixture(scope="module")
def farm(module_farms: Any) -> Farm:
    # a run long enough to kill inside a late stage; a short lease for a quick takeover
    return module_farms(simulate_seconds=8)


@pytest.fixture(scope="module")
def quick(module_farms: Any) -> Farm:
    """One worker and short runs, for restarts."""
    return module_farms(workers=("q1",), simulate_seconds=2)


def console(farm: Farm, uuid: str) -> list[str]:
    return list(farm.get(f"/task/{uuid}/output").json())


def after(lines: list[str], marker: str) -> list[str]:
    index = next(i for i, line in enumerate(lines) if marker in line)
    return lines[index:]


def checkpoint_keys(farm: Farm, uuid: str) -> list[Path]:
    folder = storage_dir(farm) / uuid / "checkpoints"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def wait_line(farm: Farm, uuid: str, text: str, timeout: float = 30) -> None:
    wait_until(
        lambda: any(text in line for line in console(farm, uuid)), timeout, f"no console line {text!r}"
    )


def restart(farm: Farm, uuid: str, options: list[dict[str, Any]] | None = None) -> None:
    data: dict[str, Any] = {"uuid": uuid}
    if options is not None:
        data["options"] = json.dumps(options)
    assert farm.post("/task/restart", data=data).json() == {"success": True}


def test_a_worker_killed_in_a_late_stage_resumes_on_the_other(farm: Farm, tmp_path: Path) -> None:
    task = farm.node().create_task(make_images(tmp_path, 3), {"dsm": True})
    first = wait_claim(farm, task.uuid)
    wait_line(farm, task.uuid, "Checkpoint saved after stage odm_georeferencing")
    killed_at = time.monotonic()
    _, pids = kill_worker(farm, first.worker)
    assert wait_gone(pids, 5) == []
    second = wait_claim(farm, task.uuid, exclude=[first.run_id], timeout=30)
    assert second.worker != first.worker
    info = wait_status(farm, task.uuid, (30, 40, 50), timeout=60)
    lines = console(farm, task.uuid)
    assert info["status"]["code"] == 40, lines[-20:]
    resumed = after(lines, "started processing (attempt 2)")
    resume_line = next(line for line in resumed if RESUMED in line)
    assert "after stage odm_georeferencing" in resume_line or "after stage odm_dem" in resume_line, (
        resume_line
    )
    assert "saved at" in resume_line
    # the earlier stages are not computed again: the stand-in finds their outputs and skips them
    assert not any(COMPUTED_OPENSFM in line for line in resumed), resumed
    assert any("skipping opensfm" in line for line in resumed)
    assert any("Running odm_orthophoto stage" in line for line in resumed)
    # the resumed attempt took a fraction of the whole run
    assert time.monotonic() - killed_at < 3 + 8 + 10
    assert farm.get(f"/task/{task.uuid}/download/orthophoto.tif").status_code == 200
    assert checkpoint_keys(farm, task.uuid), "a completed task keeps its checkpoint until it is removed"
    farm.start_worker(first.worker)  # back to two workers for the next tests


def _completed(farm: Farm, tmp_path: Path, options: dict[str, Any] | None = None) -> str:
    task = farm.node().create_task(make_images(tmp_path, 2), options or {"dsm": True})
    assert wait_status(farm, task.uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    return str(task.uuid)


def test_restart_without_changed_options_resumes(quick: Farm, tmp_path: Path) -> None:
    uuid = _completed(quick, tmp_path)
    restart(quick, uuid)
    assert wait_status(quick, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    lines = console(quick, uuid)
    print("\n".join(lines))
    assert any(RESUMED in line for line in lines), lines[:10]
    assert not any(COMPUTED_OPENSFM in line for line in lines)


def test_restart_with_changed_options_reruns_from_the_stage_they_affect(quick: Farm, tmp_path: Path) -> None:
    uuid = _completed(quick, tmp_path)
    restart(quick, uuid, [{"name": "dsm", "value": True}, {"name": "mesh-size", "value": 5000}])
    assert wait_status(quick, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    lines = console(quick, uuid)
    line = next(line for line in lines if RESUMED in line)
    assert "rerunning from stage odm_meshing" in line and "mesh-size" in line, line
    tail = after(lines, RESUMED)
    assert not any(COMPUTED_OPENSFM in x for x in tail)
    assert not any("skipping odm_meshing" in x for x in tail)
    assert any("Found existing odm_filterpoints" in x for x in tail)

    # options that change the first stage: nothing of the checkpoint applies
    restart(quick, uuid, [{"name": "dsm", "value": True}, {"name": "camera-lens", "value": "brown"}])
    assert wait_status(quick, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    lines = console(quick, uuid)
    assert not any(RESUMED in x for x in lines)
    assert any("does not apply" in x and "camera-lens" in x and "starting over" in x for x in lines), lines[
        :6
    ]
    assert any(COMPUTED_OPENSFM in x for x in lines)


def test_results_of_a_resumed_restart_follow_the_new_options(quick: Farm, tmp_path: Path) -> None:
    """Outputs the checkpoint holds of the stages rerun (an orthophoto, a DSM) are not restored: the new options
    no longer make them, so the results must not have them."""
    uuid = _completed(quick, tmp_path)
    wait_until(lambda: not list(quick.root.glob(f"*/scratch/{uuid}-*")), 30, "the run never ended")
    # a checkpoint after the last stage, made here from the run's results (the run's own last one may have
    # been abandoned when it ended): it holds the orthophoto and the DSM
    all_zip = quick.get(f"/task/{uuid}/download/all.zip")
    project = tmp_path / "made" / uuid
    with zipfile.ZipFile(io.BytesIO(all_zip.content)) as zf:
        zf.extractall(project)
    options = quick.get(f"/task/{uuid}/info").json()["options"]
    base = checkpoints.Manifest(uuid, "made-by-test", "odm_postprocess", 0, "simulate", options, {})
    made = checkpoints.save(LocalStore(storage_dir(quick)), base, project)
    assert made is not None and {"odm_orthophoto/odm_orthophoto.tif", "odm_dem/dsm.tif"} <= set(
        made.manifest.files
    )

    restart(quick, uuid, [{"name": "skip-orthophoto", "value": True}])  # and no dsm
    assert wait_status(quick, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    line = next(line for line in console(quick, uuid) if RESUMED in line)
    assert "rerunning from stage odm_dem" in line, line
    all_zip = quick.get(f"/task/{uuid}/download/all.zip")
    assert all_zip.status_code == 200
    with zipfile.ZipFile(io.BytesIO(all_zip.content)) as zf:
        names = set(zf.namelist())
    assert "odm_georeferencing/odm_georeferenced_model.laz" in names, sorted(names)
    assert "odm_orthophoto/odm_orthophoto.tif" not in names and "odm_dem/dsm.tif" not in names, sorted(names)


def test_a_corrupted_checkpoint_starts_over_and_says_why(quick: Farm, tmp_path: Path) -> None:
    uuid = _completed(quick, tmp_path)
    blob_files = [p for p in checkpoint_keys(quick, uuid) if p.parent.name == "blobs"]
    assert blob_files
    for path in blob_files:
        path.write_bytes(b"garbage" + path.read_bytes()[7:])
    restart(quick, uuid)
    info = wait_status(quick, uuid, (30, 40, 50), timeout=60)
    lines = console(quick, uuid)
    assert info["status"]["code"] == 40, lines[-10:]
    assert any("cannot be used" in x and "starting over" in x for x in lines), lines[:6]
    assert not any(RESUMED in x for x in lines)
    assert any(COMPUTED_OPENSFM in x for x in lines)
    # the run saved fresh checkpoints in place of the broken one
    restart(quick, uuid)
    assert wait_status(quick, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    assert any(RESUMED in x for x in console(quick, uuid))


def test_remove_deletes_the_checkpoints(quick: Farm, tmp_path: Path) -> None:
    uuid = _completed(quick, tmp_path)
    assert checkpoint_keys(quick, uuid)
    assert quick.post("/task/remove", data={"uuid": uuid}).json() == {"success": True}
    assert checkpoint_keys(quick, uuid) == []
    assert not (storage_dir(quick) / uuid).exists()


def test_on_s3_a_restart_resumes_and_remove_leaves_nothing(
    module_farms: Any, s3_server: Any, tmp_path: Path
) -> None:
    bucket = s3_server.create_bucket()
    s3 = module_farms(workers=("s1",), env=s3_server.env(bucket, prefix="farm"), simulate_seconds=2)
    uuid = _completed(s3, tmp_path)

    def keys() -> list[str]:
        listing = s3_server.client.list_objects_v2(Bucket=bucket, Prefix=f"farm/{uuid}/checkpoints/")
        return [o["Key"] for o in listing.get("Contents", [])]

    assert f"farm/{uuid}/checkpoints/manifest.json" in keys()
    restart(s3, uuid, [{"name": "dsm", "value": True}, {"name": "orthophoto-resolution", "value": 10}])
    assert wait_status(s3, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    line = next(x for x in console(s3, uuid) if RESUMED in x)
    assert "rerunning from stage odm_orthophoto" in line, line
    assert s3.post("/task/remove", data={"uuid": uuid}).json() == {"success": True}
    assert keys() == []


def test_with_checkpoints_off_nothing_is_saved_and_a_restart_starts_over(
    module_farms: Any, tmp_path: Path
) -> None:
    off = module_farms(workers=("o1",), checkpoints="false", simulate_seconds=1)
    uuid = _completed(off, tmp_path)
    assert checkpoint_keys(off, uuid) == []
    restart(off, uuid)
    assert wait_status(off, uuid, (30, 40, 50), timeout=60)["status"]["code"] == 40
    lines = console(off, uuid)
    assert not any(RESUMED in x or "Checkpoint saved" in x for x in lines)
    assert any(COMPUTED_OPENSFM in x for x in lines)
