"""The simulate engine end to end: the real stand-in script run through SimulateEngine().command()."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import laspy
import psutil
import pytest

from workers.engines.simulate import OPTIONS_PATH, SCRIPT_PATH, SIMULATE_VERSION, SimulateEngine
from workers.engines.simulate_odm import las_bytes, survey_points

DATA = Path(__file__).resolve().parents[1] / "data"
STAGE_WEIGHTS = [5, 25, 50, 52, 60, 70, 80, 90, 98, 100]


def jpeg_header(width: int, height: int) -> bytes:
    """Enough of a JPEG (SOI, APP0, SOF0) for a reader of image dimensions."""
    sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\x00" * 9
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def make_project(root: Path, name: str = "task-1", images: dict[str, bytes] | None = None) -> Path:
    project = root / name
    (project / "images").mkdir(parents=True)
    for filename, content in (
        images
        or {
            "DJI_0001.JPG": jpeg_header(4000, 3000),
            "DJI_0002.JPG": jpeg_header(4000, 3000),
            "small.jpg": jpeg_header(640, 480),
        }
    ).items():
        (project / "images" / filename).write_bytes(content)
    return project


def command(
    engine: SimulateEngine,
    root: Path,
    name: str = "task-1",
    options: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    opts = [{"name": key, "value": value} for key, value in (options or {}).items()]
    cmd = engine.command(opts, root, name, {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    return cmd.argv, {**env, **cmd.env, **(extra_env or {})}


def run(
    engine: SimulateEngine,
    root: Path,
    name: str = "task-1",
    options: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv, env = command(engine, root, name, options, extra_env)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def read_tiff(path: Path) -> tuple[dict[int, Any], bytes]:
    """Tags of the first IFD of a little-endian TIFF, and the file's bytes."""
    data = path.read_bytes()
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    sizes, formats = {2: 1, 3: 2, 4: 4, 12: 8}, {3: "H", 4: "I", 12: "d"}
    tags: dict[int, Any] = {}
    for i in range(count):
        tag, kind, n, inline = struct.unpack_from("<HHI4s", data, ifd + 2 + 12 * i)
        size = sizes[kind] * n
        raw = inline[:size] if size <= 4 else data[struct.unpack("<I", inline)[0] :][:size]
        tags[tag] = raw.rstrip(b"\x00").decode() if kind == 2 else struct.unpack(f"<{n}{formats[kind]}", raw)
    return tags, data


def strip(tags: dict[int, Any], data: bytes) -> bytes:
    offset, length = tags[273][0], tags[279][0]
    assert offset + length <= len(data)
    return data[offset : offset + length]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_catalog_is_the_reference_catalog_with_our_help_texts() -> None:
    ours = json.loads(OPTIONS_PATH.read_text(encoding="utf-8"))
    reference = json.loads((DATA / "odm-options-catalog.json").read_text(encoding="utf-8"))
    assert len(ours) == 80
    assert all(list(opt) == ["name", "type", "value", "domain", "help"] for opt in ours)
    assert [{k: v for k, v in opt.items() if k != "help"} for opt in ours] == reference
    assert all(opt["help"].strip().endswith(".") and len(opt["help"]) < 160 for opt in ours)


def test_describe_and_command_shape(tmp_path: Path) -> None:
    engine = SimulateEngine(seconds=1.5, progress_port=7001, python="/usr/bin/python3")
    info = engine.describe()
    assert (info.name, info.version, SIMULATE_VERSION) == ("simulate", "3.5.0", "3.5.0")
    assert info.options == json.loads(OPTIONS_PATH.read_text(encoding="utf-8"))
    cmd = engine.command(
        [{"name": "dsm", "value": True}, {"name": "crop", "value": 0.0}],
        tmp_path,
        "t",
        {"gcp": tmp_path / "gcp_list.txt"},
    )
    assert cmd.argv == [
        "/usr/bin/python3",
        str(SCRIPT_PATH),
        "--dsm",
        "--crop",
        "0",
        "--project-path",
        str(tmp_path),
        "--gcp",
        str(tmp_path / "gcp_list.txt"),
        "t",
    ]
    assert cmd.env == {
        "ODM_NONINTERACTIVE": "1",
        "ODM_FARM_PROGRESS_PORT": "7001",
        "ODM_FARM_SIMULATE_SECONDS": "1.5",
    }
    assert "ODM_FARM_SIMULATE_SECONDS" not in SimulateEngine().command([], tmp_path, "t", {}).env


def test_full_run_writes_a_well_formed_tree(tmp_path: Path, udp: socket.socket) -> None:
    project = make_project(tmp_path)
    engine = SimulateEngine(seconds=0, progress_port=udp.getsockname()[1])
    result = run(engine, tmp_path, options={"dsm": True, "dtm": True, "orthophoto-png": True, "pc-ept": True})
    assert result.returncode == 0, result.stderr
    assert "[INFO]    Initializing ODM 3.5.0" in result.stdout
    for stage in ("dataset", "opensfm", "openmvs", "odm_georeferencing", "odm_dem", "odm_report"):
        assert f"[INFO]    Running {stage} stage" in result.stdout

    images = json.loads((project / "images.json").read_text())
    assert {(i["filename"], i["width"], i["height"]) for i in images} == {
        ("DJI_0001.JPG", 4000, 3000),
        ("DJI_0002.JPG", 4000, 3000),
        ("small.jpg", 640, 480),
    }
    assert len(json.loads((project / "cameras.json").read_text())) == 2

    tags, data = read_tiff(project / "odm_orthophoto" / "odm_orthophoto.tif")
    assert (tags[256], tags[257], tags[258], tags[277], tags[259]) == ((64,), (64,), (8, 8, 8, 8), (4,), (1,))
    pixels = strip(tags, data)
    assert len(pixels) == 64 * 64 * 4
    assert pixels[(32 * 64 + 32) * 4 + 3] == 255 and pixels[3] == 0  # opaque centre, transparent corner
    assert tags[33550][:2] == (0.625, 0.625) and tags[34735][-1] == 32615
    tfw = [float(v) for v in (project / "odm_orthophoto" / "odm_orthophoto.tfw").read_text().split()]
    assert tfw[0] == 0.625 and tfw[3] == -0.625 and tfw[4] == tags[33922][3] + 0.3125
    assert (project / "odm_orthophoto" / "odm_orthophoto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    heights = {}
    for kind in ("dsm", "dtm"):
        tags, data = read_tiff(project / "odm_dem" / f"{kind}.tif")
        assert (tags[256], tags[257], tags[258], tags[339], tags[42113]) == (
            (32,),
            (32,),
            (32,),
            (3,),
            "-9999",
        )
        values = struct.unpack("<1024f", strip(tags, data))
        heights[kind] = max(values)
    assert heights["dsm"] > heights["dtm"] > 150  # the surface model keeps the building

    cloud = laspy.read(project / "odm_georeferencing" / "odm_georeferenced_model.laz")
    assert len(cloud.points) == 400 and cloud.header.are_points_compressed
    assert 576000 <= cloud.x.min() < cloud.x.max() <= 576040

    obj = (project / "odm_texturing" / "odm_textured_model_geo.obj").read_text()
    assert obj.startswith("mtllib odm_textured_model_geo.mtl") and "\nf " in obj
    assert "map_Kd" in (project / "odm_texturing" / "odm_textured_model_geo.mtl").read_text()
    pdf = (project / "odm_report" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    assert json.loads((project / "entwine_pointcloud" / "ept.json").read_text())["points"] == 400
    log = json.loads((project / "log.json").read_text())
    assert log["success"] is True and log["odmVersion"] == "3.5.0" and log["images"] == 3


def test_switches_leave_out_dems_orthophoto_and_report(tmp_path: Path, udp: socket.socket) -> None:
    project = make_project(tmp_path)
    engine = SimulateEngine(seconds=0, progress_port=udp.getsockname()[1])
    result = run(engine, tmp_path, options={"skip-orthophoto": True, "skip-report": True, "dtm": False})
    assert result.returncode == 0, result.stderr
    assert not (project / "odm_dem").exists()
    assert not (project / "odm_orthophoto").exists()
    # ODM writes the camera shots before it looks at --skip-report (stages/odm_report.py)
    assert not (project / "odm_report" / "report.pdf").exists()
    assert (project / "odm_report" / "shots.geojson").exists()
    assert not (project / "entwine_pointcloud").exists()
    assert (project / "odm_georeferencing" / "odm_georeferenced_model.laz").is_file()

    result = run(engine, tmp_path, name="task-1", options={"dtm": True, "rerun-from": "odm_dem"})
    assert result.returncode == 0, result.stderr
    assert (project / "odm_dem" / "dtm.tif").is_file() and not (project / "odm_dem" / "dsm.tif").exists()


def test_hand_written_las_when_laspy_is_missing(tmp_path: Path, udp: socket.socket) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "laspy.py").write_text("raise ImportError('hidden for this test')\n")
    project = make_project(tmp_path)
    result = run(
        SimulateEngine(seconds=0, progress_port=udp.getsockname()[1]),
        tmp_path,
        # an empty cache: a LAZ built by an earlier run must not hide the fallback
        extra_env={"PYTHONPATH": str(hide), "ODM_FARM_SIMULATE_CACHE": str(hide)},
    )
    assert result.returncode == 0, result.stderr
    assert "[WARNING] laspy/lazrs are not installed" in result.stdout
    georef = project / "odm_georeferencing"
    assert not (georef / "odm_georeferenced_model.laz").exists()
    cloud = laspy.read(georef / "odm_georeferenced_model.las")
    assert (cloud.header.version.major, cloud.header.version.minor, cloud.header.point_format.id) == (1, 2, 2)
    assert len(cloud.points) == 400 and int(cloud.classification[0]) == 2


def test_las_writer_round_trips_coordinates() -> None:
    points = survey_points(step=10.0)
    cloud = laspy.read(io.BytesIO(las_bytes(points)))
    assert [round(v, 3) for v in (cloud.x[0], cloud.y[0], cloud.z[0])] == [round(v, 3) for v in points[0][:3]]
    assert int(cloud.red[-1]) == points[-1][3]


def test_progress_datagrams_are_odm_shaped_and_monotonic(tmp_path: Path, udp: socket.socket) -> None:
    make_project(tmp_path, "progress-task")
    result = run(SimulateEngine(seconds=0, progress_port=udp.getsockname()[1]), tmp_path, "progress-task")
    assert result.returncode == 0, result.stderr
    udp.settimeout(0.5)
    messages = []
    try:
        while True:
            messages.append(udp.recv(1024).decode())
    except TimeoutError:
        pass
    parts = [m.split("/") for m in messages]
    assert {(p[0], p[2]) for p in parts} == {("PGUP", "progress-task")}
    assert len({p[1] for p in parts}) == 1 and int(parts[0][1]) > 0
    values = [float(p[3]) for p in parts]
    assert values == sorted(values)
    assert set(STAGE_WEIGHTS) <= set(values) and values[-1] == 100.0
    assert len(set(values) - set(STAGE_WEIGHTS)) >= 3  # intermediate values inside long stages


def test_nobody_listening_is_fine_and_end_with_stops_early(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens on it
    project = make_project(tmp_path)
    result = run(SimulateEngine(seconds=0, progress_port=port), tmp_path, options={"end-with": "opensfm"})
    assert result.returncode == 0, result.stderr
    assert (project / "cameras.json").is_file()
    assert not (project / "odm_georeferencing").exists()
    assert "Running openmvs stage" not in result.stdout and "No more stages to run" in result.stdout


def test_rerun_from_leaves_seeded_outputs_alone(tmp_path: Path, udp: socket.socket) -> None:
    project = make_project(tmp_path)
    (project / "opensfm").mkdir()
    seeded = {
        "images.json": '[{"filename": "DJI_0001.JPG", "width": 10, "height": 20}]',
        "opensfm/reconstruction.json": "[]",
        "opensfm/config.yaml": "seeded: true\n",
    }
    for relative, text in seeded.items():
        (project / relative).write_text(text)
    result = run(
        SimulateEngine(seconds=0, progress_port=udp.getsockname()[1]),
        tmp_path,
        options={"rerun-from": "openmvs"},
    )
    assert result.returncode == 0, result.stderr
    assert {rel: (project / rel).read_text() for rel in seeded} == seeded
    assert "Found existing opensfm/reconstruction.json, skipping opensfm" in result.stdout
    assert "skipping dataset" in result.stdout
    assert (project / "odm_georeferencing" / "odm_georeferenced_model.laz").is_file()
    assert (project / "odm_report" / "report.pdf").is_file()


@pytest.mark.parametrize(("control", "code"), [("env", 137), ("image", 3)])
def test_exit_code_control(tmp_path: Path, udp: socket.socket, control: str, code: int) -> None:
    images = {"a.jpg": jpeg_header(100, 100)}
    if control == "image":
        images[f"simulate-exit-{code}.jpg"] = jpeg_header(100, 100)
    project = make_project(tmp_path, images=images)
    extra = {"ODM_FARM_SIMULATE_EXIT": str(code)} if control == "env" else {}
    result = run(SimulateEngine(seconds=0, progress_port=udp.getsockname()[1]), tmp_path, extra_env=extra)
    assert result.returncode == code
    assert "[ERROR]" in result.stdout and f"Child returned {code}" in result.stdout
    assert (project / "images.json").is_file() and not (project / "opensfm").exists()
    assert json.loads((project / "log.json").read_text())["error"]["code"] == code


def test_missing_images_fail_like_odm(tmp_path: Path) -> None:
    make_project(tmp_path, images={"notes.txt": b"not an image"})
    result = run(SimulateEngine(seconds=0), tmp_path)
    assert result.returncode == 1
    assert "[ERROR]   Not enough supported images" in result.stdout


@pytest.mark.parametrize("bad", [{"no-such-option": "1"}, {"feature-type": "surf"}, {"mesh-size": "big"}])
def test_bad_command_line_exits_2(tmp_path: Path, bad: dict[str, str]) -> None:
    make_project(tmp_path)
    result = run(SimulateEngine(seconds=0), tmp_path, options=bad)
    assert result.returncode == 2
    assert "usage: run.py" in result.stderr and "error:" in result.stderr


def test_version_flag(tmp_path: Path) -> None:
    argv = SimulateEngine().command([], tmp_path, "t", {}).argv[:2] + ["--version"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "ODM 3.5.0")


def test_duration_is_respected(tmp_path: Path, udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    make_project(tmp_path, "fast")
    started = time.monotonic()
    assert run(SimulateEngine(seconds=0, progress_port=port), tmp_path, "fast").returncode == 0
    fast = time.monotonic() - started
    assert fast < 5

    make_project(tmp_path, "slow", images={"a.jpg": jpeg_header(10, 10), "simulate-seconds-2.jpg": b""})
    started = time.monotonic()
    assert run(SimulateEngine(seconds=0, progress_port=port), tmp_path, "slow").returncode == 0
    slow = time.monotonic() - started
    assert 2.0 <= slow < fast + 4


def test_children_are_stopped_on_normal_exit(tmp_path: Path, udp: socket.socket) -> None:
    project = make_project(tmp_path)
    assert run(SimulateEngine(seconds=0.5, progress_port=udp.getsockname()[1]), tmp_path).returncode == 0
    pids = [int(line) for line in (project / ".simulate-children").read_text().split()]
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def start_long_run(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    project = make_project(tmp_path)
    argv, env = command(SimulateEngine(seconds=60, progress_port=port), tmp_path)
    with (tmp_path / "console.txt").open("wb") as console:
        proc = subprocess.Popen(
            argv, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
        )
    children = project / ".simulate-children"
    assert wait_for(lambda: children.exists() and children.read_text().strip()), "no child was started"
    return proc, children


def test_process_group_kill_leaves_no_child(tmp_path: Path, udp: socket.socket) -> None:
    proc, children = start_long_run(tmp_path, udp.getsockname()[1])
    child = int(children.read_text().split()[0])
    try:
        assert not gone(child)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 1  # ODM leaves with 1 on TERM
        assert wait_for(lambda: gone(child), timeout=5)
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)
    assert "Caught SIGTERM signal" in (tmp_path / "console.txt").read_text()


def test_sigterm_to_the_leader_alone_orphans_the_child(tmp_path: Path, udp: socket.socket) -> None:
    # why the worker must kill the group: the engine's children outlive a signal sent to the engine alone
    proc, children = start_long_run(tmp_path, udp.getsockname()[1])
    child = int(children.read_text().split()[0])
    try:
        proc.terminate()
        assert proc.wait(timeout=5) == 1
        time.sleep(0.3)
        assert not gone(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert wait_for(lambda: gone(child), timeout=5)


# --- ODM outputs clients and split-merge rely on ---------------------------------------------------------
def test_gltf_writes_a_binary_gltf_and_every_run_writes_shots(tmp_path: Path, udp: socket.socket) -> None:
    project = make_project(tmp_path)
    engine = SimulateEngine(seconds=0, progress_port=udp.getsockname()[1])
    result = run(engine, tmp_path, options={"gltf": True, "skip-report": True})
    assert result.returncode == 0, result.stderr
    glb = (project / "odm_texturing" / "odm_textured_model_geo.glb").read_bytes()
    magic, version, length = struct.unpack_from("<4sII", glb)
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    json_length, kind = struct.unpack_from("<I4s", glb, 12)
    document = json.loads(glb[20 : 20 + json_length])
    assert kind == b"JSON" and document["asset"]["version"] == "2.0"
    bin_length, bin_kind = struct.unpack_from("<I4s", glb, 20 + json_length)
    assert bin_kind == b"BIN\x00" and bin_length == document["buffers"][0]["byteLength"]
    shots = json.loads((project / "odm_report" / "shots.geojson").read_text())
    assert shots["type"] == "FeatureCollection"
    assert sorted(f["properties"]["filename"] for f in shots["features"]) == ["DJI_0001.JPG", "DJI_0002.JPG", "small.jpg"]
    assert all(f["geometry"]["type"] == "Point" for f in shots["features"])

    other = make_project(tmp_path, "task-2")
    assert run(engine, tmp_path, "task-2").returncode == 0
    assert not (other / "odm_texturing" / "odm_textured_model_geo.glb").exists()


def test_split_merge_reconstruction_stops_after_opensfm_with_what_the_merge_reads(
    tmp_path: Path, udp: socket.socket
) -> None:
    import gzip
    import pickle

    import numpy

    project = make_project(tmp_path)
    # what ODM's LocalRemoteExecutor seeds a remote reconstruction task with
    (project / "opensfm").mkdir()
    (project / "opensfm" / "split_merge_stop_at_reconstruction.txt").touch()
    seeded = {"latitude": 1.5, "longitude": 2.5, "altitude": 3.5}
    (project / "opensfm" / "reference_lla.json").write_text(json.dumps(seeded))
    engine = SimulateEngine(seconds=0, progress_port=udp.getsockname()[1])
    result = run(engine, tmp_path, options={"dsm": True})
    assert result.returncode == 0, result.stderr
    assert "Stopping OpenSfM early because we found:" in result.stdout
    assert "[INFO]    Finished opensfm stage" in result.stdout
    assert "Running openmvs stage" not in result.stdout
    assert not (project / "odm_orthophoto").exists() and not (project / "odm_dem").exists()

    opensfm = project / "opensfm"
    assert json.loads((opensfm / "reference_lla.json").read_text()) == seeded  # seeded files are kept
    assert len(json.loads((opensfm / "reconstruction.json").read_text())[0]["shots"]) == 3
    assert (opensfm / "tracks.csv").read_text().startswith("OPENSFM_TRACKS_VERSION_v2\n")
    assert json.loads((opensfm / "camera_models.json").read_text())
    assert json.loads((project / "cameras.json").read_text())
    for image in ("DJI_0001.JPG", "DJI_0002.JPG", "small.jpg"):
        assert json.loads((opensfm / "exif" / f"{image}.exif").read_text())["gps"]["latitude"]
        assert numpy.load(opensfm / "features" / f"{image}.features.npz")["points"].shape == (0, 4)
        assert pickle.loads(gzip.decompress((opensfm / "matches" / f"{image}_matches.pkl.gz").read_bytes())) == {}


def test_orthophoto_cutline_writes_the_cutline_and_the_cut_and_feathered_orthophotos(
    tmp_path: Path, udp: socket.socket
) -> None:
    import sqlite3

    project = make_project(tmp_path)
    engine = SimulateEngine(seconds=0, progress_port=udp.getsockname()[1])
    assert run(engine, tmp_path, options={"orthophoto-cutline": True}).returncode == 0
    folder = project / "odm_orthophoto"
    with contextlib.closing(sqlite3.connect(folder / "cutline.gpkg")) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("SELECT data_type, srs_id FROM gpkg_contents WHERE table_name='cutline'").fetchone() == (
            "features", 32615)
        (geometry,) = db.execute("SELECT geom FROM cutline").fetchone()
        assert geometry[:2] == b"GP" and struct.unpack_from("<i", geometry, 4)[0] == 32615
    alpha = {}
    for name in ("odm_orthophoto.tif", "odm_orthophoto_cut.tif", "odm_orthophoto_feathered.tif"):
        tags, data = read_tiff(folder / name)
        assert tags[277] == (4,)
        pixels = strip(tags, data)
        alpha[name] = [pixels[(32 * 64 + x) * 4 + 3] for x in range(64)]  # across the middle row
    assert alpha["odm_orthophoto.tif"][2] == 255 and alpha["odm_orthophoto_cut.tif"][2] == 0
    assert alpha["odm_orthophoto_cut.tif"][32] == 255
    assert 0 < alpha["odm_orthophoto_feathered.tif"][4] < 255 and alpha["odm_orthophoto_feathered.tif"][32] == 255

    plain = make_project(tmp_path, "task-2")
    assert run(engine, tmp_path, "task-2").returncode == 0
    assert not (plain / "odm_orthophoto" / "cutline.gpkg").exists()


def test_a_resumed_run_skips_finished_stages_and_reruns_from_the_given_one(
    tmp_path: Path, udp: socket.socket
) -> None:
    project = make_project(tmp_path)
    engine = SimulateEngine(seconds=0, progress_port=udp.getsockname()[1])
    first = run(engine, tmp_path, options={"dsm": True, "end-with": "odm_georeferencing"})
    assert first.returncode == 0, first.stderr
    assert "running opensfm detect_features" in first.stdout
    assert not (project / "odm_dem").exists() and "Running odm_dem stage" not in first.stdout

    resumed = run(
        engine,
        tmp_path,
        options={"dsm": True, "rerun-from": "odm_dem"},
        extra_env={"ODM_FARM_SIMULATE_STAGE_MB": "0.01"},
    )
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout
    assert (
        "running opensfm detect_features" not in out and "Found existing opensfm/reconstruction.json" in out
    )
    assert "Nothing to do for split before --rerun-from odm_dem" in out
    assert (project / "odm_dem" / "dsm.tif").is_file() and (
        project / "odm_orthophoto" / "odm_orthophoto.tif"
    ).is_file()
    # only the stages that were computed wrote their ballast
    ballast = sorted(p.stem for p in (project / "simulate_ballast").iterdir())
    assert ballast == ["odm_dem", "odm_orthophoto", "odm_postprocess", "odm_report"]
    assert (project / "simulate_ballast" / "odm_dem.bin").stat().st_size == int(0.01 * 1024 * 1024)

    # --rerun-from computes that stage again even though its outputs exist; the ones before stay untouched
    ortho = project / "odm_orthophoto" / "odm_orthophoto.tif"
    ortho.write_bytes(b"stale")
    dsm_mtime = (project / "odm_dem" / "dsm.tif").stat().st_mtime_ns
    again = run(
        engine, tmp_path, options={"dsm": True, "rerun-from": "odm_orthophoto", "end-with": "odm_orthophoto"}
    )
    assert again.returncode == 0, again.stderr
    assert ortho.read_bytes().startswith(b"II*\x00")
    assert (project / "odm_dem" / "dsm.tif").stat().st_mtime_ns == dsm_mtime
    assert "Running odm_report stage" not in again.stdout
