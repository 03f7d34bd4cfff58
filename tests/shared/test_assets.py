"""Per-asset downloads: which assets exist in a project, folder assets zipped, nothing from outside."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from shared.assets import ASSETS, collect_assets, write_zip


def put(root: Path, name: str, data: bytes = b"x") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_collect_assets_returns_existing_files_and_zips_folders(tmp_path: Path) -> None:
    project = tmp_path / "project"
    work = tmp_path / "work"
    put(project, "odm_orthophoto/odm_orthophoto.tif")
    put(project, "odm_dem/dsm.tif")
    put(project, "cameras.json", b"{}")
    put(project, "odm_report/shots.geojson")
    put(project, "odm_texturing/odm_textured_model_geo.obj", b"obj")
    put(project, "odm_texturing/odm_textured_model_geo.mtl", b"mtl")
    put(project, "odm_texturing/maps/tex_1.png", b"png")
    outside = put(tmp_path, "secret.pdf", b"secret")
    (project / "odm_report").mkdir(exist_ok=True)
    os.symlink(outside, project / "odm_report" / "report.pdf")

    found = collect_assets(project, work)

    assert sorted(found) == [
        "cameras.json",
        "dsm.tif",
        "orthophoto.tif",
        "shots.geojson",
        "textured_model.zip",
    ]
    assert found["dsm.tif"] == project / "odm_dem/dsm.tif"
    assert found["textured_model.zip"] == work / "textured_model.zip"
    with zipfile.ZipFile(found["textured_model.zip"]) as zf:
        assert sorted(zf.namelist()) == [
            "maps/tex_1.png",
            "odm_textured_model_geo.mtl",
            "odm_textured_model_geo.obj",
        ]
        assert zf.read("odm_textured_model_geo.obj") == b"obj"
        assert zf.getinfo("maps/tex_1.png").compress_type == zipfile.ZIP_STORED


def test_collect_assets_on_an_empty_project(tmp_path: Path) -> None:
    (tmp_path / "project" / "odm_texturing").mkdir(parents=True)
    assert collect_assets(tmp_path / "project", tmp_path / "work") == {}


def test_asset_names_are_webodm_names() -> None:
    assert ASSETS["orthophoto.tif"] == "odm_orthophoto/odm_orthophoto.tif"
    assert ASSETS["georeferenced_model.laz"] == "odm_georeferencing/odm_georeferenced_model.laz"
    assert ASSETS["textured_model.zip"] == "odm_texturing"
    assert "all.zip" not in ASSETS


def test_write_zip_removes_its_partial_file_on_failure(tmp_path: Path) -> None:
    put(tmp_path, "a.txt")
    members = [(tmp_path / "a.txt", "a.txt"), (tmp_path / "missing.txt", "missing.txt")]
    with pytest.raises(FileNotFoundError):
        write_zip(tmp_path / "out.zip", members)
    assert not (tmp_path / "out.zip").exists()
    assert not (tmp_path / "out.zip.part").exists()
