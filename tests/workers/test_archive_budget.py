"""A task's archives (seed.zip, uploaded zips, the zipurl download) share one expansion budget and entry limit."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.workers.test_files import files_under, make_zip
from workers import files
from workers.files import ArchiveTooLarge, place_inputs

MB = 1024 * 1024


def zeros_zip(path: Path, name: str, size: int) -> Path:
    """`size` zeros compressed to a few KB, written entry by entry as a zip bomb is."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as entry:
        for _ in range(size // MB):
            entry.write(bytes(MB))
    return path


def disk_used(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_a_zip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    bomb = zeros_zip(inputs / "seed.zip", "opensfm/reconstruction.json", 10 * MB)
    assert bomb.stat().st_size < 20_000
    with pytest.raises(ArchiveTooLarge, match="seed.zip expands to 10485760 bytes; at most 1 MB"):
        place_inputs(inputs, tmp_path / "project", max_total_bytes=MB)
    assert disk_used(tmp_path / "project") == 0


def test_archives_of_one_task_share_the_budget(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make_zip(inputs / "a.zip", {f"a{i}.jpg": bytes(300_000) for i in range(2)})
    make_zip(inputs / "b.zip", {f"b{i}.jpg": bytes(300_000) for i in range(2)})
    # each archive alone (600 KB) is under 1 MB; together (1.2 MB) they are not
    with pytest.raises(ArchiveTooLarge, match="at most 1 MB together"):
        place_inputs(inputs, tmp_path / "project", max_total_bytes=MB)
    assert disk_used(tmp_path / "project") <= MB


def test_a_lying_size_header_is_caught_while_extracting(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    bomb = zeros_zip(inputs.parent / "real.zip", "x.jpg", 5 * MB)
    inputs.mkdir()
    data = bytearray(bomb.read_bytes())
    # rewrite the declared uncompressed size (local header and central directory) to 100 bytes
    with zipfile.ZipFile(bomb) as zf:
        info = zf.infolist()[0]
    declared = info.file_size.to_bytes(4, "little")
    data = data.replace(declared, (100).to_bytes(4, "little"))
    (inputs / "lying.zip").write_bytes(bytes(data))
    with pytest.raises(files.BrokenArchive):
        place_inputs(inputs, tmp_path / "project", max_total_bytes=MB)
    assert disk_used(tmp_path / "project") <= MB


def test_entries_are_limited(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make_zip(inputs / "many.zip", {f"{i}.jpg": "x" for i in range(60)})
    with pytest.raises(ArchiveTooLarge, match="60 entries; at most 50"):
        place_inputs(inputs, tmp_path / "project", max_files=50)
    assert files_under(tmp_path / "project" / "images") == []


def test_without_a_setting_the_free_scratch_space_is_the_limit(tmp_path: Path, monkeypatch) -> None:
    inputs = tmp_path / "inputs"
    zeros_zip(inputs.parent / "seed.zip", "big.bin", 4 * MB)
    inputs.mkdir()
    (inputs.parent / "seed.zip").rename(inputs / "seed.zip")
    real = files.shutil.disk_usage

    def small_disk(path):  # a scratch disk with 2 MB left above the reserve
        usage = real(path)
        return usage._replace(free=files.SCRATCH_RESERVE + 2 * MB)

    monkeypatch.setattr(files.shutil, "disk_usage", small_disk)
    with pytest.raises(ArchiveTooLarge, match="free scratch space"):
        place_inputs(inputs, tmp_path / "project")
    assert disk_used(tmp_path / "project") <= 2 * MB
