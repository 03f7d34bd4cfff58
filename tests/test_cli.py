"""The `odm-farm` command: `up` runs the whole farm and stops it cleanly; roles fail early with clear messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from odm_farm.redis_server import free_port
from tests.support.farm import free_udp_port

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    return subprocess.run([sys.executable, "-m", "odm_farm.cli", *args], env={**base, **(env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_up_runs_redis_api_and_worker_and_stops_them_all(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    env.update({"ODM_FARM_PORT": str(port), "ODM_FARM_SIMULATE_SECONDS": "0",
                "ODM_FARM_PROGRESS_PORT": str(free_udp_port()), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "odm_farm.cli", "up"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "ODM Farm is running at" in line or proc.poll() is not None:
                break
        assert f"http://127.0.0.1:{port}" in lines[-1], "".join(lines)
        children = psutil.Process(proc.pid).children(recursive=True)
        info = requests.get(f"http://127.0.0.1:{port}/info", timeout=5).json()
        assert info["engine"] == "simulate" and info["maxParallelTasks"] == 1
        assert (tmp_path / "data" / "redis").is_dir(), "the embedded Redis keeps its data under ./data"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(40)
    assert proc.returncode == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


def test_roles_refuse_to_start_without_redis() -> None:
    result = run_cli("api", env={"ODM_FARM_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"})
    assert result.returncode == 1
    assert "cannot reach Redis at ODM_FARM_REDIS_URL" in result.stderr and "hunter2" not in result.stderr
    result = run_cli("worker")
    assert result.returncode == 1 and "ODM_FARM_REDIS_URL is required" in result.stderr


def test_unusable_object_store_is_named(redis_server) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("worker", env={"ODM_FARM_REDIS_URL": redis_server.url(), "ODM_FARM_STORAGE": "s3",
                                    "ODM_FARM_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                                    "ODM_FARM_S3_ACCESS_KEY": "a", "ODM_FARM_S3_SECRET_KEY": "b"})
    assert result.returncode == 1
    assert "object store unusable (ODM_FARM_STORAGE=s3)" in result.stderr


def test_bad_setting_names_the_variable() -> None:
    result = run_cli("api", env={"ODM_FARM_WORKER_SLOTS": "lots"})
    assert result.returncode == 1
    assert "ODM_FARM_WORKER_SLOTS" in result.stderr


def test_settings_lists_every_variable() -> None:
    result = run_cli("settings")
    assert result.returncode == 0
    for name in ("ODM_FARM_HOST", "ODM_FARM_REDIS_URL", "ODM_FARM_S3_BUCKET", "ODM_FARM_PUBLIC_URL"):
        assert name in result.stdout


def test_worker_with_a_broken_odm_install_says_so(redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("worker", env={"ODM_FARM_REDIS_URL": redis_server.url(), "ODM_FARM_ODM_PATH": str(tmp_path),
                                    "ODM_FARM_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 1
    assert "odm-farm worker: cannot start:" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_worker_with_a_setting_that_breaks_the_farm_exits_at_once_naming_it(redis_server) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = run_cli("worker", env={"ODM_FARM_REDIS_URL": redis_server.url(), "ODM_FARM_LEASE_SECONDS": "0"},
                     timeout=30)
    assert result.returncode != 0 and time.monotonic() - started < 15
    assert "ODM_FARM_LEASE_SECONDS" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("worker", env={"ODM_FARM_REDIS_URL": redis_server.url(),
                                    "ODM_FARM_BLOCKED_NETWORKS": "10.0.0.0/8,intranet"}, timeout=30)
    assert result.returncode != 0 and "ODM_FARM_BLOCKED_NETWORKS" in result.stderr and "intranet" in result.stderr


def test_a_misspelled_variable_is_warned_about_with_a_suggestion() -> None:
    # the typo is reported even though the run then stops for another reason (no Redis)
    for role in ("api", "worker"):
        result = run_cli(role, env={"ODM_FARM_WORKER_SLOT": "4"})
        assert "ODM_FARM_WORKER_SLOT is not a setting" in result.stderr, result.stderr
        assert "did you mean ODM_FARM_WORKER_SLOTS?" in result.stderr


class Up:
    """`odm-farm up` in a process group of its own (as a terminal would run it), its output in a file."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / f"up-{time.monotonic_ns()}.log"
        handle = open(self.log, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "odm_farm.cli", "up"], cwd=ROOT, env=env,
                                     stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "ODM Farm is running at" not in self.output():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.2)

    def redis_url(self) -> str:
        import re

        found = re.search(r"Redis on 127\.0\.0\.1:(\d+)", self.output())
        assert found, self.output()
        return f"redis://127.0.0.1:{found.group(1)}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(10)


def up_env(data: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    env.update({"ODM_FARM_PORT": str(port), "ODM_FARM_DATA_DIR": str(data), "ODM_FARM_SIMULATE_SECONDS": "60",
                "ODM_FARM_PROGRESS_PORT": str(free_udp_port()), "PYTHONUNBUFFERED": "1", **extra})
    return env


def test_ctrl_c_on_up_stops_everything_in_order_within_10s_and_keeps_the_task(tmp_path: Path) -> None:
    import redis
    from pyodm import Node

    from shared.taskstore import Keys
    from tests.e2e.helpers import make_images

    port = free_port()
    env = up_env(tmp_path / "data", port)
    first = Up(tmp_path, env)
    try:
        first.wait_ready()
        node = Node("127.0.0.1", port, timeout=30)
        task = node.create_task(make_images(tmp_path / "images"))
        deadline = time.monotonic() + 30
        while True:
            engines = [p for p in psutil.Process(first.proc.pid).children(recursive=True)
                       if "simulate_odm" in " ".join(p.cmdline())]
            if engines and task.info().status.value == 20:
                break
            assert time.monotonic() < deadline, "the task never started running"
            time.sleep(0.2)
        attempt = redis.Redis.from_url(first.redis_url()).hget(Keys.task(task.uuid), "attempt")
        descendants = psutil.Process(first.proc.pid).children(recursive=True)
        assert len(descendants) >= 4, [p.cmdline() for p in descendants]  # redis, worker, api, engine

        started = time.monotonic()
        os.kill(first.proc.pid, signal.SIGINT)  # to `up` alone: its children are not in its group
        first.proc.wait(40)
        took = time.monotonic() - started
        print(f"odm-farm up stopped in {took:.1f} s with a running task")
        assert took < 10, first.output()
        assert first.proc.returncode == 0, first.output()
        _, alive = psutil.wait_procs(descendants, timeout=1)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}\n{first.output()}"
    finally:
        first.kill()

    second = Up(tmp_path, env)
    try:
        second.wait_ready()
        status = Node("127.0.0.1", port, timeout=30).get_task(task.uuid).info().status.value
        assert status in (10, 20), "the task is still there, waiting or running again"
        again = redis.Redis.from_url(second.redis_url()).hget(Keys.task(task.uuid), "attempt")
        assert again == attempt, "a shutdown hand-over is not a lost attempt"
    finally:
        os.kill(second.proc.pid, signal.SIGINT)
        try:
            second.proc.wait(20)
        finally:
            second.kill()


def test_up_on_a_taken_port_fails_at_once_naming_the_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        up = Up(tmp_path, up_env(tmp_path / "data", port, ODM_FARM_SIMULATE_SECOND="1"))
        try:
            up.proc.wait(20)
        finally:
            up.kill()
        assert up.proc.returncode != 0
        assert time.monotonic() - started < 5, up.output()
        assert f"port {port}" in up.output() and "ODM_FARM_PORT" in up.output(), up.output()
        assert "did you mean ODM_FARM_SIMULATE_SECONDS?" in up.output(), "up warns about typos too"
        result = run_cli("api", env={"ODM_FARM_PORT": str(port), "ODM_FARM_REDIS_URL": "redis://127.0.0.1:1/0"},
                         timeout=20)
        assert result.returncode != 0 and f"port {port}" in result.stderr and "ODM_FARM_PORT" in result.stderr
