"""Checkpoint manifests and deltas (workers/checkpoints.py) on the local store and on a real S3 server, and the
choice of the stage a run reruns from (workers/resume.py)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.storage.base import ObjectStore
from shared.storage.local import LocalStore
from workers import checkpoints, resume
from workers.checkpoints import BLOBS, MANIFEST, Checkpointer, CheckpointError, Manifest, checkpoint_prefix

UUID = "0b7c8c1e-6a1f-4c3e-9a55-1d2f3e4a5b6c"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        yield request.getfixturevalue("s3_store")


def base(stage: str = "dataset", files: dict[str, checkpoints.Entry] | None = None) -> Manifest:
    return Manifest(UUID, "run1", stage, 0, "simulate", [{"name": "dsm", "value": True}], files or {})


def project_with(root: Path, files: dict[str, bytes]) -> Path:
    project = root / "project" / UUID
    for rel, data in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(data)
    return project


def blobs(store: ObjectStore) -> set[str]:
    return {key for key, _ in store.list(checkpoint_prefix(UUID) + BLOBS)}


class CountingStore:
    """Wraps a store and counts the objects written (blobs and manifests)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.written: list[str] = []

    def writer(self, key: str) -> Any:
        self.written.append(key)
        return self.inner.writer(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.written.append(key)
        self.inner.put_bytes(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_checkpoint_uploads_only_what_changed_and_writes_the_manifest_last(
    store: ObjectStore, tmp_path: Path
) -> None:
    project = project_with(
        tmp_path, {"images.json": b"[]", "opensfm/reconstruction.json": b"{}", "images/a.jpg": b"jpg"}
    )
    (project / "task_output.txt").write_text("console")
    counting = CountingStore(store)
    first = checkpoints.save(counting, base("opensfm"), project)  # type: ignore[arg-type]
    assert first is not None and first.uploaded_files == 2
    # the inputs and the console are not saved; the manifest is the last object written
    assert set(first.manifest.files) == {"images.json", "opensfm/reconstruction.json"}
    assert counting.written[-1] == checkpoint_prefix(UUID) + MANIFEST

    counting.written.clear()
    (project / "odm_meshing").mkdir()
    (project / "odm_meshing" / "odm_mesh.ply").write_bytes(b"ply" * 1000)
    (project / "images.json").write_bytes(b'[{"changed": 1}]')
    second = checkpoints.save(counting, base("odm_meshing", first.manifest.files), project)  # type: ignore[arg-type]
    assert second is not None
    assert sorted(k.rsplit("/", 2)[-2] for k in counting.written[:-1]) == ["blobs", "blobs"]
    assert second.uploaded_files == 2 and second.uploaded_bytes == 3000 + len(b'[{"changed": 1}]')
    kept = second.manifest.files["opensfm/reconstruction.json"]
    assert kept == first.manifest.files["opensfm/reconstruction.json"]  # unchanged: same blob
    # the blob of the replaced images.json is collected after the commit
    assert blobs(store) == {checkpoint_prefix(UUID) + e.key for e in second.manifest.files.values()}
    loaded = checkpoints.load(store, UUID)
    assert loaded is not None and loaded.stage == "odm_meshing" and loaded.files == second.manifest.files


def test_restore_round_trips_files_modes_mtimes_and_links(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    project = project_with(tmp_path / "a", {"opensfm/big.bin": data, "run.sh": b"#!/bin/sh\n"})
    os.chmod(project / "run.sh", 0o755)
    os.symlink("opensfm/big.bin", project / "link.bin")
    saved = checkpoints.save(store, base("openmvs"), project)
    assert saved is not None
    target = project_with(tmp_path / "b", {"images/a.jpg": b"placed input"})
    restored = checkpoints.restore(store, saved.manifest, target)
    assert restored == len(data) + len(b"#!/bin/sh\n")
    assert (target / "opensfm/big.bin").read_bytes() == data
    assert os.stat(target / "run.sh").st_mode & 0o777 == 0o755
    assert os.readlink(target / "link.bin") == "opensfm/big.bin"
    # same size and mtime as saved: the next checkpoint of the resumed run uploads nothing again
    assert checkpoints.delta(saved.manifest.files, checkpoints.scan(target)) == []
    assert (target / "images/a.jpg").read_bytes() == b"placed input"


def test_paths_of_the_old_project_folder_are_pointed_at_the_new_one(
    store: ObjectStore, tmp_path: Path
) -> None:
    """Another worker restores into another scratch path: ODM's absolute paths and links must follow."""
    old = project_with(tmp_path / "worker1", {"images/a.jpg": b"jpg"})
    listing = f"{old}/images/a.jpg\n".encode()
    binary = b"\x00npz" + str(old).encode()  # binary files are not rewritten
    project_with(tmp_path / "worker1", {"opensfm/image_list.txt": listing, "opensfm/f.npz": binary})
    os.symlink(old / "images", old / "opensfm" / "images")
    os.symlink("../images", old / "opensfm" / "relative")
    saved = checkpoints.save(store, base("opensfm"), old)
    assert saved is not None and saved.manifest.root == str(old)
    assert Manifest.from_json(saved.manifest.to_json(), UUID).root == str(old)

    new = project_with(tmp_path / "worker2-longer-path", {"images/a.jpg": b"jpg"})
    checkpoints.restore(store, saved.manifest, new)
    assert (new / "opensfm/image_list.txt").read_text() == f"{new}/images/a.jpg\n"
    assert os.readlink(new / "opensfm/images") == str(new / "images")
    assert os.readlink(new / "opensfm/relative") == "../images"
    assert (new / "opensfm/f.npz").read_bytes() == binary
    # the rewritten file is saved again by the resumed run's next checkpoint, so a third worker reads it
    changed = checkpoints.delta(saved.manifest.files, checkpoints.scan(new))
    assert "opensfm/image_list.txt" in changed and "opensfm/f.npz" not in changed
    again = checkpoints.save(store, saved.manifest, new)
    assert again is not None and again.manifest.root == str(new)
    third = project_with(tmp_path / "w3", {"images/a.jpg": b"jpg"})
    checkpoints.restore(store, again.manifest, third)
    assert (third / "opensfm/image_list.txt").read_text() == f"{third}/images/a.jpg\n"


@pytest.mark.parametrize("damage", ["flip", "missing", "truncate"])
def test_a_damaged_blob_fails_the_restore_and_leaves_nothing_behind(
    store: ObjectStore, tmp_path: Path, damage: str
) -> None:
    project = project_with(
        tmp_path / "a", {"images.json": b"[1]", "opensfm/reconstruction.json": b"{" * 5000}
    )
    saved = checkpoints.save(store, base("opensfm"), project)
    assert saved is not None
    key = checkpoint_prefix(UUID) + saved.manifest.files["opensfm/reconstruction.json"].key
    if damage == "missing":
        store.delete(key)
    else:
        good = store.get_bytes(key)
        store.put_bytes(key, (b"}" + good[1:]) if damage == "flip" else good[:100])
    target = project_with(tmp_path / "b", {"images/a.jpg": b"x"})
    with pytest.raises(CheckpointError, match="reconstruction.json"):
        checkpoints.restore(store, saved.manifest, target)
    assert sorted(p.name for p in target.iterdir()) == ["images"]


@pytest.mark.parametrize(
    "manifest",
    [
        b"{not json",
        b'{"version": 99}',
        json.dumps({"version": 1, "uuid": UUID, "stage": "nope"}).encode(),
        json.dumps(
            {
                "version": 1,
                "uuid": UUID,
                "run": "r",
                "stage": "opensfm",
                "savedAt": 1,
                "engine": "simulate",
                "options": [],
                "files": {
                    "../../etc/passwd": {
                        "key": "blobs/x",
                        "size": 1,
                        "mtime_ns": 1,
                        "sha256": "",
                        "mode": 420,
                    }
                },
            }
        ).encode(),
    ],
)
def test_an_unreadable_manifest_is_a_checkpoint_error(tmp_path: Path, manifest: bytes) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes(checkpoint_prefix(UUID) + MANIFEST, manifest)
    with pytest.raises(CheckpointError):
        checkpoints.load(store, UUID)


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert checkpoints.load(LocalStore(tmp_path / "store"), UUID) is None


def test_a_stopped_checkpoint_keeps_the_previous_one_whole(store: ObjectStore, tmp_path: Path) -> None:
    project = project_with(tmp_path, {"images.json": b"[]"})
    first = checkpoints.save(store, base("dataset"), project)
    assert first is not None
    for n in range(5):
        (project / f"opensfm/part{n}.bin").parent.mkdir(exist_ok=True)
        (project / f"opensfm/part{n}.bin").write_bytes(os.urandom(1000))
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(checkpoints.Stopped):
        checkpoints.save(store, base("opensfm", first.manifest.files), project, stop=stop_after_two)
    loaded = checkpoints.load(store, UUID)
    assert loaded is not None and loaded.stage == "dataset" and loaded.files == first.manifest.files
    target = project_with(tmp_path / "b", {})
    checkpoints.restore(store, loaded, target)
    # the next commit collects the blobs the stopped one left behind
    again = checkpoints.save(store, base("opensfm", first.manifest.files), project)
    assert again is not None
    assert blobs(store) == {checkpoint_prefix(UUID) + e.key for e in again.manifest.files.values()}


def test_a_run_that_no_longer_owns_the_task_commits_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    project = project_with(tmp_path, {"images.json": b"[]"})
    with pytest.raises(checkpoints.Stopped):
        checkpoints.save(store, base("dataset"), project, owns=lambda: False)
    assert checkpoints.load(store, UUID) is None


def test_over_the_size_cap_nothing_is_saved(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    project = project_with(tmp_path, {"a.bin": b"x" * 2000})
    assert checkpoints.save(store, base("dataset"), project, max_bytes=1000) is None
    assert store.list(checkpoint_prefix(UUID)) == []


class SlowStore(CountingStore):
    """The first blob upload waits until released: stages that end meanwhile pile up."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.release = threading.Event()
        self.blocked = threading.Event()

    def writer(self, key: str) -> Any:
        if not self.blocked.is_set():
            self.blocked.set()
            self.release.wait(10)
        return super().writer(key)


def test_the_checkpointer_keeps_one_in_flight_and_coalesces_to_the_latest_stage(tmp_path: Path) -> None:
    store = SlowStore(LocalStore(tmp_path / "store"))
    project = project_with(tmp_path, {"images.json": b"[]"})
    lines: list[str] = []
    saver = Checkpointer(store, base(), project, say=lines.append)  # type: ignore[arg-type]
    saver.start()
    try:
        saver.stage_finished("dataset")
        assert store.blocked.wait(5)
        for stage in ("opensfm", "openmvs", "odm_filterpoints"):
            (project / stage).mkdir()
            (project / stage / "out.bin").write_bytes(stage.encode())
            saver.stage_finished(stage)
        saver.stage_finished("opensfm")  # an earlier stage never replaces a later pending one
        store.release.set()
        assert saver.wait_idle(10)
    finally:
        saver.close()
    manifests = [k for k in store.written if k.endswith(MANIFEST)]
    assert len(manifests) == 2, store.written  # dataset, then only the latest stage that ended meanwhile
    assert [line.split(" (")[0] for line in lines] == [
        "Checkpoint saved after stage dataset",
        "Checkpoint saved after stage odm_filterpoints",
    ]
    loaded = checkpoints.load(store.inner, UUID)
    assert loaded is not None and loaded.stage == "odm_filterpoints"
    assert "openmvs/out.bin" in loaded.files


def test_the_checkpointer_stops_over_the_cap_with_a_line(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    project = project_with(tmp_path, {"images.json": b"[]"})
    lines: list[str] = []
    saver = Checkpointer(store, base(), project, say=lines.append, max_bytes=1_000_000)
    saver.start()
    try:
        saver.stage_finished("dataset")
        assert saver.wait_idle(5)
        (project / "big.bin").write_bytes(b"x" * 1_500_000)
        saver.stage_finished("opensfm")
        assert saver.wait_idle(5)
        saver.stage_finished("openmvs")
        time.sleep(0.2)
        assert saver.wait_idle(5)
    finally:
        saver.close()
    assert saver.skipped and saver.saved == 1
    assert lines[-1].startswith("Checkpoints stop here") and "after stage dataset is kept" in lines[-1]
    loaded = checkpoints.load(store, UUID)
    assert loaded is not None and loaded.stage == "dataset"


# --- the stage to rerun from ---------------------------------------------------------------------------

TABLE = resume.load_table()


def opts(**values: Any) -> list[dict[str, Any]]:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in values.items()]


def test_the_bundled_table_names_real_stages_and_covers_the_catalog() -> None:
    catalog = json.loads((Path(resume.__file__).parents[1] / "shared/data/odm-options.json").read_text())
    assert {o["name"] for o in catalog} <= set(TABLE)
    assert {stage for stage in TABLE.values() if stage} <= set(resume.STAGES)
    assert (
        resume.STAGES[:4] == ("dataset", "split", "merge", "opensfm")
        and resume.STAGES[-1] == "odm_postprocess"
    )


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (opts(dsm=True), opts(dsm=True), "odm_dem"),  # same options: the stage after the checkpoint
        (opts(dsm=True), opts(dsm=True, max_concurrency=2, end_with="odm_report"), "odm_dem"),
        (opts(dsm=True), opts(dsm=True, orthophoto_resolution=2), "odm_dem"),  # later than the checkpoint
        (opts(dsm=True), opts(dsm=False), "odm_dem"),
        (opts(), opts(mesh_size=1000), "odm_meshing"),
        (opts(), opts(pc_filter=3, skip_report=True), "openmvs"),  # the earliest of several
        (opts(dsm=True), opts(dsm=True, rerun_from="odm_meshing"), "odm_meshing"),  # asked for explicitly
    ],
)
def test_plan_reruns_from_the_earliest_stage(before: Any, after: Any, expected: str) -> None:
    assert resume.plan("odm_georeferencing", before, after, TABLE).rerun_from == expected


@pytest.mark.parametrize(
    "after", [opts(feature_type="orb", camera_lens="brown"), opts(rerun_all=True), opts(no_such_option=1)]
)
def test_plan_starts_over(after: Any) -> None:
    chosen = resume.plan("odm_georeferencing", opts(), after, TABLE)
    assert chosen.rerun_from is None and chosen.reason


def test_a_checkpoint_after_the_last_stage_reruns_only_the_last() -> None:
    assert resume.plan("odm_postprocess", opts(), opts(), TABLE).rerun_from == "odm_postprocess"


def test_odms_own_table_uses_argparse_names() -> None:
    table = resume.table_from_odm({"orthophoto_resolution": "odm_orthophoto", "verbose": None, "x": "nope"})
    assert table == {"orthophoto-resolution": "odm_orthophoto", "verbose": None, "x": None}
    assert resume.with_rerun_from(opts(dsm=True, rerun_from="opensfm"), "odm_dem") == opts(
        dsm=True, rerun_from="odm_dem"
    )


def test_a_rerun_from_a_stage_leaves_out_the_folders_it_and_later_stages_write() -> None:
    files = {
        rel: 1
        for rel in (
            "images.json",
            "opensfm/reconstruction.json",
            "opensfm/undistorted/openmvs/scene_dense.ply",
            "odm_meshing/odm_mesh.ply",
            "odm_dem/dsm.tif",
            "odm_dem_extra.txt",
            "odm_orthophoto/odm_orthophoto.tif",
            "entwine_pointcloud/ept.json",
        )
    }
    kept = resume.outside(files, resume.folders_from("odm_dem"))
    assert set(kept) == {
        "images.json",
        "opensfm/reconstruction.json",
        "opensfm/undistorted/openmvs/scene_dense.ply",
        "odm_meshing/odm_mesh.ply",
        "odm_dem_extra.txt",  # a name that only starts like a folder
    }
    assert set(resume.outside(files, resume.folders_from("openmvs"))) == {
        "images.json",
        "opensfm/reconstruction.json",
        "odm_dem_extra.txt",
    }
    assert set(resume.STAGE_FOLDERS) <= set(resume.STAGES)
