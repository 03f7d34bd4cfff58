"""The `odm` engine inside real workers: options discovered from the install, the exact run, limits, mixed versions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tests.e2e.helpers import make_images, slow_image, wait_engine, wait_status
from tests.support.farm import Farm, wait_until
from tests.workers.test_odm_engine import CONFIG_PY, make_fake_odm

# A fake ODM run: parses its command line with the install's own argparse config (as run.py does), records
# it, sends a progress datagram like ODM's progress broadcaster, and writes a tiny orthophoto.
PROCESSING_RUN_PY = """\
import json, os, socket, sys
from opendm import config

args = config.config(argv=sys.argv[1:])
project = os.path.join(args.project_path, args.name)
record = {"argv": sys.argv[1:], "noninteractive": os.environ.get("ODM_NONINTERACTIVE"),
          "images": sorted(os.listdir(os.path.join(project, "images")))}
with open(os.path.join(project, "recorded.json"), "w") as f:
    json.dump(record, f)
print("[INFO]    fake ODM running " + args.name, flush=True)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
    ("PGUP/%d/%s/50.0" % (os.getpid(), args.name)).encode(), ("127.0.0.1", 6367))
if any(name.startswith("fail-") for name in record["images"]):
    print("[ERROR]   Child returned 139", flush=True)
    sys.exit(139)
os.makedirs(os.path.join(project, "odm_filterpoints"), exist_ok=True)
with open(os.path.join(project, "odm_filterpoints", "point_cloud.ply"), "w") as f:
    f.write("ply\\nformat ascii 1.0\\nelement vertex 0\\nend_header\\n")
os.makedirs(os.path.join(project, "odm_orthophoto"), exist_ok=True)
with open(os.path.join(project, "odm_orthophoto", "odm_orthophoto.tif"), "wb") as f:
    f.write(b"II*\\x00fake")
"""


def fake_odm(root: Path, version: str = "3.5.0", config_py: str = CONFIG_PY) -> Path:
    odm = make_fake_odm(root, config_py=config_py, version=version)
    (odm / "run.py").write_text(PROCESSING_RUN_PY)
    return odm


def recorded(task_zip: Path) -> dict:  # type: ignore[type-arg]
    with zipfile.ZipFile(task_zip) as zf:
        return json.loads(zf.read("recorded.json"))  # type: ignore[no-any-return]


def test_odm_worker_runs_the_installed_odm(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    odm = fake_odm(tmp_path / "odm")
    farm: Farm = farm_factory(workers=0, max_concurrency=2, progress_port=6367)
    farm.start_worker("odm1", ODM_FARM_ODM_PATH=str(odm), ODM_FARM_WORKER_GPU="false")
    info = farm.get("/info").json()
    assert (info["engine"], info["engineVersion"]) == ("odm", "3.5.0")
    options = {o["name"]: o for o in farm.get("/options").json()}
    assert options["tilt-offset"] == {"name": "tilt-offset", "type": "float", "value": "-2.5",
                                      "domain": "float: -10 <= x <= 10", "help": options["tilt-offset"]["help"]}
    assert "rerun-all" not in options and "project-path" not in options

    # options validated against what this ODM declares, then rendered as its argparse expects
    refused = farm.post("/task/new/init", data={"options": json.dumps([{"name": "tilt-offset", "value": -11}])})
    assert json.loads(refused.json()["error"])[0]["name"] == "tilt-offset"
    images = make_images(tmp_path / "in", 2)
    (tmp_path / "in" / "geo.txt").write_text("EPSG:4326\n")
    hostile = "$(touch /tmp/odm-farm-pwned) ; rm -rf / 'quoted' \"double\""
    task = farm.node().create_task(
        images + [str(tmp_path / "in" / "geo.txt")],
        {"tilt-offset": -2.5, "proj": hostile, "cameras": {"a": 1}, "dsm": True, "max-concurrency": 8},
        outputs=["recorded.json", "odm_orthophoto"])
    task.wait_for_completion(interval=0.3)
    out = Path(task.download_zip(str(tmp_path / "out")))
    seen = recorded(out)
    argv = seen["argv"]
    assert seen["noninteractive"] == "1"
    assert argv[-1] == task.uuid, "the project name comes last"
    assert "--tilt-offset=-2.5" in argv, "a negative value must stay a value for argparse"
    assert argv[argv.index("--proj") + 1] == hostile
    assert not Path("/tmp/odm-farm-pwned").exists()
    assert argv[argv.index("--cameras") + 1] == '{"a": 1}'
    assert argv[argv.index("--max-concurrency") + 1] == "2", "the worker caps max-concurrency"
    assert "--no-gpu" in argv, "a CPU worker runs ODM with no-gpu"
    assert "--dsm" in argv and "--pc-ept" in argv  # post-processing options added by the node
    assert argv[argv.index("--geo") + 1].endswith(f"{task.uuid}/gcp/geo.txt")
    assert argv.index("--project-path") < argv.index("--geo") < len(argv) - 1
    assert seen["images"] == ["img1.jpg", "img2.jpg"]
    with zipfile.ZipFile(out) as zf:
        assert "odm_orthophoto/odm_orthophoto.tif" in zf.namelist()
    console = task.output()
    assert any("fake ODM running" in line for line in console)
    # ODM left only a PLY and there is no PDAL here: post-processing warns instead of failing the task
    assert any("pdal is not installed" in line for line in console)


def test_odm_exit_codes_and_max_runtime(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    odm = fake_odm(tmp_path / "odm")
    farm: Farm = farm_factory(workers=0)
    farm.start_worker("odm1", ODM_FARM_ODM_PATH=str(odm))
    images = make_images(tmp_path / "in", 1) + make_images(tmp_path / "in", 1, prefix="fail-")
    task = farm.node().create_task(images)
    info = wait_status(farm, task.uuid, (30, 40))
    assert info["status"] == {"code": 30, "errorMessage": "Cannot process dataset"}

    # the runtime limit cancels a run with a clear console line (simulate engine, long run)
    limited: Farm = farm_factory(max_runtime=2)
    long = limited.node().create_task(make_images(tmp_path / "l", 1) + [slow_image(tmp_path / "l", 120)])
    wait_engine(limited, long.uuid)
    info = wait_status(limited, long.uuid, (50, 30, 40), timeout=30)
    assert info["status"]["code"] == 50
    console = limited.get(f"/task/{long.uuid}/output").json()
    assert any("maximum runtime of 2 seconds" in line for line in console)


def test_mixed_odm_versions_offer_only_common_options(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    old_config = CONFIG_PY.replace('"--tilt-offset"', '"--old-tilt-offset"')
    assert old_config != CONFIG_PY
    farm: Farm = farm_factory(workers=0)
    farm.start_worker("new", ODM_FARM_ODM_PATH=str(fake_odm(tmp_path / "new", "3.5.0")))
    farm.start_worker("old", ODM_FARM_ODM_PATH=str(fake_odm(tmp_path / "old", "3.4.0", old_config)))
    wait_until(lambda: len(farm.get("/workers").json()) == 2, 10, "both workers")
    names = {o["name"] for o in farm.get("/options").json()}
    assert "tilt-offset" not in names and "old-tilt-offset" not in names
    assert "dsm" in names
    answer = farm.post("/task/new/init", data={"options": json.dumps([{"name": "tilt-offset", "value": 1}])})
    uuid = answer.json()["uuid"]
    farm.post(f"/task/new/upload/{uuid}", files={"images": ("a.jpg", b"\xff\xd8")})
    farm.post(f"/task/new/commit/{uuid}")
    task = farm.get(f"/task/{uuid}/info").json()
    assert [o for o in task["options"] if o["name"] == "tilt-offset"] == [], "an option not every ODM knows is dropped"
