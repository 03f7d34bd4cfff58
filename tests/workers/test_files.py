"""Worker file handling: hostile archives stay in their folder, inputs land where ODM expects, all.zip, zipurl."""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest

from shared import safety
from shared.safety import UnsafeUrl
from shared.settings import Settings
from tests.support.local_http import local_server, reply
from workers.files import (
    DEFAULT_OUTPUTS,
    ArchiveTooLarge,
    BrokenArchive,
    FetchError,
    build_all_zip,
    fetch_url,
    place_inputs,
    safe_extract,
)

DEFAULT_BLOCKED = Settings().blocked_networks


def make_zip(path: Path, entries: dict[str, bytes | str], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


# --- safe_extract -------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", ["../evil.txt", "a/../../evil.txt", "..\\evil.txt"])
def test_dot_dot_entries_refuse_the_archive_and_write_nothing_outside(tmp_path: Path, evil: str) -> None:
    archive = make_zip(tmp_path / "seed.zip", {"ok.txt": "fine", evil: "pwned"})
    dest = tmp_path / "project"
    with pytest.raises(BrokenArchive, match="outside the task folder"):
        safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert files_under(tmp_path) == ["seed.zip"]  # refused as a whole: not even ok.txt


def test_absolute_entries_refuse_the_archive(tmp_path: Path) -> None:
    target = tmp_path / "abs-evil.txt"
    archive = make_zip(tmp_path / "seed.zip", {str(target): "pwned"})
    with pytest.raises(BrokenArchive):
        safe_extract(archive, tmp_path / "project")
    assert not target.exists()
    archive = make_zip(tmp_path / "seed2.zip", {"C:/Windows/evil.txt": "pwned"})
    with pytest.raises(BrokenArchive):
        safe_extract(archive, tmp_path / "project")


def test_symlink_entries_are_never_created(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = make_zip(
        tmp_path / "seed.zip",
        {"link/evil.txt": "stays inside", "a.txt": "a"},
        symlinks={"link": str(outside), "passwd": "/etc/passwd"},
    )
    # the symlink entries come last in the archive; put one first too
    first = tmp_path / "first.zip"
    with zipfile.ZipFile(first, "w") as zf:
        info = zipfile.ZipInfo("dir")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, str(outside))
        zf.writestr("dir/evil.txt", "stays inside")
    dest = tmp_path / "project"
    written = safe_extract(archive, dest)
    written += safe_extract(first, dest)
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert list(outside.iterdir()) == []
    assert sorted(p.relative_to(dest).as_posix() for p in written) == [
        "a.txt",
        "dir/evil.txt",
        "link/evil.txt",
    ]


def test_a_symlink_already_in_the_destination_cannot_redirect_writes(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "project"
    dest.mkdir()
    os.symlink(outside, dest / "opensfm")
    archive = make_zip(tmp_path / "seed.zip", {"opensfm/evil.txt": "pwned"})
    with pytest.raises(BrokenArchive):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == []


def test_flat_extraction_keeps_base_names_only(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "photos.zip",
        {
            "flight1/IMG_1.JPG": "1",
            "flight1/deep/er/IMG_2.jpg": "2",
            "../../IMG_3.jpg": "3",
            "/abs/IMG_4.jpg": "4",
            "win\\dir\\IMG_5.jpg": "5",
            "flight2/IMG_1.JPG": "1 again",
            "__MACOSX/flight1/._IMG_1.JPG": "junk",
            "flight1/.DS_Store": "junk",
            "flight1/.hidden.jpg": "junk",
            "emptydir/": "",
        },
    )
    dest = tmp_path / "staging"
    written = safe_extract(archive, dest, flat=True)
    assert files_under(dest) == [
        "IMG_1.JPG",
        "IMG_1_1.JPG",
        "IMG_2.jpg",
        "IMG_3.jpg",
        "IMG_4.jpg",
        "IMG_5.jpg",
    ]
    assert len(written) == 6
    assert (dest / "IMG_1.JPG").read_text() == "1"
    assert (dest / "IMG_1_1.JPG").read_text() == "1 again"
    assert files_under(tmp_path) == ["photos.zip"] + [f"staging/{n}" for n in files_under(dest)]


def test_nested_extraction_keeps_folders(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "seed.zip", {"opensfm/": "", "opensfm/features/a.npz": b"\x00\x01", "x\\y.txt": "y"}
    )
    dest = tmp_path / "project"
    safe_extract(archive, dest)
    assert files_under(dest) == ["opensfm/features/a.npz", "x/y.txt"]


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a zip at all",
        b"",
        b"PK\x03\x04" + b"\x00" * 40,
    ],
)
def test_garbage_is_a_broken_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(content)
    with pytest.raises(BrokenArchive, match="bad.zip"):
        safe_extract(path, tmp_path / "out")


def test_truncated_and_corrupted_archives_are_broken(tmp_path: Path) -> None:
    good = make_zip(tmp_path / "good.zip", {"a.bin": os.urandom(50_000)})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BrokenArchive):
        safe_extract(truncated, tmp_path / "out1")

    corrupted = bytearray(data)
    corrupted[200] ^= 0xFF  # inside the compressed data of a.bin
    (tmp_path / "corrupted.zip").write_bytes(bytes(corrupted))
    with pytest.raises(BrokenArchive, match="a.bin"):
        safe_extract(tmp_path / "corrupted.zip", tmp_path / "out2")
    assert not (tmp_path / "out2" / "a.bin").exists()


def test_zip_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", {f"zeros{i}.bin": b"\x00" * 2_000_000 for i in range(5)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ArchiveTooLarge, match="10000000 bytes"):
        safe_extract(bomb, tmp_path / "out", max_total_bytes=5_000_000)
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []
    assert len(safe_extract(bomb, tmp_path / "ok", max_total_bytes=10_000_000)) == 5


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"{i}.jpg": "x" for i in range(20)})
    with pytest.raises(ArchiveTooLarge, match="20 entries"):
        safe_extract(archive, tmp_path / "out", flat=True, max_files=10)


# --- place_inputs -------------------------------------------------------------------------------


def test_place_inputs_routes_every_kind_of_file(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    project = tmp_path / "project"
    inputs.mkdir()
    make_zip(
        inputs / "seed.zip",
        {"opensfm/reconstruction.json": "{}", "opensfm/features/IMG_1.npz": "f", "images/seeded.jpg": "s"},
    )
    make_zip(
        inputs / "photos.zip",
        {
            "flight/IMG_1.JPG": "1",
            "flight/sub/IMG_2.jpg": "2",
            "flight/clip.mp4": "v",
            "flight/README.md": "ignored",
            "flight/inner.zip": "ignored",
        },
    )
    for name in ("geo.txt", "image_groups.txt", "gcp_list.txt", "align.laz", "IMG_3.JPG", "IMG_4.tif"):
        (inputs / name).write_text(name)

    placed = place_inputs(inputs, project)

    assert files_under(project) == [
        "gcp/align.laz",
        "gcp/gcp_list.txt",
        "gcp/geo.txt",
        "gcp/image_groups.txt",
        "images/IMG_1.JPG",
        "images/IMG_2.jpg",
        "images/IMG_3.JPG",
        "images/IMG_4.tif",
        "images/clip.mp4",
        "images/seeded.jpg",
        "opensfm/features/IMG_1.npz",
        "opensfm/reconstruction.json",
    ]
    assert placed.images_count == 6
    assert placed.input_flags == {
        "geo": project / "gcp/geo.txt",
        "split-image-groups": project / "gcp/image_groups.txt",
        "gcp": project / "gcp/gcp_list.txt",
        "align": project / "gcp/align.laz",
    }
    assert list(inputs.iterdir()) == []  # moved, not copied; archives removed
    assert not any(p.name.startswith(".unzip-") for p in project.iterdir())


def test_place_inputs_takes_gcp_files_out_of_image_archives(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make_zip(
        inputs / "zipurl.zip",
        {"set/b_gcp.txt": "gcp b", "set/a_gcp.txt": "gcp a", "set/ALIGN.TIF": "a", "set/x.jpg": "x"},
    )
    placed = place_inputs(inputs, tmp_path / "project")
    assert placed.images_count == 1
    assert placed.input_flags == {
        "gcp": tmp_path / "project/gcp/a_gcp.txt",
        "align": tmp_path / "project/gcp/ALIGN.TIF",
    }


def test_place_inputs_with_only_images_has_no_flags(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.jpg").write_bytes(b"a")
    placed = place_inputs(inputs, tmp_path / "project")
    assert placed.images_count == 1
    assert placed.input_flags == {}


def test_place_inputs_with_a_broken_seed_fails_clearly(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "seed.zip").write_bytes(b"nope")
    with pytest.raises(BrokenArchive, match="seed.zip is not a valid zip"):
        place_inputs(inputs, tmp_path / "project")


# --- all.zip ------------------------------------------------------------------------------------


def make_project(root: Path) -> Path:
    files = {
        "odm_orthophoto/odm_orthophoto.tif": b"tif" * 1000,
        "odm_orthophoto/odm_orthophoto.png": b"png",
        "odm_orthophoto/odm_orthophoto_corners.txt": b"not in the list",
        "odm_georeferencing/odm_georeferenced_model.laz": b"laz",
        "odm_georeferencing/sub/deeper/x.json": b"{}",
        "odm_texturing/odm_textured_model_geo.obj": b"obj",
        "odm_dem/dsm.tif": b"dsm",
        "odm_report/report.pdf": b"pdf",
        "entwine_pointcloud/ept.json": b"{}",
        "images.json": b"[]",
        "task_output.txt": b"console",
        "images/IMG_1.JPG": b"input",
        "opensfm/reconstruction.json": b"{}",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_all_zip_default_layout(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, project / "odm_report" / "leak.txt")
    os.symlink(project / "odm_report", project / "odm_report" / "loop")
    zip_path = tmp_path / "out" / "all.zip"

    names = build_all_zip(project, zip_path)

    expected = [
        "odm_orthophoto/odm_orthophoto.tif",
        "odm_orthophoto/odm_orthophoto.png",
        "odm_georeferencing/odm_georeferenced_model.laz",
        "odm_georeferencing/sub/deeper/x.json",
        "odm_texturing/odm_textured_model_geo.obj",
        "odm_dem/dsm.tif",
        "entwine_pointcloud/ept.json",
        "images.json",
        "task_output.txt",
        "odm_report/report.pdf",
    ]
    assert names == expected
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == expected
        assert zf.read("odm_orthophoto/odm_orthophoto.tif") == b"tif" * 1000
        kinds = {info.filename: info.compress_type for info in zf.infolist()}
    assert kinds["odm_orthophoto/odm_orthophoto.tif"] == zipfile.ZIP_DEFLATED
    assert kinds["odm_georeferencing/odm_georeferenced_model.laz"] == zipfile.ZIP_STORED
    assert kinds["odm_orthophoto/odm_orthophoto.png"] == zipfile.ZIP_STORED
    assert sorted(p.name for p in zip_path.parent.iterdir()) == ["all.zip"]  # no .part left


def test_all_zip_custom_outputs(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    zip_path = tmp_path / "all.zip"
    names = build_all_zip(
        project,
        zip_path,
        ["odm_dem/dsm.tif", "odm_georeferencing", "missing/thing.tif", "../secret", "odm_dem/dsm.tif"],
    )
    assert names == [
        "odm_dem/dsm.tif",
        "odm_georeferencing/odm_georeferenced_model.laz",
        "odm_georeferencing/sub/deeper/x.json",
    ]
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == names


def test_all_zip_with_nothing_to_add_is_an_empty_valid_zip(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    assert build_all_zip(tmp_path / "project", tmp_path / "all.zip") == []
    with zipfile.ZipFile(tmp_path / "all.zip") as zf:
        assert zf.namelist() == []


def test_all_zip_does_not_include_itself(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    zip_path = project / "odm_report" / "all.zip"
    build_all_zip(project, zip_path, ["odm_report"])
    names = build_all_zip(project, zip_path, ["odm_report"])  # a second run sees the first all.zip
    assert names == ["odm_report/report.pdf"]


def test_all_zip_tolerates_old_timestamps(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    os.utime(project / "images.json", (0, 0))  # 1970: before what zip dates can hold
    assert build_all_zip(project, tmp_path / "all.zip", ["images.json"]) == ["images.json"]


def test_default_outputs_is_the_contract_list() -> None:
    assert len(DEFAULT_OUTPUTS) == 25
    assert len(set(DEFAULT_OUTPUTS)) == 25
    assert "odm_report" in DEFAULT_OUTPUTS and "odm_dem/dtm.euclideand.tif" in DEFAULT_OUTPUTS
    assert all(safety.normalize_outputs([entry]) == [entry] for entry in DEFAULT_OUTPUTS)


# --- fetch_url ----------------------------------------------------------------------------------


def test_fetch_url_downloads_and_follows_local_redirects(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    with local_server() as server:
        server.routes["/images.zip"] = lambda h: reply(h, 200, payload)
        server.routes["/go"] = lambda h: reply(h, 302, headers={"Location": "/images.zip"})
        dest = tmp_path / "dl" / "zipurl.zip"
        assert fetch_url(server.url("/go"), dest, DEFAULT_BLOCKED) == len(payload)
    assert dest.read_bytes() == payload


def test_fetch_url_enforces_the_size_limit(tmp_path: Path) -> None:
    def undeclared(handler) -> None:  # no Content-Length: HTTP/1.0, body ends when the connection closes
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b"x" * 50_000)

    with local_server() as server:
        server.routes["/declared"] = lambda h: reply(h, 200, b"x" * 50_000)
        server.routes["/undeclared"] = undeclared
        dest = tmp_path / "zipurl.zip"
        with pytest.raises(FetchError, match="limit of 10000"):
            fetch_url(server.url("/declared"), dest, DEFAULT_BLOCKED, max_bytes=10_000)
        assert not dest.exists()
        with pytest.raises(FetchError, match="limit of 10000"):
            fetch_url(server.url("/undeclared"), dest, DEFAULT_BLOCKED, max_bytes=10_000)
        assert not dest.exists()
        assert fetch_url(server.url("/undeclared"), dest, DEFAULT_BLOCKED, max_bytes=50_000) == 50_000


def test_fetch_url_reports_http_errors(tmp_path: Path) -> None:
    with local_server() as server:
        server.routes["/boom"] = lambda h: reply(h, 500, b"oops")
        with pytest.raises(FetchError, match="HTTP 404"):
            fetch_url(server.url("/missing.zip"), tmp_path / "a.zip", DEFAULT_BLOCKED)
        with pytest.raises(FetchError, match="HTTP 500"):
            fetch_url(server.url("/boom"), tmp_path / "a.zip", DEFAULT_BLOCKED)
    assert not (tmp_path / "a.zip").exists()


def test_fetch_url_refuses_a_redirect_to_a_blocked_address(tmp_path: Path) -> None:
    with local_server() as server:
        server.routes["/evil"] = lambda h: reply(
            h, 302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
        )
        server.routes["/file"] = lambda h: reply(h, 301, headers={"Location": "file:///etc/passwd"})
        with pytest.raises(UnsafeUrl, match="169.254.169.254"):
            fetch_url(server.url("/evil"), tmp_path / "a.zip", DEFAULT_BLOCKED)
        with pytest.raises(UnsafeUrl, match="only http and https"):
            fetch_url(server.url("/file"), tmp_path / "a.zip", DEFAULT_BLOCKED)
    assert not (tmp_path / "a.zip").exists()


def test_fetch_url_refuses_blocked_urls_before_connecting(tmp_path: Path) -> None:
    with local_server() as server:
        with pytest.raises(UnsafeUrl):
            fetch_url(server.url("/x.zip"), tmp_path / "a.zip", ["127.0.0.0/8"])
        assert server.received == []


def test_fetch_url_limits_redirect_chains(tmp_path: Path) -> None:
    with local_server() as server:
        server.routes["/loop"] = lambda h: reply(h, 307, headers={"Location": "/loop"})
        with pytest.raises(FetchError, match="redirects"):
            fetch_url(server.url("/loop"), tmp_path / "a.zip", DEFAULT_BLOCKED)
        assert len(server.received) == 6


def test_fetch_url_checks_the_connected_address_against_dns_rebinding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # check_url is told "public address", but the connection really goes to loopback, which is blocked
    monkeypatch.setattr(safety, "_resolve", lambda host, port: ["93.184.216.34"])
    with local_server() as server:
        server.routes["/x.zip"] = lambda h: reply(h, 200, b"data")
        url = f"http://localhost:{server.port}/x.zip"
        with pytest.raises(UnsafeUrl, match="is in blocked network"):
            fetch_url(url, tmp_path / "a.zip", ["127.0.0.0/8", "::1/128"])
        assert server.received == []


def test_fetch_url_connection_errors_and_timeouts(tmp_path: Path) -> None:
    def slow(handler) -> None:
        time.sleep(1.5)
        reply(handler, 200, b"late")

    with local_server() as server:
        server.routes["/slow"] = slow
        with pytest.raises(FetchError, match="no answer within 0.3 s"):
            fetch_url(server.url("/slow"), tmp_path / "a.zip", DEFAULT_BLOCKED, timeout=0.3)
        port = server.port
    with pytest.raises(FetchError, match="cannot connect"):
        fetch_url(f"http://127.0.0.1:{port}/gone.zip", tmp_path / "a.zip", DEFAULT_BLOCKED, timeout=2)


def test_a_fetched_zip_round_trips_through_place_inputs(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("dataset/images/a.jpg", "a")
        zf.writestr("dataset/images/b.jpg", "b")
    with local_server() as server:
        server.routes["/dataset.zip"] = lambda h: reply(h, 200, buffer.getvalue())
        inputs = tmp_path / "inputs"
        fetch_url(server.url("/dataset.zip"), inputs / "zipurl.zip", DEFAULT_BLOCKED)
    placed = place_inputs(inputs, tmp_path / "project")
    assert placed.images_count == 2
    assert files_under(tmp_path / "project") == ["images/a.jpg", "images/b.jpg"]


def test_fetch_url_reports_a_transfer_that_stalls_midway(tmp_path: Path) -> None:
    def stall(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(b"x" * 1000)
        handler.wfile.flush()
        time.sleep(1.5)

    with local_server() as server:
        server.routes["/stall"] = stall
        server.routes["/empty-redirect"] = lambda h: reply(h, 302)
        with pytest.raises(FetchError, match=r"broke off after \d+ bytes \(Read timed out"):
            fetch_url(server.url("/stall"), tmp_path / "a.zip", DEFAULT_BLOCKED, timeout=0.3)
        with pytest.raises(FetchError, match="HTTP 302"):
            fetch_url(server.url("/empty-redirect"), tmp_path / "a.zip", DEFAULT_BLOCKED)
    assert not (tmp_path / "a.zip").exists()


def test_build_all_zip_stops_when_asked_and_leaves_no_partial_zip(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "odm_texturing").mkdir(parents=True)
    for i in range(5):
        (project / "odm_texturing" / f"t{i}.obj").write_text("v 0 0 0\n")
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("cancelled")

    zip_path = tmp_path / "all.zip"
    with pytest.raises(KeyboardInterrupt):
        build_all_zip(project, zip_path, check=check)
    assert not zip_path.exists() and not list(tmp_path.glob("all.zip*"))
