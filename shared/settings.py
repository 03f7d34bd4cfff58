"""Settings: one typed object built from ODM_FARM_* variables (or any mapping), never read at import."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.safety import redact_text

PREFIX = "ODM_FARM_"
# ODM_FARM_* variables that are not settings but are read elsewhere (the simulate engine's test controls,
# the node URL of the `odm-farm submit/tasks/...` client, odm_farm/client.py)
OTHER_VARIABLES = frozenset(
    {"ODM_FARM_SIMULATE_EXIT", "ODM_FARM_SIMULATE_CACHE", "ODM_FARM_SIMULATE_STAGE_MB", "ODM_FARM_URL"}
)


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _optional_int(value: str) -> int | None:
    value = value.strip()
    if value in ("", "0", "none", "null", "unlimited"):
        return None
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _choice(*allowed: str):
    def cast(value: str) -> str:
        value = value.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return cast


_DEFAULT_BLOCKED = (
    "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
    "fe80::/10",
    "100.100.100.200/32",  # Alibaba metadata
    "fd00:ec2::254/128",
    "0.0.0.0/32",
)


def _setting(default: Any, cast: Any = str, secret: bool = False, help: str = "") -> Any:
    return field(default=default, metadata={"cast": cast, "secret": secret, "help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", help="address the API listens on")
    port: int = _setting(3000, int, help="port the API listens on")
    data_dir: Path = _setting(
        Path("data"), Path, help="folder for the embedded Redis, local storage and scratch"
    )
    redis_url: str = _setting("", help="Redis URL; empty = odm-farm up starts its own")
    token: str = _setting("", secret=True, help="token clients must pass as ?token=; empty = no auth")
    max_images: int | None = _setting(None, _optional_int, help="images per task; empty/0 = unlimited")
    worker_slots: int = _setting(1, _positive_int, help="tasks one worker runs at once")
    engine: str = _setting(
        "", _choice("", "simulate", "odm"), help="simulate or odm (default: odm when an ODM path is set)"
    )
    odm_path: str = _setting("", help="ODM install folder (holds run.sh); selects the odm engine")
    odm_python: str = _setting(
        "", help="python used to read ODM's options (default: ODM's venv, else python3)"
    )
    simulate_seconds: float = _setting(5.0, _non_negative_float, help="how long a simulated run takes")
    storage: str = _setting("local", _choice("local", "s3"), help="object store: local or s3")
    storage_dir: Path | None = _setting(
        None, Path, help="local object store folder (default <data_dir>/storage)"
    )
    s3_endpoint: str = _setting("", help="S3 endpoint URL (empty = AWS)")
    s3_region: str = _setting("us-east-1", help="S3 region")
    s3_bucket: str = _setting("odm-farm", help="S3 bucket")
    s3_prefix: str = _setting("tasks", help="key prefix inside the bucket")
    s3_access_key: str = _setting("", secret=True, help="S3 access key (default: the usual AWS variables)")
    s3_secret_key: str = _setting("", secret=True, help="S3 secret key")
    s3_acl: str = _setting("", help="canned ACL for stored objects (empty = bucket default)")
    s3_create_bucket: bool = _setting(False, _bool, help="create the bucket at start-up when missing")
    download_redirect: bool = _setting(False, _bool, help="answer downloads with 302 to a presigned URL (S3)")
    scratch_dir: Path | None = _setting(None, Path, help="worker scratch folder (default <data_dir>/scratch)")
    keep_failed_scratch: bool = _setting(False, _bool, help="keep a failed task's scratch folder")
    worker_queues: tuple[str, ...] = _setting(
        (), _csv, help="queues a worker serves: cpu, gpu (default by GPU)"
    )
    worker_gpu: bool | None = _setting(None, _bool, help="override GPU detection")
    worker_name: str = _setting("", help="worker name (default host name + pid)")
    public_url: str = _setting("", help="URL at which ODM's split-merge client reaches the farm")
    max_concurrency: int | None = _setting(None, _optional_int, help="cap on ODM's max-concurrency per task")
    max_runtime: float = _setting(
        0.0, _non_negative_float, help="seconds after which a run is cancelled; 0 = never"
    )
    progress_port: int = _setting(6367, int, help="UDP port for ODM progress datagrams")
    heartbeat_seconds: float = _setting(10.0, _non_negative_float, help="worker heartbeat interval")
    worker_ttl: float = _setting(30.0, _non_negative_float, help="a worker not heard from this long is gone")
    lease_seconds: float = _setting(
        30.0, _non_negative_float, help="a running task's lease; renewed by its worker"
    )
    max_attempts: int = _setting(3, _positive_int, help="runs of one task before it fails for lost workers")
    webhook: str = _setting("", help="node-wide webhook called when any task ends")
    webhook_retries: int = _setting(5, int, help="webhook attempts")
    cleanup_minutes: int = _setting(
        2880, int, help="finished tasks and stale uploads are deleted after this; 0 = never"
    )
    blocked_networks: tuple[str, ...] = _setting(
        _DEFAULT_BLOCKED, _csv, help="networks zipurl/webhooks may not reach"
    )
    max_upload_mb: int = _setting(0, int, help="largest single upload request in MB; 0 = unlimited")
    zip_max_bytes: int = _setting(0, int, help="largest zipurl download in bytes; 0 = unlimited")
    max_files_per_request: int | None = _setting(
        1000, _optional_int, help="file parts in one upload request; 0 = unlimited"
    )
    archive_max_mb: int | None = _setting(
        None,
        _optional_int,
        help="MB a task's archives (seed.zip, zips, zipurl) may expand to; 0 = free scratch",
    )
    archive_max_entries: int = _setting(
        100_000, _positive_int, help="entries in one of a task's archives (seed.zip, zips, zipurl)"
    )
    min_free_disk_mb: int = _setting(
        0, int, help="a worker with less free scratch space (MB) takes no new tasks; 0 = no check"
    )
    console_max_lines: int = _setting(
        100000,
        _positive_int,
        help="console lines kept per run: the first ones, then the last 1000 at its end",
    )
    checkpoints: bool = _setting(
        True, _bool, help="save the project folder to the object store after each ODM stage; resume from it"
    )
    checkpoint_max_mb: int | None = _setting(
        None,
        _optional_int,
        help="MB of project folder a task's checkpoints may hold; over it they stop; 0 = no cap",
    )
    api_workers: int = _setting(2, _positive_int, help="gunicorn worker processes")
    accounts: bool = _setting(
        False, _bool, help="user accounts: /auth/login tokens, each user sees only their tasks (needs TOKEN)"
    )
    registration: bool = _setting(False, _bool, help="anyone may create an account at /auth/register")
    token_hours: float = _setting(720.0, _non_negative_float, help="hours a login token stays valid")
    login_attempts: int = _setting(
        10, _positive_int, help="failed logins per user and per address before logins wait"
    )
    login_window_seconds: float = _setting(
        300.0, _non_negative_float, help="how long failed logins count (and logins wait)"
    )
    user_max_images: int | None = _setting(
        None, _optional_int, help="images per task for users without their own limit; 0 = unlimited"
    )
    user_max_running: int | None = _setting(
        None, _optional_int, help="tasks running at once for users without their own limit; 0 = unlimited"
    )
    user_max_bytes: int | None = _setting(
        None, _optional_int, help="bytes of uploads stored for users without their own limit; 0 = unlimited"
    )
    api_threads: int = _setting(16, _positive_int, help="threads per gunicorn worker")
    metrics_token: str = _setting(
        "", secret=True, help="bearer token Prometheus sends to /metrics; empty = the node token"
    )
    log_format: str = _setting("plain", _choice("plain", "json"), help="log lines: plain key=value or json")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = PREFIX + f.name.upper()
            if var in env:
                try:
                    values[f.name] = f.metadata["cast"](env[var])
                except (ValueError, TypeError) as exc:
                    raise SettingsError(f"{var}={env[var]!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        # values that parse but break the farm (a zero lease re-queues every task, a zero heartbeat
        # busy-loops, a bad block list fails only at the first zipurl) are refused here, at start-up
        for problem in _problems(self):
            raise SettingsError(problem)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, str) and value:
                value = redact_text(value)  # a Redis password or a token in a URL
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    # --- derived values -------------------------------------------------------------------
    @property
    def engine_name(self) -> str:
        if self.engine:
            return self.engine
        return "odm" if self.odm_path else "simulate"

    @property
    def local_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").resolve()

    @property
    def scratch_path(self) -> Path:
        return (self.scratch_dir or self.data_dir / "scratch").resolve()

    def to_env(self) -> dict[str, str]:
        """The ODM_FARM_* variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            env[PREFIX + f.name.upper()] = text
        return env

    @property
    def secrets(self) -> list[str]:
        """The secret values these settings hold, for masking console lines and logs."""
        found = [getattr(self, f.name) for f in fields(self) if f.metadata.get("secret")]
        for url in (self.redis_url, self.public_url, self.webhook):
            with contextlib.suppress(ValueError):
                found.append(urlsplit(url).password or "")
        return [value for value in found if value]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _problems(s: Settings) -> list[str]:
    """What is wrong with `s`, one message per problem, each naming the variable."""
    found: list[str] = []

    def check(name: str, ok: bool, why: str) -> None:
        if not ok:
            found.append(f"{PREFIX}{name.upper()}={getattr(s, name)!r}: {why}")

    for name in ("port", "progress_port"):
        check(name, 1 <= getattr(s, name) <= 65535, "must be a port number from 1 to 65535")
    for name in ("lease_seconds", "heartbeat_seconds", "worker_ttl"):
        check(name, getattr(s, name) > 0, "must be greater than 0")
    if s.heartbeat_seconds > 0:
        check(
            "heartbeat_seconds",
            s.heartbeat_seconds < s.lease_seconds,
            f"must be shorter than {PREFIX}LEASE_SECONDS ({s.lease_seconds:g}), or leases expire between beats",
        )
        check(
            "heartbeat_seconds",
            s.heartbeat_seconds < s.worker_ttl,
            f"must be shorter than {PREFIX}WORKER_TTL ({s.worker_ttl:g}), or live workers look gone",
        )
    check("webhook_retries", s.webhook_retries >= 1, "must be at least 1")
    if s.accounts:
        check("accounts", bool(s.token), f"needs {PREFIX}TOKEN: the administrator's and the workers' token")
    for name in ("token_hours", "login_window_seconds"):
        check(name, getattr(s, name) > 0, "must be greater than 0")
    for name in (
        "cleanup_minutes",
        "max_upload_mb",
        "zip_max_bytes",
        "max_runtime",
        "simulate_seconds",
        "min_free_disk_mb",
    ):
        check(name, getattr(s, name) >= 0, "must not be negative")
    check("worker_queues", set(s.worker_queues) <= {"cpu", "gpu"}, "queues are cpu and gpu")
    for entry in s.blocked_networks:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError as exc:
            check("blocked_networks", False, f"{entry!r} is not a network ({exc})")
    if s.public_url:
        check("public_url", s.public_url.startswith(("http://", "https://")), "must be an http(s) URL")
    if s.redis_url:
        check(
            "redis_url",
            s.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "must start with redis://, rediss:// or unix://",
        )
    return found


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A warning for each ODM_FARM_* variable that is no setting (a typo is otherwise silently ignored)."""
    known = [PREFIX + f.name.upper() for f in fields(Settings)]
    warnings = []
    for name in sorted(env):
        if not name.startswith(PREFIX) or name in known or name in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else "; `odm-farm settings` lists them all"
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting, for the CLI and README."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append((PREFIX + f.name.upper(), "" if default is None else str(default), f.metadata["help"]))
    return rows
