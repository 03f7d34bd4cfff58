"""OdmEngine against a fake ODM install: option discovery through ODM's argparse config, and the exact
command line run.sh receives (parsed back by the same argparse config, as real ODM would)."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.options import validate_options
from workers.engines.base import EngineError
from workers.engines.odm import OdmEngine

CONTEXT_PY = """\
import atexit
import os

root_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
num_cores = 4
stages = ["dataset", "opensfm", "openmvs", "odm_meshing", "odm_orthophoto", "odm_report", "odm_postprocess"]

# real ODM logs while importing; discovery must not mistake these lines for its result
print("[INFO] fake ODM context loaded")
atexit.register(lambda: print("[INFO] fake ODM exiting"))
"""

CONFIG_PY = """\
import argparse
import json
import os
import sys

from opendm import context

processopts = context.stages

with open(os.path.join(context.root_path, "VERSION")) as version_file:
    __version__ = version_file.read().strip()


def path_or_json_string(string):
    if string == "":
        return {}
    if os.path.isfile(string):
        with open(string) as f:
            return json.load(f)
    try:
        return json.loads(string)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


class StoreValue(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_is_set", True)


class StoreTrue(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        setattr(namespace, self.dest + "_is_set", True)


class RerunFrom(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, processopts[processopts.index(values):])


def flag(parser, name, help_text):
    parser.add_argument(name, action=StoreTrue, nargs=0, default=False, help=help_text + " Default: %(default)s")


def config(argv=None, parser=None):
    if parser is None:
        parser = argparse.ArgumentParser(usage="run.sh [options] <dataset name>")
    parser.add_argument("--project-path", metavar="<path>", action=StoreValue, help="Path to the project folder.")
    parser.add_argument("name", metavar="<dataset name>", action=StoreValue, type=str, default="code", nargs="?",
                        help="Name of dataset. Default: %(default)s")
    parser.add_argument("--end-with", "-e", metavar="<string>", action=StoreValue, default="odm_postprocess",
                        choices=processopts, help="End at this stage. Can be one of: %(choices)s. Default: %(default)s")
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument("--rerun", "-r", metavar="<string>", action=StoreValue, choices=processopts,
                       help="Rerun this stage only.")
    rerun.add_argument("--rerun-all", action=StoreTrue, nargs=0, default=False, help="Rerun everything.")
    rerun.add_argument("--rerun-from", action=RerunFrom, metavar="<string>", choices=processopts,
                       help="Rerun from this stage.")
    parser.add_argument("--min-num-features", metavar="<integer>", action=StoreValue, default=10000, type=int,
                        help="Minimum number of features. Default: %(default)s")
    parser.add_argument("--resize-to", metavar="<integer>", action=StoreValue, default=2048, type=int,
                        help="Set to -1 to disable. Default: %(default)s")
    parser.add_argument("--feature-quality", metavar="<string>", action=StoreValue, default="high",
                        choices=["ultra", "high", "medium", "low", "lowest"],
                        help="Feature quality. Can be one of: %(choices)s. Default: %(default)s")
    parser.add_argument("--cameras", default="", metavar="<json>", action=StoreValue, type=path_or_json_string,
                        help="Camera parameters as JSON.")
    parser.add_argument("--max-concurrency", metavar="<positive integer>", action=StoreValue,
                        default=context.num_cores, type=int, help="Processes to use. Default: %(default)s")
    flag(parser, "--no-gpu", "Do not use the GPU.")
    parser.add_argument("--crop", metavar="<positive float>", action=StoreValue, default=3, type=float,
                        help="Crop buffer; 0 disables, 100%% keeps all. Default: %(default)s")
    parser.add_argument("--tilt-offset", metavar="<float: -10 <= x <= 10>", action=StoreValue, default=-2.5,
                        type=float, help="Tilt offset. Default: %(default)s")
    parser.add_argument("--smrf-window", metavar="<positive float>", action=StoreValue, type=float, default=18.0,
                        help="Window. Default: %(default)s")
    parser.add_argument("--orthophoto-resolution", metavar="<float > 0.0>", action=StoreValue, default=5,
                        type=float, help="cm/pixel. Default: %(default)s")
    parser.add_argument("--dem-gapfill-percent", metavar="<percent>", action=StoreValue, default=50, type=float,
                        help="Gap fill. Default: %(default)s")
    parser.add_argument("--proj", metavar="<string>", action=StoreValue, type=str, default="",
                        help="A free-form projection string.")
    parser.add_argument("--primary-band", metavar="<string>", action=StoreValue, default="auto", type=str,
                        help="Primary band. Default: %(default)s")
    parser.add_argument("--orthophoto-compression", metavar="<string>", action=StoreValue, type=str,
                        choices=["JPEG", "LZW", "DEFLATE"], default="DEFLATE", help="Compression.")
    flag(parser, "--dsm", "Build a DSM.")
    flag(parser, "--pc-ept", "Build EPT.")
    flag(parser, "--cog", "Build COGs.")
    flag(parser, "--gltf", "Build glTF.")
    multispectral = parser.add_argument_group("multispectral")
    flag(multispectral, "--skip-band-alignment", "Skip band alignment.")
    for name in ("--gcp", "--geo", "--align", "--split-image-groups"):
        parser.add_argument(name, metavar="<path string>", action=StoreValue, default=None, help="An input file.")
    parser.add_argument("--copy-to", metavar="<path>", action=StoreValue, help="Copy results here.")
    parser.add_argument("--version", action="version", version="ODM {0}".format(__version__),
                        help="Displays version number and exits.")

    args = parser.parse_args(argv)
    if not args.project_path:
        print("[ERROR] You need to set the project path with --project-path <path>")
        sys.exit(1)
    return args
"""

RUN_PY = """\
import json
import os
import sys

from opendm import config

record = {"argv": sys.argv[1:], "noninteractive": os.environ.get("ODM_NONINTERACTIVE"), "cwd": os.getcwd()}
try:
    args = config.config(argv=sys.argv[1:])
    record["parsed"] = {k: v for k, v in vars(args).items() if not k.endswith("_is_set")}
except SystemExit as exc:
    record["exit"] = exc.code
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "recorded.json"), "w") as f:
    json.dump(record, f)
"""

EXPECTED_CATALOG: list[dict[str, Any]] = [
    {
        "name": "end-with",
        "type": "enum",
        "value": "odm_postprocess",
        "domain": [
            "dataset",
            "opensfm",
            "openmvs",
            "odm_meshing",
            "odm_orthophoto",
            "odm_report",
            "odm_postprocess",
        ],
    },
    {
        "name": "rerun-from",
        "type": "enum",
        "value": "",
        "domain": [
            "",
            "dataset",
            "opensfm",
            "openmvs",
            "odm_meshing",
            "odm_orthophoto",
            "odm_report",
            "odm_postprocess",
        ],
    },
    {"name": "min-num-features", "type": "int", "value": "10000", "domain": "integer"},
    {"name": "resize-to", "type": "int", "value": "2048", "domain": "integer"},
    {
        "name": "feature-quality",
        "type": "enum",
        "value": "high",
        "domain": ["ultra", "high", "medium", "low", "lowest"],
    },
    {"name": "cameras", "type": "string", "value": "", "domain": "json"},
    {"name": "max-concurrency", "type": "int", "value": "4", "domain": "positive integer"},
    {"name": "no-gpu", "type": "bool", "value": "false", "domain": ""},
    {"name": "crop", "type": "float", "value": "3", "domain": "positive float"},
    {"name": "tilt-offset", "type": "float", "value": "-2.5", "domain": "float: -10 <= x <= 10"},
    {"name": "smrf-window", "type": "float", "value": "18", "domain": "positive float"},
    {"name": "orthophoto-resolution", "type": "float", "value": "5", "domain": "float > 0.0"},
    {"name": "dem-gapfill-percent", "type": "float", "value": "50", "domain": "percent"},
    {"name": "proj", "type": "string", "value": "", "domain": "string"},
    {"name": "primary-band", "type": "string", "value": "auto", "domain": "string"},
    {
        "name": "orthophoto-compression",
        "type": "enum",
        "value": "DEFLATE",
        "domain": ["JPEG", "LZW", "DEFLATE"],
    },
    {"name": "dsm", "type": "bool", "value": "false", "domain": ""},
    {"name": "pc-ept", "type": "bool", "value": "false", "domain": ""},
    {"name": "cog", "type": "bool", "value": "false", "domain": ""},
    {"name": "gltf", "type": "bool", "value": "false", "domain": ""},
    {"name": "skip-band-alignment", "type": "bool", "value": "false", "domain": ""},
]


def make_fake_odm(root: Path, config_py: str = CONFIG_PY, version: str | None = "3.5.0") -> Path:
    (root / "opendm").mkdir(parents=True)
    (root / "opendm" / "__init__.py").write_text("")
    (root / "opendm" / "context.py").write_text(CONTEXT_PY)
    (root / "opendm" / "config.py").write_text(config_py)
    (root / "run.py").write_text(RUN_PY)
    if version is not None:
        (root / "VERSION").write_text(version + "\n")
    run_sh = root / "run.sh"
    run_sh.write_text(
        '#!/bin/bash\nRUNPATH="$( cd "$( dirname "${BASH_SOURCE[0]}" )" && pwd )"\n'
        f'exec {shlex.quote(sys.executable)} "$RUNPATH/run.py" "$@"\n'
    )
    run_sh.chmod(run_sh.stat().st_mode | stat.S_IXUSR)
    return root


@pytest.fixture
def odm(tmp_path: Path) -> Path:
    return make_fake_odm(tmp_path / "odm")


def run(command) -> dict[str, Any]:
    """Run the Command the way a worker does (argument list, no shell) and return what the fake ODM saw."""
    assert command.cwd is not None
    result = subprocess.run(
        command.argv,
        env={**os.environ, **command.env},
        cwd=command.cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads((Path(command.cwd) / "recorded.json").read_text())
    assert "exit" not in seen, result.stderr  # ODM's argparse refused the command line
    return seen


# --- discovery ------------------------------------------------------------------------------------------


def test_describe_discovers_version_and_converted_options(odm: Path) -> None:
    info = OdmEngine(odm, python=sys.executable).describe()

    assert info.name == "odm"
    assert info.version == "3.5.0"
    assert [{k: v for k, v in o.items() if k != "help"} for o in info.options] == EXPECTED_CATALOG
    assert all(list(o) == ["name", "type", "value", "domain", "help"] for o in info.options)
    helps = {o["name"]: o["help"] for o in info.options}
    assert helps["crop"] == "Crop buffer; 0 disables, 100% keeps all. Default: 3"
    assert (
        helps["feature-quality"]
        == "Feature quality. Can be one of: ultra, high, medium, low, lowest. Default: high"
    )
    assert helps["smrf-window"] == "Window. Default: 18"


def test_discovery_prefers_the_install_venv_python(odm: Path) -> None:
    marker = odm / "venv-python-used"
    venv_python = odm / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(
        f'#!/bin/bash\ntouch {shlex.quote(str(marker))}\nexec {shlex.quote(sys.executable)} "$@"\n'
    )
    venv_python.chmod(0o755)

    engine = OdmEngine(odm)
    assert engine.python_executable() == str(venv_python)
    assert len(engine.describe().options) == len(EXPECTED_CATALOG)
    assert marker.exists()

    marker.unlink()
    assert len(OdmEngine(odm, python=sys.executable).describe().options) == len(EXPECTED_CATALOG)
    assert not marker.exists()


def test_python_falls_back_to_python3(odm: Path) -> None:
    assert OdmEngine(odm).python_executable() == "python3"


def test_version_unknown_without_version_file(tmp_path: Path) -> None:
    engine = OdmEngine(make_fake_odm(tmp_path / "odm", version=None), python=sys.executable)
    assert engine.version() == "unknown"


def test_discovery_failure_is_an_engine_error_with_odm_stderr(tmp_path: Path) -> None:
    broken = CONFIG_PY.replace(
        "import argparse\n", "import argparse\nimport odm_dependency_that_is_missing\n", 1
    )
    engine = OdmEngine(make_fake_odm(tmp_path / "odm", config_py=broken), python=sys.executable)
    with pytest.raises(EngineError, match="odm_dependency_that_is_missing"):
        engine.describe()


def test_discovery_with_a_missing_python_is_an_engine_error(odm: Path) -> None:
    with pytest.raises(EngineError, match="Could not run"):
        OdmEngine(odm, python=str(odm / "no-such-python")).describe()


def test_discovery_without_an_install_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="run.sh not found"):
        OdmEngine(tmp_path / "nothing-here", python=sys.executable).describe()


def test_discovery_times_out(tmp_path: Path) -> None:
    slow = CONFIG_PY.replace(
        "processopts = context.stages\n", "processopts = context.stages\nimport time\ntime.sleep(30)\n", 1
    )
    engine = OdmEngine(
        make_fake_odm(tmp_path / "odm", config_py=slow), python=sys.executable, discover_timeout=1
    )
    with pytest.raises(EngineError, match="timed out"):
        engine.describe()


def test_discovery_records_options_of_an_old_style_config(tmp_path: Path) -> None:
    # ODM 1.x: config() takes no arguments, reads sys.argv and a module-level parser
    old = (
        "import argparse\nparser = None\n\ndef config():\n"
        "    parser.add_argument('--project-path', metavar='<path>')\n"
        "    parser.add_argument('--mesh-size', metavar='<positive integer>', type=int, default=100000)\n"
        "    return parser.parse_args()\n"
    )
    engine = OdmEngine(make_fake_odm(tmp_path / "odm", config_py=old), python=sys.executable)
    assert [o["name"] for o in engine.describe().options] == ["mesh-size"]


# --- the command line -----------------------------------------------------------------------------------


def test_command_line_reaches_odm_exactly(odm: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    hostile = (
        f"EPSG:32615 'single' \"double\" $(touch {pwned}) `touch {pwned}` ; touch {pwned} | cat && "
        f"echo {pwned} > {pwned} \\n %s"
    )
    cameras = {"v2 canon": {"focal": 0.5, "note": 'it\'s "quoted" $(touch ' + str(pwned) + ")"}}
    engine = OdmEngine(odm, python=sys.executable, max_concurrency=2)
    catalog = engine.describe().options
    client = json.dumps(
        [
            {"name": "feature-quality", "value": "ultra"},
            {"name": "min-num-features", "value": "12000"},
            {"name": "resize-to", "value": -1},
            {"name": "cameras", "value": cameras},
            {"name": "tilt-offset", "value": -7.5},
            {"name": "orthophoto-resolution", "value": 2.5},
            {"name": "crop", "value": 0},
            {"name": "dem-gapfill-percent", "value": "99.5"},
            {"name": "proj", "value": hostile},
            {"name": "primary-band", "value": "--rerun-all"},
            {"name": "dsm", "value": True},
            {"name": "pc-ept", "value": "false"},
            {"name": "gcp", "value": "/etc/passwd"},  # input flags come from uploaded files only
            {"name": "project-path", "value": "/"},
        ]
    )
    options = validate_options(client, catalog)
    project_root = tmp_path / "projects dir"
    uuid = "4f7d3c52-9a3e-4c56-9b0e-0f3c3a7e2a11"
    gcp_dir = project_root / uuid / "gcp"
    inputs = {
        "split-image-groups": gcp_dir / "image_groups.txt",
        "gcp": gcp_dir / "gcp list.txt",
        "align": gcp_dir / "align.laz",
        "geo": gcp_dir / "geo.txt",
    }

    command = engine.command(options, project_root, uuid, inputs)

    assert command.env == {"ODM_NONINTERACTIVE": "1"}
    assert command.cwd == odm
    assert command.argv == [
        str(odm / "run.sh"),
        "--min-num-features",
        "12000",
        "--resize-to=-1",
        "--feature-quality",
        "ultra",
        "--cameras",
        json.dumps(cameras),
        "--crop",
        "0",
        "--tilt-offset=-7.5",
        "--orthophoto-resolution",
        "2.5",
        "--dem-gapfill-percent",
        "99.5",
        "--proj",
        hostile,
        "--primary-band=--rerun-all",
        "--dsm",
        "--cog",
        "--gltf",
        "--max-concurrency",
        "2",
        "--no-gpu",
        "--project-path",
        str(project_root),
        "--gcp",
        str(gcp_dir / "gcp list.txt"),
        "--geo",
        str(gcp_dir / "geo.txt"),
        "--align",
        str(gcp_dir / "align.laz"),
        "--split-image-groups",
        str(gcp_dir / "image_groups.txt"),
        uuid,
    ]

    seen = run(command)
    assert seen["argv"] == command.argv[1:]
    assert seen["noninteractive"] == "1"
    assert Path(seen["cwd"]) == odm
    parsed = seen["parsed"]
    assert parsed["feature_quality"] == "ultra"
    assert parsed["min_num_features"] == 12000
    assert parsed["resize_to"] == -1
    assert parsed["cameras"] == cameras
    assert parsed["tilt_offset"] == -7.5
    assert parsed["orthophoto_resolution"] == 2.5
    assert parsed["crop"] == 0.0
    assert parsed["dem_gapfill_percent"] == 99.5
    assert parsed["proj"] == hostile
    assert parsed["primary_band"] == "--rerun-all"
    assert parsed["rerun_all"] is False
    assert (parsed["dsm"], parsed["pc_ept"], parsed["cog"], parsed["gltf"], parsed["no_gpu"]) == (
        True,
        False,
        True,
        True,
        True,
    )
    assert parsed["max_concurrency"] == 2
    assert parsed["project_path"] == str(project_root)
    assert parsed["gcp"] == str(gcp_dir / "gcp list.txt")
    assert parsed["split_image_groups"] == str(gcp_dir / "image_groups.txt")
    assert parsed["name"] == uuid
    assert not pwned.exists()


def test_values_argparse_would_mistake_for_flags_stay_values(odm: Path, tmp_path: Path) -> None:
    engine = OdmEngine(odm, python=sys.executable, gpu=True)
    options: list[dict[str, Any]] = [
        {"name": "tilt-offset", "value": -1e-07},
        {"name": "proj", "value": "-5"},
        {"name": "primary-band", "value": "-x --dsm"},
        {"name": "min-num-features", "value": -3},
    ]

    command = engine.command(options, tmp_path, "p", {})

    assert command.argv[1:] == [
        "--tilt-offset=-1e-07",
        "--proj=-5",
        "--primary-band=-x --dsm",
        "--min-num-features=-3",
        "--project-path",
        str(tmp_path),
        "p",
    ]
    parsed = run(command)["parsed"]
    assert (parsed["tilt_offset"], parsed["proj"], parsed["primary_band"], parsed["min_num_features"]) == (
        -1e-07,
        "-5",
        "-x --dsm",
        -3,
    )
    assert parsed["dsm"] is False


@pytest.mark.parametrize(
    ("cap", "given", "expected"),
    [
        (None, None, None),
        (None, 16, 16),
        (2, None, 2),
        (2, 16, 2),
        (8, 3, 3),
    ],
)
def test_max_concurrency_cap(
    odm: Path, tmp_path: Path, cap: int | None, given: int | None, expected: int | None
) -> None:
    engine = OdmEngine(odm, python=sys.executable, max_concurrency=cap, gpu=True)
    options = [] if given is None else [{"name": "max-concurrency", "value": given}]

    argv = engine.command(options, tmp_path, "p", {}).argv

    if expected is None:
        assert "--max-concurrency" not in argv
    else:
        assert argv.count("--max-concurrency") == 1
        assert argv[argv.index("--max-concurrency") + 1] == str(expected)


def test_cap_is_not_added_when_odm_lacks_max_concurrency(tmp_path: Path) -> None:
    config_py = CONFIG_PY.replace('"--max-concurrency"', '"--sfm-threads"')
    engine = OdmEngine(
        make_fake_odm(tmp_path / "odm", config_py=config_py),
        python=sys.executable,
        max_concurrency=2,
        gpu=True,
    )
    assert engine.command([], tmp_path, "p", {}).argv[1:] == ["--project-path", str(tmp_path), "p"]


def test_cpu_worker_adds_no_gpu_unless_the_user_chose(odm: Path, tmp_path: Path) -> None:
    cpu = OdmEngine(odm, python=sys.executable, gpu=False)
    assert "--no-gpu" in cpu.command([], tmp_path, "p", {}).argv
    # the user's explicit choice is respected, both ways
    assert "--no-gpu" not in cpu.command([{"name": "no-gpu", "value": False}], tmp_path, "p", {}).argv
    assert cpu.command([{"name": "no-gpu", "value": True}], tmp_path, "p", {}).argv.count("--no-gpu") == 1


def test_gpu_worker_passes_nothing_extra_but_keeps_the_users_no_gpu(odm: Path, tmp_path: Path) -> None:
    gpu = OdmEngine(odm, python=sys.executable, gpu=True)
    assert gpu.command([], tmp_path, "p", {}).argv[1:] == ["--project-path", str(tmp_path), "p"]
    assert "--no-gpu" in gpu.command([{"name": "no-gpu", "value": True}], tmp_path, "p", {}).argv


def test_no_gpu_is_not_invented_for_an_odm_without_it(tmp_path: Path) -> None:
    config_py = CONFIG_PY.replace('    flag(parser, "--no-gpu", "Do not use the GPU.")\n', "")
    engine = OdmEngine(make_fake_odm(tmp_path / "odm", config_py=config_py), python=sys.executable)
    assert "--no-gpu" not in engine.command([], tmp_path, "p", {}).argv


def test_discovery_reads_odms_rerun_table_when_the_install_has_one(tmp_path: Path) -> None:
    with_table = CONFIG_PY + (
        "\nrerun_stages = {'orthophoto_resolution': 'odm_orthophoto', 'max_concurrency': None,"
        " 'feature_quality': 'opensfm'}\n"
    )
    info = OdmEngine(make_fake_odm(tmp_path / "new", config_py=with_table), python=sys.executable).describe()
    assert info.rerun_stages == {
        "orthophoto-resolution": "odm_orthophoto",
        "max-concurrency": None,
        "feature-quality": "opensfm",
    }
    assert len(info.options) == len(EXPECTED_CATALOG)
    # an install without the table: the bundled one is used (workers/resume.py)
    assert OdmEngine(make_fake_odm(tmp_path / "old"), python=sys.executable).describe().rerun_stages is None
