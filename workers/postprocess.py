"""Post-processing after the engine: a georeferenced LAZ point cloud and EPT tiles, when the tools exist."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from workers.engines.base import Command
from workers.runner import Run

LAZ = "odm_georeferencing/odm_georeferenced_model.laz"
PLY_CANDIDATES = ("odm_georeferencing/odm_georeferenced_model.ply", "odm_filterpoints/point_cloud.ply")
EPT = "entwine_pointcloud"
TOOL_TIMEOUT = 6 * 3600


Adopt = Callable[[Run], None]


def postprocess(
    project: Path,
    say: Callable[[str], None],
    which: Callable[[str], str | None] = shutil.which,
    adopt: Adopt | None = None,
) -> None:
    """Never fails the task: a missing tool or a failing conversion is a console warning.

    Each tool runs like the engine (workers.runner.Run: own process group, whole tree killed); `adopt` receives
    the Run before it starts, so the task's cancel, max-runtime and shutdown stop it too (it may raise to stop
    post-processing altogether)."""
    ensure_laz(project, say, which, adopt)
    ensure_ept(project, say, which, adopt)


def ensure_laz(
    project: Path, say: Callable[[str], None], which: Callable[[str], str | None], adopt: Adopt | None = None
) -> None:
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
    _run([pdal, "translate", "-i", str(ply), "-o", str(laz)], f"Converting {ply.name} to LAZ", say, adopt)


def ensure_ept(
    project: Path, say: Callable[[str], None], which: Callable[[str], str | None], adopt: Adopt | None = None
) -> None:
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
    _run(command, "Building EPT point cloud tiles", say, adopt)


def _run(command: list[str], what: str, say: Callable[[str], None], adopt: Adopt | None) -> None:
    say(f"Post-processing: {what}")
    output: list[str] = []
    with tempfile.TemporaryDirectory(prefix="odm-farm-tool-") as tmp:
        run = Run(
            Command(argv=command, env={}), output.extend, Path(tmp) / "tool.log", Path(tmp) / "tool.pgid"
        )
        if adopt is not None:
            adopt(run)
        timer = threading.Timer(TOOL_TIMEOUT, run.kill)
        timer.daemon = True
        try:
            run.start()
        except OSError as exc:
            say(f"Warning: {what} failed: {exc}")
            return
        timer.start()
        try:
            code = run.wait()
        finally:
            timer.cancel()
    if code != 0:
        tail = [line.strip() for line in output if line.strip()][-3:]
        say(f"Warning: {what} failed ({code}): {' '.join(tail)}")
