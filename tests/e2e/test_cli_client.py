"""The `odm-farm` NodeODM client, run as a real subprocess against a live farm (and a stub serving a real ODM catalog)."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from odm_farm.redis_server import free_port
from tests.e2e.helpers import make_images, slow_image, task_info, wait_status
from tests.support.farm import Farm, wait_until

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "tests" / "data" / "odm-options-catalog.json"


def client_env(farm: Farm | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    if farm is not None:
        env.update({"ODM_FARM_URL": farm.url, "ODM_FARM_TOKEN": farm.token})
    env.update(extra)
    return env


def odm(*args: str, farm: Farm | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "odm_farm.cli", *args], env=client_env(farm, **env), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def start(*args: str, farm: Farm, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "odm_farm.cli", *args], env=client_env(farm), cwd=ROOT,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def clean(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def submit_slow(farm: Farm, tmp_path: Path, seconds: int) -> str:
    result = odm("submit", slow_image(tmp_path, seconds), farm=farm)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_submit_wait_download_extracts_the_results(farm: Farm, tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", 2)
    out = tmp_path / "results"
    result = odm("submit", *images, "--option", "dsm=true", "--option", "orthophoto-resolution=2.5",
                 "--name", "from the shell", "--wait", "--download", str(out), farm=farm)
    assert result.returncode == 0, result.stderr
    clean(result)
    uuid = result.stdout.strip()
    info = task_info(farm, uuid)
    assert info["status"]["code"] == 40 and info["name"] == "from the shell" and info["imagesCount"] == 2
    chosen = {o["name"]: o["value"] for o in info["options"]}
    assert chosen["dsm"] is True and chosen["orthophoto-resolution"] == 2.5
    extracted = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    archive = farm.get(f"/task/{uuid}/download/all.zip")
    import io
    import zipfile

    expected = sorted(n for n in zipfile.ZipFile(io.BytesIO(archive.content)).namelist() if not n.endswith("/"))
    assert extracted == expected and expected, (extracted, expected)
    assert not list(out.glob(".download-*")), "the temporary archive folder is removed"
    shown = odm("info", uuid, farm=farm).stdout
    assert "dsm=true" in shown and "orthophoto-resolution=2.5" in shown and "name        from the shell" in shown
    assert "Uploading" in result.stderr and "Completed" in result.stderr and "Downloading all.zip" in result.stderr
    # the transfer bars count bytes: 2 images of 20,004 bytes, and the archive's size
    assert re.search(r"Uploading 2 files .*100%.* 40\.0/40\.0 kB", result.stderr), result.stderr
    size = len(archive.content) / 1000
    assert re.search(rf"Downloading all\.zip .*100%.* {size:.1f}/{size:.1f} kB", result.stderr), result.stderr
    running = submit_slow(farm, tmp_path, 30)
    early = odm("download", running, str(tmp_path / "early"), farm=farm)
    assert early.returncode == 1 and "only a COMPLETED task has results to download" in early.stderr
    assert not (tmp_path / "early").exists()
    odm("cancel", running, farm=farm)  # frees the farm's slot for the next tests


def test_logs_follow_prints_every_line_once_and_ends_with_the_task(farm: Farm, tmp_path: Path) -> None:
    uuid = submit_slow(farm, tmp_path, 3)
    result = odm("logs", uuid, "--follow", "--interval", "0.2", farm=farm)
    assert result.returncode == 0, result.stderr
    clean(result)
    assert task_info(farm, uuid)["status"]["code"] == 40, "logs --follow returned only when the task ended"
    console = farm.get(f"/task/{uuid}/output").json()
    assert len(console) > 2
    assert result.stdout.splitlines() == console
    again = odm("logs", uuid, farm=farm)
    assert again.stdout.splitlines() == console


def test_cancel_restart_remove_tasks_info_and_workers(farm: Farm, tmp_path: Path) -> None:
    uuid = submit_slow(farm, tmp_path, 60)
    wait_status(farm, uuid, (20,))
    result = odm("cancel", uuid, farm=farm)
    assert result.returncode == 0, result.stderr
    wait_status(farm, uuid, (50,), timeout=30)

    listing = odm("tasks", farm=farm)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith(uuid))
    assert "CANCELED" in row
    shown = odm("info", uuid, farm=farm)
    assert shown.returncode == 0 and "CANCELED (50)" in shown.stdout and "images      1" in shown.stdout
    raw = json.loads(odm("info", uuid, "--json", farm=farm).stdout)
    assert raw["uuid"] == uuid and raw["status"]["code"] == 50

    workers = odm("workers", farm=farm)
    assert workers.returncode == 0, workers.stderr
    assert any(line.startswith("worker1 ") and "simulate" in line for line in workers.stdout.splitlines()), workers.stdout

    refused = odm("restart", uuid, "-o", "min-num-features=lots", farm=farm)
    assert refused.returncode == 1 and "--option min-num-features: Invalid value lots" in refused.stderr
    assert task_info(farm, uuid)["status"]["code"] == 50, "a refused restart changes nothing"
    restarted = odm("restart", uuid, "-o", "dsm", farm=farm)
    assert restarted.returncode == 0, restarted.stderr
    info = task_info(farm, uuid)
    assert info["status"]["code"] in (10, 20) and {"name": "dsm", "value": True} in info["options"]
    odm("cancel", uuid, farm=farm)
    wait_status(farm, uuid, (50,), timeout=30)

    removed = odm("remove", uuid, farm=farm)
    assert removed.returncode == 0, removed.stderr
    assert uuid not in odm("tasks", farm=farm).stdout
    gone = odm("info", uuid, farm=farm)
    assert gone.returncode == 1 and "answered:" in gone.stderr
    clean(gone)


def test_wrong_token_and_refused_connection_give_one_clear_line(farm: Farm) -> None:
    result = odm("tasks", farm=farm, ODM_FARM_TOKEN="not-the-token")
    assert result.returncode == 1
    clean(result)
    assert "refused the request (wrong token)" in result.stderr and "not-the-token" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = odm("tasks", farm=farm, ODM_FARM_TOKEN="")
    assert result.returncode == 1 and "(this node needs a token): set --token or ODM_FARM_TOKEN" in result.stderr

    port = free_port()
    for command in (("tasks",), ("workers",), ("info", "x"), ("submit", __file__)):
        result = odm(*command, "--url", f"http://127.0.0.1:{port}", "--token", "s3cret")
        assert result.returncode == 1, result
        clean(result)
        assert f"cannot reach the node at http://127.0.0.1:{port}: connection refused" in result.stderr
        assert "s3cret" not in result.stderr

    result = odm("tasks", "--url", "ftp:/nowhere")
    assert result.returncode == 1 and "bad node URL" in result.stderr
    clean(result)


def test_a_reader_that_goes_away_gets_no_traceback(farm: Farm, tmp_path: Path) -> None:
    # like `odm-farm tasks | head -0`: the reading end closes before the client writes
    for command in (("tasks",), ("logs", submit_slow(farm, tmp_path, 0))):
        proc = start(*command, farm=farm)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(30)
        assert "Traceback" not in stderr and "Exception ignored" not in stderr and "Broken pipe" not in stderr, stderr
        assert proc.returncode != 0
    # and through a shell pipe, as a user types it
    result = subprocess.run(f"{sys.executable} -m odm_farm.cli tasks | head -1", shell=True, env=client_env(farm),
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.startswith("UUID") and len(result.stdout.splitlines()) == 1
    clean(result)


def test_bad_options_are_refused_before_any_upload(farm: Farm, tmp_path: Path) -> None:
    images = make_images(tmp_path, 1)
    before = len(farm.get("/task/list").json())
    result = odm("submit", *images, "--option", "dsm=maybe", "--option", "pc-qualty=high", farm=farm)
    assert result.returncode == 1
    clean(result)
    assert "--option dsm: Invalid value maybe (cannot convert to bool)" in result.stderr
    assert "--option pc-qualty: this node has no such option (did you mean pc-quality?)" in result.stderr
    assert len(farm.get("/task/list").json()) == before, "nothing was created"


class _CatalogStub(http.server.BaseHTTPRequestHandler):
    """A node that answers /options with a real ODM catalog and records every other request.

    With `hang_uploads` set it accepts /task/new/init and holds every upload until `release` is set.
    """

    requests: list[tuple[str, str]] = []
    hang_uploads = False
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0] == "/options":
            self._send(CATALOG.read_bytes())
        elif self.path.split("?")[0] == "/info":  # PyODM asks for the version before it creates a task
            self._send(json.dumps({"version": "2.2.4", "engine": "odm"}).encode())
        else:  # as NodeODM (Express) answers a route it does not have
            self._send(b"Cannot GET", status=404, content_type="text/html")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append((self.path, body.decode("utf-8", "replace")))
        if self.hang_uploads and self.path.startswith("/task/new/init"):
            self._send(json.dumps({"uuid": "00000000-0000-4000-8000-000000000000"}).encode())
            return
        if self.hang_uploads:
            self.release.wait(60)
        self._send(json.dumps({"error": "stub: stops after init"}).encode())

    def _send(self, body: bytes, status: int = 200, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that left mid-request (the Ctrl-C test) is expected


@pytest.fixture
def catalog_node() -> Iterator[str]:
    _CatalogStub.requests = []
    _CatalogStub.hang_uploads = False
    _CatalogStub.release = threading.Event()
    server = _QuietServer(("127.0.0.1", 0), _CatalogStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _CatalogStub.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("option", "message"), [
    ("feature-quality=best", "--option feature-quality: Invalid value best (not in enum); expected enum in ['ultra'"),
    ("max-concurrency=-2", "--option max-concurrency: Invalid value -2 (out of domain: positive integer)"),
    ("min-num-features=many", "--option min-num-features: Invalid value many (cannot convert to int)"),
    ("orthophoto-resolution=0", "--option orthophoto-resolution: Invalid value 0 (out of domain: float > 0.0)"),
    ("dsm=perhaps", "--option dsm: Invalid value perhaps (cannot convert to bool)"),
    ("no-such-option=1", "--option no-such-option: this node has no such option"),
    ("=1", "bad --option '=1': expected name=value"),
])
def test_options_checked_against_a_real_odm_catalog(catalog_node: str, tmp_path: Path, option: str,
                                                    message: str) -> None:
    """Served over HTTP from a stub of /options holding tests/data/odm-options-catalog.json (ODM's real catalog)."""
    images = make_images(tmp_path, 1)
    result = odm("submit", *images, "--url", catalog_node, "--option", option)
    assert result.returncode == 1
    clean(result)
    assert message in result.stderr
    assert _CatalogStub.requests == [], "nothing was sent after a bad option"


def test_valid_options_of_a_real_odm_catalog_are_sent_typed(catalog_node: str, tmp_path: Path) -> None:
    images = make_images(tmp_path, 1)
    result = odm("submit", *images, "--url", catalog_node, "-o", "feature-quality=ultra", "-o", "dsm",
                 "-o", "max-concurrency=8", "-o", "orthophoto-resolution=1.5", "-o", "crop=0")
    assert result.returncode == 1 and "stub: stops after init" in result.stderr  # validation passed, init sent
    clean(result)
    [(path, body)] = _CatalogStub.requests
    assert path.startswith("/task/new/init")
    sent = json.loads(body.split('name="options"')[1].split("\r\n\r\n", 1)[1].split("\r\n--")[0])
    assert {o["name"]: o["value"] for o in sent} == {
        "feature-quality": "ultra", "dsm": True, "max-concurrency": 8, "orthophoto-resolution": 1.5, "crop": 0.0}


def _interrupt_wait(farm: Farm, tmp_path: Path, answer: str | None) -> tuple[str, subprocess.Popen[str], str]:
    proc = start("submit", slow_image(tmp_path, 60), "--wait", farm=farm,
                 stdin=subprocess.PIPE if answer is not None else subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    uuid = proc.stdout.readline().strip()
    assert uuid, proc.stderr.read()
    wait_status(farm, uuid, (20,))
    time.sleep(0.3)  # the client is in its wait loop
    proc.send_signal(signal.SIGINT)
    if answer is not None:
        assert proc.stdin is not None
        proc.stdin.write(answer + "\n")
        proc.stdin.flush()
    stderr = proc.stderr.read()
    proc.wait(30)
    return uuid, proc, stderr


def test_ctrl_c_during_submit_wait_asks_and_cancels_on_yes(farm: Farm, tmp_path: Path) -> None:
    uuid, proc, stderr = _interrupt_wait(farm, tmp_path, "y")
    assert f"Cancel task {uuid} on the node? [y/N]" in stderr and f"task {uuid} canceled" in stderr
    assert proc.returncode == 130 and "Traceback" not in stderr
    wait_status(farm, uuid, (50,), timeout=30)


def test_ctrl_c_without_an_answer_leaves_the_task_running(farm: Farm, tmp_path: Path) -> None:
    uuid, proc, stderr = _interrupt_wait(farm, tmp_path, None)
    assert f"keeps running; cancel it with: odm-farm cancel {uuid}" in stderr, stderr
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert task_info(farm, uuid)["status"]["code"] == 20
    odm("cancel", uuid, farm=farm)
    wait_until(lambda: task_info(farm, uuid)["status"]["code"] == 50, 30)


def test_version_and_settings_in_effect(tmp_path: Path) -> None:
    version = odm("--version")
    assert version.returncode == 0 and version.stdout.startswith("odm-farm 0.")
    shown = odm("settings", "--port", "4567", ODM_FARM_TOKEN="hunter2", ODM_FARM_URL="http://farm:3000",
                ODM_FARM_REDIS_URL="redis://:pw@redis:6379/0")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in shown.stdout.splitlines()}
    assert "4567 (set)" in rows["ODM_FARM_PORT"] and "3000" in rows["ODM_FARM_PORT"]
    assert "*** (set)" in rows["ODM_FARM_TOKEN"] and "hunter2" not in shown.stdout
    assert "pw" not in rows["ODM_FARM_REDIS_URL"]
    assert "ODM_FARM_URL" not in shown.stderr, "the client's URL variable is no unknown setting"
    helped = odm("worker", "--help")
    assert "settings: worker" in helped.stdout and "default: 1]" in helped.stdout


def test_workers_on_a_plain_nodeodm_says_it_is_no_farm(catalog_node: str) -> None:
    result = odm("workers", "--url", catalog_node)
    assert result.returncode == 1 and "has no /workers: it is not an ODM Farm" in result.stderr
    clean(result)


def test_ctrl_c_during_the_upload_exits_at_once(catalog_node: str, tmp_path: Path) -> None:
    _CatalogStub.hang_uploads = True
    proc = subprocess.Popen([sys.executable, "-m", "odm_farm.cli", "submit", *make_images(tmp_path, 3), "--wait",
                             "--url", catalog_node], env=client_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any(p.startswith("/task/new/upload") for p, _ in _CatalogStub.requests), 30)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)  # PyODM's upload threads would otherwise keep it alive for ever
    finally:
        _CatalogStub.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.returncode == 130 and "upload interrupted: no task was started" in stderr, stderr
    assert "Traceback" not in stderr


def test_submit_wait_and_logs_follow_ride_out_an_api_restart(farm: Farm, tmp_path: Path) -> None:
    uuid = submit_slow(farm, tmp_path, 4)
    waiting = start("submit", *make_images(tmp_path / "more", 1), "--wait", "--interval", "0.2", farm=farm)
    following = start("logs", uuid, "--follow", "--interval", "0.2", farm=farm)
    assert waiting.stdout is not None and following.stdout is not None
    created = waiting.stdout.readline().strip()  # uploaded: the client is waiting now
    assert created
    first = following.stdout.readline()  # following: it reached the node (a node never reached is an error)
    wait_until(lambda: task_info(farm, uuid)["status"]["code"] == 20, 10)
    farm.apis[0].stop()
    time.sleep(2)  # both clients find the API gone meanwhile
    farm.start_api(port=farm.ports[0])
    out = first + following.stdout.read()  # not communicate(): it would skip what readline() buffered
    assert following.stderr is not None
    err = following.stderr.read()
    following.wait(60)
    assert following.returncode == 0, err
    assert out.splitlines() == farm.get(f"/task/{uuid}/output").json(), "every line once, across the restart"
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and f"task {created} completed" in err, err
