"""Post-processing: LAZ from a PLY with PDAL, EPT tiles with untwine/entwine, warnings when tools are missing."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from workers.postprocess import EPT, LAZ, postprocess

# A stand-in tool that writes what the real one would, at the path its arguments name.
FAKE_PDAL = f"""#!{sys.executable}
import sys
assert sys.argv[1] == "translate"
out = sys.argv[sys.argv.index("-o") + 1]
open(out, "wb").write(b"LASF fake laz from " + sys.argv[sys.argv.index("-i") + 1].encode())
"""
FAKE_UNTWINE = f"""#!{sys.executable}
import os, sys
out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--output_dir=")][0]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "ept.json"), "w").write("{{}}")
"""
FAILING_TOOL = f"""#!{sys.executable}
import sys
sys.stderr.write("boom: cannot read input\\n")
sys.exit(3)
"""


def tool(folder: Path, name: str, body: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def project_with_ply(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "odm_filterpoints").mkdir(parents=True)
    (project / "odm_filterpoints" / "point_cloud.ply").write_text("ply\n")
    return project


def test_ply_becomes_laz_and_ept_with_the_tools(tmp_path: Path) -> None:
    project = project_with_ply(tmp_path)
    tools = {"pdal": tool(tmp_path / "bin", "pdal", FAKE_PDAL), "untwine": tool(tmp_path / "bin", "untwine", FAKE_UNTWINE)}
    lines: list[str] = []
    postprocess(project, lines.append, tools.get)
    assert (project / LAZ).read_bytes().startswith(b"LASF fake laz from ")
    assert (project / EPT / "ept.json").exists()
    assert not any("Warning" in line for line in lines), lines


def test_missing_tools_are_warnings_not_failures(tmp_path: Path) -> None:
    project = project_with_ply(tmp_path)
    lines: list[str] = []
    postprocess(project, lines.append, lambda name: None)
    assert not (project / LAZ).exists()
    assert any("pdal is not installed" in line for line in lines)


def test_existing_laz_is_kept_and_missing_ept_tool_warns(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "odm_georeferencing").mkdir(parents=True)
    (project / LAZ).write_bytes(b"original")
    lines: list[str] = []
    postprocess(project, lines.append, lambda name: None)
    assert (project / LAZ).read_bytes() == b"original"
    assert any("untwine nor entwine" in line for line in lines)


def test_a_failing_tool_is_reported_with_its_error(tmp_path: Path) -> None:
    project = project_with_ply(tmp_path)
    lines: list[str] = []
    postprocess(project, lines.append, {"pdal": tool(tmp_path / "bin", "pdal", FAILING_TOOL)}.get)
    assert any("failed (3)" in line and "boom: cannot read input" in line for line in lines), lines


def test_nothing_to_do_without_a_point_cloud(tmp_path: Path) -> None:
    lines: list[str] = []
    postprocess(tmp_path, lines.append, lambda name: None)
    assert lines == ["Post-processing: no point cloud to convert."]
