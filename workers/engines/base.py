"""The engine interface: what a worker needs from ODM or its stand-in, and ODM's command-line rendering."""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Flags the node adds itself from uploaded files; a user can never set them through options.
INPUT_FLAGS = ("gcp", "geo", "align", "split-image-groups")


class EngineError(RuntimeError):
    """The engine cannot be described or started (missing install, broken Python, discovery failure)."""


@dataclass
class EngineInfo:
    name: str  # "odm" or "simulate"
    version: str  # e.g. "3.5.0"
    options: list[dict[str, Any]]  # the /options list: exactly name, type, value, domain, help
    # option name -> the stage a change of it reruns from (None: no stage); None: use the bundled table
    rerun_stages: dict[str, str | None] | None = None


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the worker's environment
    cwd: Path | None = None


def render_value(value: Any) -> str | None:
    """One option value as ODM's argparse expects it after `--name`; None means "no value" (a bare flag)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def render_options(options: list[dict[str, Any]]) -> list[str]:
    """`--name value` per option; bool true -> bare `--name`, bool false -> omitted. Never a shell string."""
    args: list[str] = []
    for opt in options:
        name, value = opt["name"], opt["value"]
        if name in INPUT_FLAGS or name == "project-path":
            continue
        if isinstance(value, bool):
            if value:
                args.append(f"--{name}")
            continue
        rendered = render_value(value) or ""
        if rendered.startswith("-"):
            # argparse reads "--x", "-y" and even "-1e-07" as another flag; the joined form keeps it a value
            args.append(f"--{name}={rendered}")
        else:
            args += [f"--{name}", rendered]
    return args


def odm_arguments(
    options: list[dict[str, Any]], project_root: Path, project_name: str, input_flags: dict[str, Path]
) -> list[str]:
    """Everything after run.sh: options, --project-path, the input-file flags, then the project name."""
    args = render_options(options)
    args += ["--project-path", str(project_root)]
    for flag in INPUT_FLAGS:
        if flag in input_flags:
            args += [f"--{flag}", str(input_flags[flag])]
    args.append(project_name)
    return args


class Engine(abc.ABC):
    name: str

    @abc.abstractmethod
    def describe(self) -> EngineInfo:
        """Engine name, version and option list; may be slow (reads the install), called once at start-up."""

    @abc.abstractmethod
    def command(
        self,
        options: list[dict[str, Any]],
        project_root: Path,
        project_name: str,
        input_flags: dict[str, Path],
    ) -> Command:
        """The command that processes <project_root>/<project_name>/ (images in its images/ folder)."""
