"""The simulate engine: runs the bundled ODM stand-in (simulate_odm.py) with ODM's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from workers.engines.base import Command, Engine, EngineInfo, odm_arguments

SIMULATE_VERSION = "3.5.0"  # the ODM version the stand-in pretends to be
SCRIPT_PATH = Path(__file__).resolve().parent / "simulate_odm.py"
OPTIONS_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "odm-options.json"


def load_options(path: Path = OPTIONS_PATH) -> list[dict[str, Any]]:
    """The option list the stand-in accepts: ODM's catalog with its own help texts."""
    with path.open(encoding="utf-8") as f:
        return json.load(f)


class SimulateEngine(Engine):
    name = "simulate"

    def __init__(
        self, seconds: float | None = None, progress_port: int = 6367, python: str = sys.executable
    ) -> None:
        self.seconds = seconds  # total run time; None keeps the script's default (5 s)
        self.progress_port = progress_port
        self.python = python

    def describe(self) -> EngineInfo:
        return EngineInfo(self.name, SIMULATE_VERSION, load_options())

    def command(
        self,
        options: list[dict[str, Any]],
        project_root: Path,
        project_name: str,
        input_flags: dict[str, Path],
    ) -> Command:
        env = {"ODM_NONINTERACTIVE": "1", "ODM_FARM_PROGRESS_PORT": str(self.progress_port)}
        if self.seconds is not None:
            env["ODM_FARM_SIMULATE_SECONDS"] = repr(float(self.seconds))
        argv = [
            self.python,
            str(SCRIPT_PATH),
            *odm_arguments(options, project_root, project_name, input_flags),
        ]
        return Command(argv=argv, env=env)
