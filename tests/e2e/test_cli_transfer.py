"""The client's uploads and downloads counted in bytes, retried per file, resumed; and servers that are no NodeODM.

Against local HTTP servers that answer as a node would (or as a web server that is no node at all), so that
failures can be scripted; the same code runs against the live farm in tests/e2e/test_cli_client.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from pyodm.api import Task

from odm_farm import transfer
from odm_farm.client import ClientError, RemoteNode
from odm_farm.redis_server import free_port
from tests.e2e.helpers import make_images, zip_bytes
from tests.support.local_http import LocalServer, local_server, reply

ROOT = Path(__file__).resolve().parents[2]
UUID = "3a9c1a52-0000-4000-8000-000000000001"


def odm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    return subprocess.run(
        [sys.executable, "-m", "odm_farm.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def as_json(value: object, status: int = 200) -> object:
    return lambda h: reply(h, status, json.dumps(value).encode(), {"Content-Type": "application/json"})


@pytest.fixture
def node() -> Iterator[LocalServer]:
    with local_server() as server:
        server.routes["/task/new/init"] = as_json({"uuid": UUID})
        server.routes[f"/task/new/commit/{UUID}"] = as_json({"uuid": UUID})
        yield server


def uploads(server: LocalServer) -> list[bytes]:
    return [r.body for r in server.received if r.path == f"/task/new/upload/{UUID}"]


def test_upload_progress_moves_by_bytes_and_a_retried_file_counts_once(
    node: LocalServer, tmp_path: Path
) -> None:
    images = [Path(p) for p in make_images(tmp_path, count=2, size=1_000_000)]
    total = sum(p.stat().st_size for p in images)
    failed: set[bytes] = set()

    def flaky(handler: BaseHTTPRequestHandler) -> None:  # every file fails once, then goes through
        body = uploads(node)[-1]
        name = body.split(b'filename="')[1].split(b'"')[0]
        if name not in failed:
            failed.add(name)
            reply(handler, 500, b"busy")
        else:
            as_json({"success": True})(handler)  # type: ignore[operator]

    node.routes[f"/task/new/upload/{UUID}"] = flaky
    seen: list[tuple[int, int | None]] = []
    task = transfer.upload_task(
        RemoteNode(node.url()),
        images,
        {"dsm": True},
        lambda d, t: seen.append((d, t)),
        name="bytes",
        parallel=1,
        retry_wait=0.01,
    )
    assert task.uuid == UUID
    assert len(uploads(node)) == 4, "each file sent twice"
    for image in images:
        assert sum(image.read_bytes() in body for body in uploads(node)) == 2
    assert all(t == total for _, t in seen)
    done = [d for d, _ in seen]
    assert len(done) > 50, "progress comes as the bytes leave, not once per file"
    assert max(done) <= total and done[-1] == total
    assert any(b < a for a, b in zip(done, done[1:], strict=False)), "a failed file's bytes are taken back"
    init = next(r.body for r in node.received if r.path == "/task/new/init")
    assert b'[{"name": "dsm", "value": true}]' in init and b"bytes" in init


def test_a_file_that_keeps_failing_is_named(node: LocalServer, tmp_path: Path) -> None:
    node.routes[f"/task/new/upload/{UUID}"] = as_json({"error": "disk full"}, 200)
    images = [Path(p) for p in make_images(tmp_path, count=1)]
    with pytest.raises(ClientError, match=r"img1.jpg: upload failed after 3 attempts: disk full"):
        transfer.upload_task(
            RemoteNode(node.url()), images, {}, lambda d, t: None, retries=2, retry_wait=0.01
        )
    assert len(uploads(node)) == 3
    assert not any(r.path.startswith("/task/new/commit") for r in node.received)


def test_download_resumes_where_a_dropped_connection_stopped(node: LocalServer, tmp_path: Path) -> None:
    archive = zip_bytes({"odm_orthophoto/odm_orthophoto.tif": os.urandom(400_000), "log.json": b"{}"})
    half = len(archive) // 2

    def serve(handler: BaseHTTPRequestHandler) -> None:
        asked = handler.headers.get("Range")
        if asked is None:  # the first answer breaks off half-way
            handler.send_response(200)
            handler.send_header("Content-Type", "application/zip")
            handler.send_header("Accept-Ranges", "bytes")
            handler.send_header("Content-Length", str(len(archive)))
            handler.end_headers()
            handler.wfile.write(archive[:half])
            handler.wfile.flush()
            handler.close_connection = True
            return
        start = int(asked.removeprefix("bytes=").split("-")[0])
        reply(
            handler,
            206,
            archive[start:],
            {
                "Content-Type": "application/zip",
                "Content-Range": f"bytes {start}-{len(archive) - 1}/{len(archive)}",
            },
        )

    node.routes[f"/task/{UUID}/download/all.zip"] = serve
    seen: list[tuple[int, int | None]] = []
    path = transfer.download_zip(
        Task(RemoteNode(node.url(), "tok"), UUID), tmp_path, lambda d, t: seen.append((d, t))
    )
    assert path.read_bytes() == archive
    ranges = [r.headers.get("Range") for r in node.received if r.path.endswith("all.zip")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] is not None
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= half, "resumed, not started again"
    assert seen[-1] == (len(archive), len(archive)) and len(seen) > 3


# --- servers that are no NodeODM -------------------------------------------------------------------------


@pytest.fixture
def web_page() -> Iterator[LocalServer]:
    """A web server answering an HTML page (200) on every path a client command uses."""
    page = b"<!doctype html><html><body>It works!</body></html>"
    with local_server() as server:
        for path in (
            "/info",
            "/options",
            "/task/list",
            "/task/abc/info",
            "/task/abc/output",
            "/task/cancel",
            "/task/restart",
            "/task/remove",
            "/task/abc/download/all.zip",
            "/workers",
            "/task/new/init",
        ):
            server.routes[path] = lambda h: reply(h, 200, page, {"Content-Type": "text/html; charset=utf-8"})
        yield server


@pytest.mark.parametrize(
    "command",
    [
        ("tasks",),
        ("info", "abc"),
        ("info", "abc", "--json"),
        ("logs", "abc"),
        ("logs", "abc", "-f"),
        ("cancel", "abc"),
        ("restart", "abc"),
        ("remove", "abc"),
        ("download", "abc", "DIR"),
        ("workers",),
        ("submit", "IMAGE"),
    ],
)
def test_a_web_server_that_is_no_nodeodm_gets_one_clear_line(
    web_page: LocalServer, tmp_path: Path, command: tuple[str, ...]
) -> None:
    image = make_images(tmp_path, count=1)[0]
    argv = [{"DIR": str(tmp_path / "out"), "IMAGE": image}.get(a, a) for a in command]
    # host:port without a scheme, as NodeODM's users type it
    result = odm(*argv, "--url", f"127.0.0.1:{web_page.port}")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and result.stdout == "", result
    assert "NodeODM API" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out" / "all.zip").exists()


def test_logs_follow_on_a_node_that_cannot_be_reached_fails_at_once() -> None:
    started = time.monotonic()
    result = odm("logs", "abc", "--follow", "--url", f"http://127.0.0.1:{free_port()}", timeout=30)
    assert result.returncode == 1 and "connection refused" in result.stderr, result
    assert time.monotonic() - started < 15, "no long wait for a node that was never there"


def test_credentials_in_the_node_url_are_used_and_never_shown() -> None:
    with local_server() as server:
        server.routes["/task/list"] = lambda h: (
            as_json([])(h) if "token=tok-99" in h.path and h.headers.get("Authorization") else reply(h, 401)  # type: ignore[operator]
        )
        # a URL copied from a browser, behind a proxy's basic auth: both are sent, neither is printed
        listed = odm("tasks", "--url", f"http://ops:pw-77@127.0.0.1:{server.port}/?token=tok-99")
        assert listed.returncode == 0 and listed.stdout.startswith("UUID"), listed
        refused = odm("tasks", "--url", f"http://ops:pw-77@127.0.0.1:{server.port}/?token=wrong-88")
        assert refused.returncode == 1 and "refused the request (wrong token)" in refused.stderr, refused
        assert f"http://ops:***@127.0.0.1:{server.port}" in refused.stderr
    gone = odm("tasks", "--url", f"http://ops:pw-77@127.0.0.1:{free_port()}/?token=tok-99")
    assert gone.returncode == 1 and "connection refused" in gone.stderr
    bad = odm("tasks", "--url", "http://ops:pw-77@127.0.0.1:99999/?token=tok-99")
    assert bad.returncode == 1 and "bad node URL" in bad.stderr
    for result in (listed, refused, gone, bad):
        assert (
            "pw-77" not in result.stderr and "tok-99" not in result.stderr and "wrong-88" not in result.stderr
        )


def test_workers_on_a_farm_in_trouble_is_not_called_no_farm() -> None:
    with local_server() as server:
        server.routes["/workers"] = as_json({"error": "Redis is unavailable"}, 503)
        result = odm("workers", "--url", server.url())
    assert result.returncode == 1 and "not an ODM Farm" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "503" in result.stderr


def test_a_destination_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    info = {
        "uuid": "abc",
        "name": "t",
        "dateCreated": 0,
        "processingTime": 1,
        "status": {"code": 40},
        "options": [],
        "imagesCount": 1,
        "progress": 100,
    }
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with local_server() as server:
        server.routes["/task/abc/info"] = as_json(info)
        result = odm("download", "abc", str(blocker / "results"), "--url", server.url())
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(blocker) in result.stderr, result.stderr


def test_two_images_with_one_name_are_refused_before_any_request(tmp_path: Path) -> None:
    first = make_images(tmp_path / "a", count=1)[0]
    second = make_images(tmp_path / "b", count=1)[0]
    with local_server() as server:
        result = odm("submit", first, second, "--url", server.url())
        assert (
            result.returncode == 1 and "have the same name: a node keeps one file per name" in result.stderr
        )
        assert server.received == []
