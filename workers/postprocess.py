"""Post-processing after the engine: a georeferenced LAZ point cloud and EPT tiles, when the tools exist."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

LAZ = "odm_georeferencing/odm_georeferenced_model.laz"
PLY_CANDIDATES = ("odm_georeferencing/odm_georeferenced_model.ply", "odm_filterpoints/point_cloud.ply")
EPT = "entwine_pointcloud"
TOOL_TIMEOUT = 6 * 3600


def postprocess(
    project: Path, say: Callable[[str], None], which: Callable[[str], str | None] = shutil.which
) -> None:
    """Never fails the task: a missing tool or a failing conversion is a console warning."""
    ensure_laz(project, say, which)
    ensure_ept(project, say, which)


def ensure_laz(project: Path, say: Callable[[str], None], which: Callable[[str], str | None]) -> None:
    laz = project / LAZ
    if laz.exists():
        return
    ply = next((project / p for p in PLY_CANDIDATES if (project / p).exists()), None)
    if ply is None:
        say("Post-processing: no point cloud to convert.")
        return
    pdal = which("pdal")
    if not pdal:
        say(f"Warning: pdal is not installed on this worker; {LAZ} was not created from {ply.name}.")
        return
    laz.parent.mkdir(parents=True, exist_ok=True)
    _run([pdal, "translate", "-i", str(ply), "-o", str(laz)], f"Converting {ply.name} to LAZ", say)


def ensure_ept(project: Path, say: Callable[[str], None], which: Callable[[str], str | None]) -> None:
    ept = project / EPT
    laz = project / LAZ
    if (ept / "ept.json").exists() or not laz.exists():
        return
    untwine, entwine = which("untwine"), which("entwine")
    if untwine:
        command = [untwine, f"--files={laz}", f"--output_dir={ept}"]
    elif entwine:
        command = [entwine, "build", "--threads", "2", "--input", str(laz), "--output", str(ept)]
    else:
        say(
            "Warning: neither untwine nor entwine is installed on this worker; skipping EPT point cloud tiles."
        )
        return
    _run(command, "Building EPT point cloud tiles", say)


def _run(command: list[str], what: str, say: Callable[[str], None]) -> None:
    say(f"Post-processing: {what}")
    try:
        result = subprocess.run(command, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"Warning: {what} failed: {exc}")
        return
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        say(f"Warning: {what} failed ({result.returncode}): {' '.join(tail)}")
