"""Helpers for end-to-end tests: image files, engine process lookups, waiting on task states."""

from __future__ import annotations

import glob
import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from tests.support.farm import Farm, wait_until


def make_images(folder: Path, count: int = 3, size: int = 20_000, prefix: str = "img") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i + 1}.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(size))
        paths.append(str(path))
    return paths


def slow_image(folder: Path, seconds: int = 60) -> str:
    """An image whose name tells the simulate engine to run this long."""
    path = folder / f"simulate-seconds-{seconds}.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    return str(path)


def failing_image(folder: Path, code: int) -> str:
    path = folder / f"simulate-exit-{code}.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    return str(path)


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def task_info(farm: Farm, uuid: str, api: int = 0, **params: Any) -> dict[str, Any]:
    return farm.get(f"/task/{uuid}/info", api=api, params=params).json()  # type: ignore[no-any-return]


def wait_status(farm: Farm, uuid: str, codes: tuple[int, ...], timeout: float = 60) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        seen.update(task_info(farm, uuid))
        return seen.get("status", {}).get("code") in codes

    wait_until(check, timeout, f"task {uuid} never reached {codes}: {seen}\n{farm.logs()}")
    return seen


def engine_pgids(farm: Farm, uuid: str) -> list[int]:
    """Process groups of engines running this task on any of the farm's workers (from their scratch folders)."""
    found = []
    for path in glob.glob(str(farm.root / "*" / "scratch" / f"{uuid}-*" / "engine.pgid")):
        try:
            found.append(int(Path(path).read_text().strip()))
        except (OSError, ValueError):
            continue
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group whose members are all zombies still "exists"; look for a live member
    for status in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(status).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_engine(farm: Farm, uuid: str, timeout: float = 30) -> int:
    wait_until(lambda: bool(engine_pgids(farm, uuid)), timeout, f"engine of {uuid} never started\n{farm.logs()}")
    return engine_pgids(farm, uuid)[0]


def elapsed(since: float) -> float:
    return time.monotonic() - since
