"""The `odm` engine: an installed OpenDroneMap, described by loading its argparse config and run via run.sh."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from shared.options import cap_max_concurrency, convert_argparse_dump
from workers.engines.base import Command, Engine, EngineError, EngineInfo, odm_arguments
from workers.resume import table_from_odm

DISCOVER_SCRIPT = Path(__file__).with_name("odm_discover.py")
DISCOVER_TIMEOUT = 60.0
_STDERR_TAIL_CHARS = 2000


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _STDERR_TAIL_CHARS else "..." + text[-_STDERR_TAIL_CHARS:]


def _rerun_stages(stdout: str) -> dict[str, str | None] | None:
    """ODM's option -> rerun stage table from the discovery output, when the install has one."""
    for line in reversed(stdout.splitlines()):
        if line.startswith('{"rerunStages"'):
            try:
                return table_from_odm(json.loads(line)["rerunStages"])
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def _last_json_object(stdout: str) -> dict[str, Any] | None:
    # ODM may print its own lines (even at exit); the dump is the last line that is a JSON object
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return None


class OdmEngine(Engine):
    name = "odm"

    def __init__(
        self,
        odm_path: Path | str,
        python: str | None = None,
        max_concurrency: int | None = None,
        gpu: bool = False,
        discover_timeout: float = DISCOVER_TIMEOUT,
    ) -> None:
        self.odm_path = Path(odm_path).absolute()
        self.python = python or None
        self.max_concurrency = max_concurrency
        self.gpu = gpu
        self.discover_timeout = discover_timeout
        self._options: list[dict[str, Any]] | None = None
        self._rerun_stages: dict[str, str | None] | None = None

    # --- describing ----------------------------------------------------------------------
    def python_executable(self) -> str:
        """ODM's Python: the configured one, else the install's venv, else python3 on PATH."""
        if self.python:
            return self.python
        venv_python = self.odm_path / "venv" / "bin" / "python"
        return str(venv_python) if venv_python.exists() else "python3"

    def version(self) -> str:
        try:
            return (self.odm_path / "VERSION").read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return "unknown"

    def describe(self) -> EngineInfo:
        self._options = self.discover_options()
        return EngineInfo(
            name=self.name, version=self.version(), options=self._options, rerun_stages=self._rerun_stages
        )

    @property
    def options(self) -> list[dict[str, Any]]:
        """The discovered catalog (discovered on first use when describe() has not run yet)."""
        if self._options is None:
            self._options = self.discover_options()
        return self._options

    def discover_options(self) -> list[dict[str, Any]]:
        """Run ODM's config() under a recording argparse parser and convert what it declared."""
        if not (self.odm_path / "run.sh").is_file():
            raise EngineError(f"No ODM installation at {self.odm_path} (run.sh not found)")
        python = self.python_executable()
        env = dict(os.environ)
        # what run.sh exports, so ODM's imports find the SuperBuild libraries as they do when it runs
        libs = str(self.odm_path / "SuperBuild" / "install" / "lib")
        env["LD_LIBRARY_PATH"] = f"{env['LD_LIBRARY_PATH']}:{libs}" if env.get("LD_LIBRARY_PATH") else libs
        env["ODM_NONINTERACTIVE"] = "1"
        with tempfile.TemporaryDirectory(prefix="odm-discover-") as project_path:
            argv = [python, str(DISCOVER_SCRIPT), str(self.odm_path), project_path]
            stdout, stderr, code = self._run(argv, env)
        dump = _last_json_object(stdout) if code == 0 else None
        if dump is None:
            raise EngineError(
                f"Could not read ODM's options with {python} (exit code {code}): "
                f"{_tail(stderr) or _tail(stdout) or 'no output'}"
            )
        self._rerun_stages = _rerun_stages(stdout)
        options = convert_argparse_dump(dump)
        if not options:
            raise EngineError(f"ODM at {self.odm_path} declared no usable option")
        return options

    def _run(self, argv: list[str], env: dict[str, str]) -> tuple[str, str, int]:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.odm_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineError(f"Could not run {argv[0]} to read ODM's options: {exc}") from None
        try:
            stdout, stderr = proc.communicate(timeout=self.discover_timeout)
        except subprocess.TimeoutExpired:
            # its own session: whatever ODM's imports started goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            raise EngineError(
                f"Reading ODM's options timed out after {self.discover_timeout:g} s: "
                f"{_tail(stderr) or 'no output'}"
            ) from None
        return stdout, stderr, proc.returncode

    # --- running -------------------------------------------------------------------------
    def command(
        self,
        options: list[dict[str, Any]],
        project_root: Path,
        project_name: str,
        input_flags: dict[str, Path],
    ) -> Command:
        known = {entry["name"] for entry in self.options}
        options = cap_max_concurrency(options, self.max_concurrency, known)
        # ODM uses a GPU whenever it finds one; a CPU worker says so explicitly unless the user already did
        if not self.gpu and "no-gpu" in known and not any(o["name"] == "no-gpu" for o in options):
            options.append({"name": "no-gpu", "value": True})
        argv = [
            str(self.odm_path / "run.sh"),
            *odm_arguments(options, project_root, project_name, input_flags),
        ]
        return Command(argv=argv, env={"ODM_NONINTERACTIVE": "1"}, cwd=self.odm_path)
