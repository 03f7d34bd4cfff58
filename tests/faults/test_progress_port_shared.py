"""Another program on the host listens on ODM's progress port too (SO_REUSEPORT) and gets every datagram:
progress still rises during the run, from the stage lines of the engine's console."""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.helpers import make_images
from workers.progress import ENGINE_SHARE

SO_ATTACH_REUSEPORT_CBPF = 51
BPF_RET_K = 0x06


class Swallower:
    """A second socket on the port; a classic BPF program steers every datagram of the group to it (index 1:
    the worker bound first), so the test does not depend on how the kernel would have hashed the sender."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind(("127.0.0.1", port))
        program = ctypes.create_string_buffer(struct.pack("HBBI", BPF_RET_K, 0, 0, 1))  # "return 1"
        self._program = program  # kept alive while attached
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                             struct.pack("HxxxxxxQ", 1, ctypes.addressof(program)))
        self.sock.settimeout(0.2)
        self.received = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.recvfrom(1024)
                self.received += 1
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_progress_rises_when_another_listener_takes_the_datagrams(farm_factory: Any, tmp_path: Path) -> None:
    farm = farm_factory(simulate_seconds=6)
    swallower = Swallower(int(farm.env["ODM_FARM_PROGRESS_PORT"]))
    try:
        task = farm.node().create_task(make_images(tmp_path / "in", 2))
        seen: list[float] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = farm.get(f"/task/{task.uuid}/info").json()
            if info["status"]["code"] != 20:
                break
            seen.append(info["progress"])
            time.sleep(0.2)
        assert swallower.received > 0, "the other listener got the datagrams"
        during_run = [p for p in seen if p < 93]  # 93 and up: the farm's own steps after the engine
        assert during_run and max(during_run) >= 50 * ENGINE_SHARE, seen
    finally:
        swallower.close()
