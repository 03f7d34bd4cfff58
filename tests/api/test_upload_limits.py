"""Upload and archive limits through the real farm: request size (also chunked), files per request, zip bombs, open files."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.e2e.helpers import wait_status
from tests.support.farm import Farm, RedisServer, module_farm, wait_until
from tests.support.local_http import local_server, reply

MB = 1024 * 1024
MAX_FILES = 400
BOUNDARY = "odmfarmtestboundary"


@pytest.fixture(scope="module")
def limited(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with module_farm(redis_server, tmp_path_factory, "limited", max_upload_mb=1, max_files_per_request=MAX_FILES, archive_max_mb=1, archive_max_entries=50) as started:
        yield started


def jpeg(size: int = 500) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(size)


def part(name: str, filename: str | None, data: bytes) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename:
        head += "Content-Type: application/octet-stream\r\n"
    return (head + "\r\n").encode() + data + b"\r\n"


def multipart(parts: list[tuple[str, str | None, bytes]]) -> Iterator[bytes]:
    """A multipart body, yielded part by part (requests sends a generator with chunked transfer-encoding)."""
    for name, filename, data in parts:
        yield part(name, filename, data)
    yield f"--{BOUNDARY}--\r\n".encode()


def post_chunked(farm: Farm, path: str, body: Iterator[bytes]) -> requests.Response:
    return requests.post(farm.url + path, params=farm.params(), data=body, timeout=60,
                         headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def stored_inputs(farm: Farm, uuid: str) -> list[str]:
    folder = farm.root / "storage" / uuid / "inputs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_refused(body: dict, *words: str) -> None:
    assert body.get("noRetry") is True, body
    for word in words:
        assert word in body.get("error", ""), body


# --- request size ----------------------------------------------------------------------------------


def test_upload_over_the_request_limit_is_refused_and_nothing_is_kept(limited: Farm) -> None:
    uuid = limited.post("/task/new/init").json()["uuid"]
    body = limited.post(f"/task/new/upload/{uuid}", files=[("images", ("big.jpg", jpeg(3 * MB)))]).json()
    assert_refused(body, "1 MB")
    # chunked: no Content-Length, the limit is found while streaming; earlier small parts go too
    parts = [("images", "small.jpg", jpeg()), ("images", "big2.jpg", jpeg(3 * MB))]
    body = post_chunked(limited, f"/task/new/upload/{uuid}", multipart(parts)).json()
    assert_refused(body, "1 MB")
    assert stored_inputs(limited, uuid) == []
    assert limited.post(f"/task/new/commit/{uuid}").json() == {"error": "Need at least 1 file."}
    # under the limit works as before
    assert limited.post(f"/task/new/upload/{uuid}", files=[("images", ("ok.jpg", jpeg(MB // 2)))]).json() == {
        "success": True
    }
    assert stored_inputs(limited, uuid) == ["ok.jpg"]


def test_one_request_task_over_the_limit_creates_no_task(limited: Farm) -> None:
    before = limited.get("/task/list").json()
    stored = set((limited.root / "storage").rglob("*"))
    body = limited.post("/task/new", files=[("images", ("big.jpg", jpeg(3 * MB)))]).json()
    assert_refused(body, "1 MB")
    parts = [("name", None, b"chunked"), ("images", "a.jpg", jpeg()), ("images", "big.jpg", jpeg(3 * MB))]
    body = post_chunked(limited, "/task/new", multipart(parts)).json()
    assert_refused(body, "1 MB")
    assert limited.get("/task/list").json() == before
    assert set((limited.root / "storage").rglob("*")) == stored


# --- files per request -----------------------------------------------------------------------------


def test_too_many_files_in_one_request_is_a_final_error(limited: Farm) -> None:
    uuid = limited.post("/task/new/init").json()["uuid"]
    parts = [("images", f"img{i}.jpg", b"\xff\xd8\xff\xe0x") for i in range(MAX_FILES + 1)]
    body = post_chunked(limited, f"/task/new/upload/{uuid}", multipart(parts)).json()
    assert_refused(body, f"at most {MAX_FILES} files")
    assert stored_inputs(limited, uuid) == []
    body = post_chunked(limited, f"/task/new/upload/{uuid}", multipart(parts[:MAX_FILES])).json()
    assert body == {"success": True}
    assert len(stored_inputs(limited, uuid)) == MAX_FILES


def _api_open_files(farm: Farm) -> int:
    root = psutil.Process(farm.apis[0].proc.pid)
    return sum(p.num_fds() for p in [root, *root.children(recursive=True)])


def test_a_many_part_upload_does_not_hold_a_file_open_per_part(limited: Farm) -> None:
    uuid = limited.post("/task/new/init").json()["uuid"]
    inputs = limited.root / "storage" / uuid / "inputs"
    baseline = _api_open_files(limited)
    parts = 300
    seen: dict[str, int] = {}

    def body() -> Iterator[bytes]:
        for i in range(parts):
            yield part("images", f"img{i:03d}.jpg", jpeg(1000))
        # most parts are in the API's hands (their temporary objects exist; the server reads in 256 KB
        # blocks, so the last few may wait) and the request is still open
        wait_until(lambda: inputs.exists() and len(list(inputs.iterdir())) >= parts - 100, 20,
                   "the API did not receive the parts")
        seen["during"] = _api_open_files(limited)
        yield f"--{BOUNDARY}--\r\n".encode()

    response = post_chunked(limited, f"/task/new/upload/{uuid}", body())
    assert response.json() == {"success": True}
    assert len(stored_inputs(limited, uuid)) == parts
    assert seen["during"] - baseline < 30, f"{seen['during'] - baseline} more open files during a {parts}-part upload"


# --- archives ----------------------------------------------------------------------------------


def zeros_zip(name: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as entry:
        for _ in range(size // MB):
            entry.write(bytes(MB))
    return buffer.getvalue()


def many_entries_zip(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(count):
            zf.writestr(f"img{i}.jpg", jpeg(10))
    return buffer.getvalue()


def scratch_files(farm: Farm) -> list[Path]:
    # os.walk, not rglob: the worker removes folders while we look
    return [Path(d, f) for d, _, names in os.walk(farm.root / "worker1" / "scratch") for f in names]


def test_a_seed_zip_bomb_fails_the_task_without_filling_scratch(limited: Farm) -> None:
    bomb = zeros_zip("opensfm/reconstruction.json", 10 * MB)
    assert len(bomb) < 20_000
    files = [("images", ("a.jpg", jpeg())), ("images", ("seed.zip", bomb))]
    uuid = limited.post("/task/new", files=files).json()["uuid"]
    info = wait_status(limited, uuid, (30,))
    message = info["status"]["errorMessage"]
    assert "seed.zip" in message and "1 MB" in message, message
    wait_until(lambda: scratch_files(limited) == [], 10, f"scratch left behind: {scratch_files(limited)}")


def test_zipurl_archive_limits_fail_the_task(limited: Farm) -> None:
    bomb = zeros_zip("flight/DJI_0001.JPG", 10 * MB)
    crowded = many_entries_zip(60)
    with local_server() as server:
        server.routes["/bomb.zip"] = lambda h: reply(h, 200, bomb, {"Content-Type": "application/zip"})
        server.routes["/crowded.zip"] = lambda h: reply(h, 200, crowded, {"Content-Type": "application/zip"})
        by_size = limited.post("/task/new", data={"zipurl": server.url("/bomb.zip")}).json()["uuid"]
        by_count = limited.post("/task/new", data={"zipurl": server.url("/crowded.zip")}).json()["uuid"]
        size_info = wait_status(limited, by_size, (30,))
        count_info = wait_status(limited, by_count, (30,))
    assert "1 MB" in size_info["status"]["errorMessage"], size_info
    assert "60 entries" in count_info["status"]["errorMessage"], count_info
    assert "at most 50" in count_info["status"]["errorMessage"], count_info
    wait_until(lambda: scratch_files(limited) == [], 10, f"scratch left behind: {scratch_files(limited)}")


def test_a_many_part_upload_to_s3_does_not_hold_a_file_open_per_part(farm_factory, s3_server) -> None:  # type: ignore[no-untyped-def]
    """On S3 a part over the in-memory spool is a temporary file until it is sent: it must not wait for the
    end of the request."""
    bucket = s3_server.lease_bucket()
    farm: Farm = farm_factory(apis=1, workers=0, env=s3_server.env(bucket), api_workers=1)
    uuid = farm.post("/task/new/init").json()["uuid"]
    baseline = _api_open_files(farm)
    parts, size = 80, 300 * 1024  # over the S3 writer's 256 KB in-memory spool
    peak = {"fds": 0}

    def body() -> Iterator[bytes]:
        for i in range(parts):
            yield part("images", f"img{i:03d}.jpg", jpeg(size))
        deadline = time.monotonic() + 3  # the API reads what is left in the socket meanwhile
        while time.monotonic() < deadline:
            peak["fds"] = max(peak["fds"], _api_open_files(farm))
            time.sleep(0.05)
        yield f"--{BOUNDARY}--\r\n".encode()

    response = post_chunked(farm, f"/task/new/upload/{uuid}", body())
    assert response.json() == {"success": True}
    stored = s3_server.client.list_objects_v2(Bucket=bucket, Prefix=f"tasks/{uuid}/inputs/")
    assert stored["KeyCount"] == parts
    assert peak["fds"] - baseline < 30, f"{peak['fds'] - baseline} more open files during a {parts}-part upload"
    s3_server.release_bucket(bucket)
