"""The `odm-farm` command: farm roles (`up`, `api`, `worker`, `health`, `settings`) and a NodeODM client.

The client commands (submit, tasks, info, logs, cancel, restart, remove, download, workers) are in
odm_farm/commands.py; they talk to any NodeODM API, not only this farm.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import fields
from typing import Any

from shared.safety import redact_text
from shared.settings import PREFIX, Settings, SettingsError, describe, unknown_variables

# set by `odm-farm up` for its children, so a typo is reported once, not once per process
_QUIET_ENV = "ODMFARM_UP_CHILD"


# Settings grouped by the role that reads them, for --help. A setting missing here (added later) is listed
# under "other", so a new field never disappears from the help.
ROLE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("every role", ("data_dir", "redis_url", "token", "storage", "storage_dir", "engine", "log_format")),
    (
        "API",
        (
            "host",
            "port",
            "api_workers",
            "api_threads",
            "max_images",
            "max_upload_mb",
            "max_files_per_request",
            "download_redirect",
            "public_url",
            "cleanup_minutes",
            "metrics_token",
            "accounts",
            "registration",
            "token_hours",
            "login_attempts",
            "login_window_seconds",
            "user_max_images",
            "user_max_running",
            "user_max_bytes",
        ),
    ),
    (
        "worker",
        (
            "worker_slots",
            "worker_queues",
            "worker_gpu",
            "worker_name",
            "odm_path",
            "odm_python",
            "simulate_seconds",
            "scratch_dir",
            "keep_failed_scratch",
            "max_concurrency",
            "max_runtime",
            "progress_port",
            "min_free_disk_mb",
            "console_max_lines",
            "checkpoints",
            "checkpoint_max_mb",
            "archive_max_mb",
            "archive_max_entries",
            "zip_max_bytes",
        ),
    ),
    (
        "S3 object store (ODM_FARM_STORAGE=s3)",
        (
            "s3_endpoint",
            "s3_region",
            "s3_bucket",
            "s3_prefix",
            "s3_access_key",
            "s3_secret_key",
            "s3_acl",
            "s3_create_bucket",
        ),
    ),
    ("leases, heartbeats and retries", ("heartbeat_seconds", "worker_ttl", "lease_seconds", "max_attempts")),
    ("webhooks and outgoing requests", ("webhook", "webhook_retries", "blocked_networks")),
)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every ODM_FARM_X setting is also a flag --x (the flag wins over the variable), grouped by role."""
    by_name = {f.name: f for f in fields(Settings)}
    listed = {name for _, names in ROLE_GROUPS for name in names}
    groups = [*ROLE_GROUPS, ("other", tuple(n for n in by_name if n not in listed))]
    for title, names in groups:
        present = [by_name[n] for n in names if n in by_name]
        if not present:
            continue
        group = parser.add_argument_group(f"settings: {title} (each also an ODM_FARM_* variable)")
        for f in present:
            default = "" if f.default is None else _shown_default(f.default)
            group.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f"setting_{f.name}",
                metavar="VALUE",
                help=f"{f.metadata['help']} [{PREFIX}{f.name.upper()}; default: {default or 'empty'}]".replace(
                    "%", "%%"
                ),
            )


def _shown_default(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for f in fields(Settings):
        value = getattr(args, f"setting_{f.name}", None)
        if value is not None:
            env[PREFIX + f.name.upper()] = value
    return env


def _settings(env: dict[str, str], warn: bool = False) -> Settings:
    if warn and not env.get(_QUIET_ENV):
        for warning in unknown_variables(env):
            print(f"odm-farm: warning: {warning}", file=sys.stderr, flush=True)
    try:
        return Settings.from_env(env)
    except SettingsError as exc:
        sys.exit(f"odm-farm: bad setting: {exc}")


def cmd_api(args: argparse.Namespace) -> int:
    env = _environment(args)
    settings = _settings(env, warn=True)
    if not settings.redis_url:
        sys.exit("odm-farm api: ODM_FARM_REDIS_URL is required (or use `odm-farm up`)")
    _require_free_port("api", settings)
    _check_dependencies("api", settings)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        str(settings.api_workers),
        "--threads",
        str(settings.api_threads),
        "--bind",
        f"{settings.host}:{settings.port}",
        "--no-control-socket",
        # uploads and downloads of large files take long: the timeout is for hung workers only
        "--timeout",
        "600",
        "--graceful-timeout",
        "20",
        "--keep-alive",
        "30",
        # the access log prints request lines, and clients put the token in the query
        "--logger-class",
        "api.gunicorn_logging.RedactingLogger",
        "api.app:create_app()",
    ]
    if args.access_log:  # off by default: formatting a line per request costs ~8% of a fast request
        argv[-1:-1] = ["--access-logfile", "-"]
    # glibc gives each thread its own malloc arena; with many upload threads that keeps ~4 MB per thread
    # resident after every burst. Two arenas keep the API's memory flat (measured: 85 MB -> 25 MB growth
    # for 200 x 5 MB parallel uploads, bench/bench_upload.py) and are no slower.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    os.execve(sys.executable, argv, env)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    env = _environment(args)
    os.environ.update(env)
    settings = _settings(env, warn=True)
    if not settings.redis_url:
        sys.exit("odm-farm worker: ODM_FARM_REDIS_URL is required (or use `odm-farm up`)")
    _check_dependencies("worker", settings)
    import logging

    from shared.safety import redact_handlers
    from workers.main import run_worker

    # engines inherit the worker's environment and need none of its secrets (ps e, /proc/<pid>/environ)
    for f in fields(Settings):
        if f.metadata["secret"] or f.name == "redis_url":
            os.environ.pop(PREFIX + f.name.upper(), None)
    # the same root handler run_worker would install, masking secrets in every line (Celery's included)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_handlers(logging.getLogger(), settings.secrets)
    run_worker(settings)
    return 0


def _check_dependencies(role: str, settings: Settings) -> None:
    """Fail at start-up, with the setting to fix in the message, when Redis or the object store is unusable."""
    import redis

    from shared.storage import StorageError, make_store

    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5).ping()
    except (redis.RedisError, ValueError) as exc:
        sys.exit(
            f"odm-farm {role}: cannot reach Redis at ODM_FARM_REDIS_URL ({_mask(settings.redis_url)}): {exc}"
        )
    try:
        make_store(settings).check()
    except StorageError as exc:
        sys.exit(f"odm-farm {role}: object store unusable (ODM_FARM_STORAGE={settings.storage}): {exc}")


def _mask(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def cmd_health(args: argparse.Namespace) -> int:
    env = _environment(args)
    settings = _settings(env)
    if args.role == "api":
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        try:
            with urllib.request.urlopen(f"http://{host}:{settings.port}/health", timeout=5) as response:
                return 0 if response.status == 200 else 1
        except OSError as exc:
            print(f"api unhealthy: {exc}", file=sys.stderr)
            return 1
    from shared.taskstore import TaskStore

    store = TaskStore.from_url(settings.redis_url)
    host = socket.gethostname()
    alive = [w for w in store.live_workers(settings.worker_ttl) if w.get("host") == host]
    if not alive:
        print(f"no live worker on {host}", file=sys.stderr)
        return 1
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting with the value in effect here (environment and flags; secrets masked) and its default."""
    env = _environment(args)
    for warning in unknown_variables(env):
        print(f"odm-farm: warning: {warning}", file=sys.stderr, flush=True)
    try:
        effective: Settings | None = Settings.from_env(env)
    except SettingsError as exc:
        print(f"odm-farm: bad setting: {exc}", file=sys.stderr)
        effective = None
    print(f"{'VARIABLE':32} {'IN EFFECT':24} {'DEFAULT':16} HELP")
    for f, (variable, default, help_text) in zip(fields(Settings), describe(), strict=True):
        if variable not in env:
            value = default
        elif effective is None:
            value = env[variable]  # as given: some setting is bad, so none was parsed
        else:
            value = "" if getattr(effective, f.name) is None else _shown_default(getattr(effective, f.name))
        if f.metadata["secret"] and value:
            value = "***"
        elif value:
            value = redact_text(str(value))
        source = "" if variable not in env else " (set)"
        print(f"{variable:32} {(value or '-') + source:24} {default or '-':16} {help_text}")
    return 0 if effective is not None else 1


# How long each role gets to stop after SIGTERM before its whole process tree is killed. Workers first (they
# hand running tasks back through Redis), then the API, then Redis: 5 + 2 + 1.5 s keeps a stop under 10 s.
STOP_ORDER = (("worker", 5.0), ("api", 2.0), ("redis", 1.5))


def cmd_up(args: argparse.Namespace) -> int:
    """Redis, the API and one worker on this machine, stopped together, in order, on Ctrl-C."""
    from odm_farm.redis_server import free_port, start_redis

    env = _environment(args)
    settings = _settings(env, warn=True)
    env[_QUIET_ENV] = "1"
    _require_free_port("up", settings)
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    env[PREFIX + "DATA_DIR"] = str(data)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    # Children run in sessions of their own, so the terminal's Ctrl-C reaches only this process, which then
    # stops them in order; a Ctrl-C that reached Redis at once would cut the workers' hand-over short.
    # SIGHUP too: closing the terminal no longer reaches the children, so `up` must pass it on
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    command = [sys.executable, "-m", "odm_farm.cli"]
    try:
        if not settings.redis_url:
            port = free_port(6379)
            children.append(("redis", start_redis(data / "redis", port, own_session=True)))
            env[PREFIX + "REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            print(f"Redis on 127.0.0.1:{port} (data in {data / 'redis'})", flush=True)
        for role in ("worker", "api"):
            children.append((role, subprocess.Popen([*command, role], env=env, start_new_session=True)))
        url = f"http://{settings.host}:{settings.port}"
        engine = settings.engine_name
        if _wait_http(url + "/health", children):
            print(
                f"ODM Farm is running at {url} (engine: {engine}, storage: {settings.storage}). "
                "Press Ctrl-C to stop.",
                flush=True,
            )
        while True:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"odm-farm: {name} exited with code {proc.returncode}; stopping.", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping ODM Farm...", flush=True)
        return 0
    except (RuntimeError, OSError) as exc:  # redis-server missing or refusing to start
        print(f"odm-farm up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the ordered stop short
        _stop_in_order(children)


def _stop_in_order(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """SIGTERM each role in STOP_ORDER and wait for it; kill what is left of its tree (engines included)."""
    for role, grace in STOP_ORDER:
        for name, proc in children:
            if name != role:
                continue
            tree = _tree(proc.pid)  # before it exits: its orphans (an engine) would no longer be found
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"odm-farm: {name} did not stop within {grace:g} s; killing it", file=sys.stderr)
            _kill_all([*tree, *_tree(proc.pid)], proc)


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _kill_all(processes: list[Any], leader: subprocess.Popen[bytes]) -> None:
    """SIGTERM the leftovers of a stopped role, SIGKILL them (and the role itself) after a short grace."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=0.5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if leader.poll() is None:
        leader.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(2)


def _require_free_port(role: str, settings: Settings) -> None:
    """Exit at once, naming the port, when the API's address is taken (gunicorn would retry, then fail)."""
    with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            sys.exit(
                f"odm-farm {role}: cannot listen on {settings.host} port {settings.port} (ODM_FARM_PORT): "
                f"{exc.strerror or exc}. Stop what uses it or choose another port."
            )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _wait_http(url: str, children: list[tuple[str, subprocess.Popen[bytes]]], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for _, proc in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="odm-farm",
        description="ODM Farm: run the farm's services, or use any NodeODM node (this farm, NodeODM, ClusterODM) "
        "from the shell; the node is --url or ODM_FARM_URL, its token --token or ODM_FARM_TOKEN.",
    )
    parser.add_argument("--version", action="version", version=f"odm-farm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help_text in (
        ("up", cmd_up, "run Redis, the API and a worker on this machine"),
        ("api", cmd_api, "run the API (gunicorn)"),
        ("worker", cmd_worker, "run a worker (Celery)"),
        ("health", cmd_health, "exit 0 when the api or this host's worker is healthy"),
        ("settings", cmd_settings, "list every setting with the value in effect and its default"),
    ):
        usage = f"odm-farm {name} [-h]{' {api,worker}' if name == 'health' else ''} [--SETTING VALUE ...]"
        p = sub.add_parser(name, help=help_text, description=help_text, usage=usage)
        p.set_defaults(func=func)
        _add_setting_flags(p)
        if name == "health":
            p.add_argument("role", choices=["api", "worker"])
        if name == "api":
            p.add_argument("--access-log", action="store_true", help="log every request")
    from odm_farm.client import ClientError
    from odm_farm.commands import EXIT_INTERRUPTED, add_client_commands

    add_client_commands(sub)
    from odm_farm.users import add_user_command

    add_user_command(sub, lambda args: _settings(_environment(args)))
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a pipe buffers the output: a closed reader shows here, not at interpreter exit
        return code
    except ClientError as exc:
        print(f"odm-farm {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`odm-farm tasks | head -1`): stop quietly; point stdout at /dev/null so the
        # interpreter's final flush does not print an error either
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a local file: an image that cannot be read, a folder that cannot be written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"odm-farm {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("odm-farm")
    except PackageNotFoundError:
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
