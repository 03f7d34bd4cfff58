"""Fixtures running the real farm: a redis-server, gunicorn API processes and Celery worker processes.

Fixtures::

    redis_server   (session)   RedisServer: a real redis-server on a free port, stopped by PID
    farm_factory   (function)  make_farm(**settings) -> Farm, every process stopped at the end
    farm           (module)    a Farm with a token, one API and one 2-slot simulate worker, local storage

Each Farm has its own Redis database, data folder, progress port and scratch folders, as separate hosts would.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from odm_farm.redis_server import free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"
DATABASES = 4096


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    # never reuse a database in one session: a module-scoped farm must not be flushed by a later test
    _dbs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh_db(self) -> int:
        db = next(self._dbs)
        if db >= DATABASES:
            raise RuntimeError(f"the test redis-server has only {DATABASES} databases; raise DATABASES")
        redis.Redis(port=self.port, db=db).flushdb()
        return db


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    port = free_port()
    proc = start_redis(tmp_path_factory.mktemp("redis"), port, persistent=False, databases=DATABASES)
    yield RedisServer(proc, port)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Farm:
    root: Path
    env: dict[str, str]
    apis: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["ODM_FARM_REDIS_URL"], decode_responses=True)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {"token": self.token, **extra} if self.token else extra

    def get(self, path: str, api: int = 0, **kwargs: Any) -> requests.Response:
        params = {**self.params(), **kwargs.pop("params", {})}
        return requests.get(self.urls()[api] + path, params=params, timeout=30, **kwargs)

    def post(self, path: str, api: int = 0, **kwargs: Any) -> requests.Response:
        params = {**self.params(), **kwargs.pop("params", {})}
        return requests.post(self.urls()[api] + path, params=params, timeout=60, **kwargs)

    def node(self, api: int = 0) -> Any:
        from pyodm import Node

        return Node("127.0.0.1", self.ports[api], token=self.token, timeout=30)

    def start_api(self, port: int | None = None, **env: str) -> Process:
        port = port or free_port()
        merged = {**self.env, "ODM_FARM_PORT": str(port), **env}
        proc = _spawn(["api"], merged, self.root / f"api-{port}.log")
        process = Process(f"api-{port}", proc.proc, proc.log)
        if port not in self.ports:
            self.ports.append(port)
        self.apis.append(process)
        _wait_until(lambda: _healthy(port), 30, f"API on {port} did not start:\n{process.tail()}")
        return process

    def start_worker(self, name: str | None = None, wait: bool = True, **env: str) -> Process:
        name = name or f"worker{len(self.workers) + 1}"
        scratch = self.root / name / "scratch"
        # a worker host of its own: its own data folder and scratch, nothing shared with the API but
        # Redis and the object store (with local storage, the store folder stands in for S3)
        merged = {**self.env, "ODM_FARM_WORKER_NAME": name, "ODM_FARM_SCRATCH_DIR": str(scratch),
                  "ODM_FARM_DATA_DIR": str(self.root / name / "data"), **env}
        proc = _spawn(["worker"], merged, self.root / f"{name}.log")
        self.workers.append(proc)
        if wait:
            _wait_until(lambda: self.worker_alive(name), 30, f"worker {name} did not start:\n{proc.tail()}")
        return proc

    def worker_alive(self, name: str) -> bool:
        return self.redis.zscore("odmfarm:workers:beat", name) is not None and any(
            w.get("name") == name for w in self.live_workers())

    def live_workers(self) -> list[dict[str, Any]]:
        import json

        ttl = float(self.env.get("ODM_FARM_WORKER_TTL", "30"))
        ids = self.redis.zrangebyscore("odmfarm:workers:beat", time.time() - ttl, "+inf")
        return [json.loads(v) for v in self.redis.hmget("odmfarm:workers", ids) if v] if ids else []

    def stop(self) -> None:
        for process in [*self.workers, *self.apis]:
            process.stop()

    def logs(self) -> str:
        return "\n\n".join(f"== {p.name} ==\n{p.tail()}" for p in [*self.apis, *self.workers])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen([sys.executable, "-m", "odm_farm.cli", *args], env=env, cwd=ROOT,
                            stdout=handle, stderr=subprocess.STDOUT)
    return Process(f"{args[0]}:{log.stem}", proc, log)


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _wait_until(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(message)


def wait_until(predicate: Any, timeout: float = 30, message: str = "condition not met") -> None:
    _wait_until(predicate, timeout, message)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def farm_env(root: Path, redis_url: str, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODM_FARM_")}
    env.update({
        "ODM_FARM_REDIS_URL": redis_url,
        "ODM_FARM_DATA_DIR": str(root / "data"),
        "ODM_FARM_STORAGE_DIR": str(root / "storage"),
        "ODM_FARM_SIMULATE_SECONDS": "0.5",
        "ODM_FARM_PROGRESS_PORT": str(free_udp_port()),
        "ODM_FARM_HEARTBEAT_SECONDS": "1",
        "ODM_FARM_WORKER_TTL": "5",
        "ODM_FARM_LEASE_SECONDS": "4",
        "ODM_FARM_WORKER_SLOTS": "2",
        "ODM_FARM_API_WORKERS": "2",
        "ODM_FARM_API_THREADS": "8",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"ODM_FARM_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def farm_factory(redis_server: RedisServer, tmp_path: Path) -> Iterator[Any]:
    farms: list[Farm] = []

    def make(apis: int = 1, workers: int = 1, token: str = TOKEN, env: dict[str, str] | None = None,
             **settings: Any) -> Farm:
        root = tmp_path / f"farm{len(farms)}"
        root.mkdir()
        variables = farm_env(root, redis_server.url(redis_server.fresh_db()), token=token, **settings)
        variables.update(env or {})
        farm = Farm(root, variables, token=token)
        farms.append(farm)
        for _ in range(apis):
            farm.start_api()
        for _ in range(workers):
            farm.start_worker()
        return farm

    yield make
    for farm in farms:
        farm.stop()


@contextmanager
def module_farm(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, name: str, **settings: Any
) -> Iterator[Farm]:
    """A Farm with a token, one API and one worker, on a fresh database, with `settings`; stopped at the end.
    For module-scoped fixtures of farms with their own settings."""
    root = tmp_path_factory.mktemp(name)
    env = farm_env(root, redis_server.url(redis_server.fresh_db()), token=TOKEN, **settings)
    farm = Farm(root, env, token=TOKEN)
    try:
        farm.start_api()
        farm.start_worker()
        yield farm
    finally:
        farm.stop()


@pytest.fixture(scope="module")
def farm(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with module_farm(redis_server, tmp_path_factory, "farm") as started:
        yield started
