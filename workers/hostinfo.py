"""What a worker host advertises: name, cores, memory, free scratch disk, GPU presence."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil


def detect_gpu() -> bool:
    if any(Path("/dev").glob("nvidia[0-9]*")):
        return True
    nvidia_smi = shutil.which("nvidia-smi")
    if not nvidia_smi:
        return False
    try:
        result = subprocess.run([nvidia_smi, "-L"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and b"GPU" in result.stdout


def host_facts(scratch: Path) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    try:
        free_disk = shutil.disk_usage(scratch).free
    except OSError:
        free_disk = 0
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cpuCores": psutil.cpu_count(logical=True) or 1,
        "totalMemory": memory.total,
        "availableMemory": memory.available,
        "freeDisk": free_disk,
    }
