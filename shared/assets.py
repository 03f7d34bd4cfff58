"""Result assets: the per-asset download names WebODM uses, where each lives in a project, and zip packing."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

from shared.safety import is_inside, walk_inside

# Download name (as WebODM's Task.ASSETS_MAP names it) -> project-relative file, or folder to zip.
ASSETS: dict[str, str] = {
    "orthophoto.tif": "odm_orthophoto/odm_orthophoto.tif",
    "orthophoto.png": "odm_orthophoto/odm_orthophoto.png",
    "orthophoto.mbtiles": "odm_orthophoto/odm_orthophoto.mbtiles",
    "dsm.tif": "odm_dem/dsm.tif",
    "dtm.tif": "odm_dem/dtm.tif",
    "georeferenced_model.laz": "odm_georeferencing/odm_georeferenced_model.laz",
    "georeferenced_model.las": "odm_georeferencing/odm_georeferenced_model.las",
    "georeferenced_model.ply": "odm_georeferencing/odm_georeferenced_model.ply",
    "georeferenced_model.csv": "odm_georeferencing/odm_georeferenced_model.csv",
    "textured_model.zip": "odm_texturing",
    "report.pdf": "odm_report/report.pdf",
    "cameras.json": "cameras.json",
    "shots.geojson": "odm_report/shots.geojson",
}

# Assets whose path is a folder, delivered as a zip of its contents (arcnames relative to the folder,
# as WebODM builds them).
FOLDER_ASSETS: frozenset[str] = frozenset({"textured_model.zip"})

# Already-compressed formats: deflating them again costs time and saves nothing.
STORED_SUFFIXES: frozenset[str] = frozenset(
    {".laz", ".zip", ".png", ".jpg", ".jpeg", ".mbtiles", ".kmz", ".gz", ".webp"}
)

# Most large outputs are compressed already; level 1 keeps "compressing all.zip" short (as NodeODM does).
COMPRESS_LEVEL = 1


def compress_type(name: str) -> int:
    return zipfile.ZIP_STORED if Path(name).suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED


def write_zip(zip_path: Path, members: Iterable[tuple[Path, str]]) -> list[str]:
    """Zip `(file, arcname)` pairs into `zip_path`, streaming each file; returns the arcnames written.

    The archive is written to `<zip_path>.part` and renamed at the end, so `zip_path` is never seen
    half-written. A repeated arcname and the archive itself (when it lies inside a zipped folder) are
    skipped.
    """
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".part")
    own = {zip_path.resolve(), partial.resolve()}
    written: list[str] = []
    seen: set[str] = set()
    try:
        # strict_timestamps=False: files dated before 1980 (cameras with unset clocks) must not fail the zip
        with zipfile.ZipFile(partial, "w", allowZip64=True, strict_timestamps=False) as zf:
            for path, arcname in members:
                if arcname in seen or path.resolve() in own:
                    continue
                seen.add(arcname)
                kind = compress_type(arcname)
                level = COMPRESS_LEVEL if kind == zipfile.ZIP_DEFLATED else None
                zf.write(path, arcname, compress_type=kind, compresslevel=level)
                written.append(arcname)
        os.replace(partial, zip_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


def collect_assets(project_dir: Path, work_dir: Path) -> dict[str, Path]:
    """Asset name -> file to upload, for the assets that exist; folder assets are zipped into `work_dir`."""
    found: dict[str, Path] = {}
    for name, relative in ASSETS.items():
        source = project_dir / relative
        if name in FOLDER_ASSETS:
            if not source.is_dir() or not is_inside(source, project_dir):
                continue
            members = [
                (path, path.relative_to(source).as_posix()) for path in walk_inside(project_dir, source)
            ]
            if not members:
                continue
            target = work_dir / name
            write_zip(target, members)
            found[name] = target
        elif source.is_file() and is_inside(source, project_dir):
            found[name] = source
    return found
