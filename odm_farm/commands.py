"""The client sub-commands of `odm-farm` (submit, tasks, info, logs, cancel, restart, remove, download, workers).

Results go to stdout (a uuid, a table, console lines) so they pipe well; progress bars, questions and messages go
to stderr. Network work is in odm_farm/client.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyodm.api import Task
from pyodm.types import TaskStatus

from odm_farm import client, transfer
from odm_farm.client import ENDED, ClientError, RemoteNode

EXIT_INTERRUPTED = 130


def add_client_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("node")
    group.add_argument(
        "--url",
        help=f"NodeODM API URL: this farm, NodeODM or ClusterODM; host:port means http, a ?token= in it is the "
        f"token (env {client.URL_VARIABLE}, default {client.DEFAULT_URL})",
    )
    group.add_argument("--token", help=f"the node's token (env {client.TOKEN_VARIABLE})")
    group.add_argument("--timeout", type=float, default=30, help="seconds per request (default 30)")

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        parser.set_defaults(func=func)
        return parser

    p = add("submit", cmd_submit, "upload images as a new task (optionally wait and download the results)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGES", help="images (and a GCP file)")
    _option_flag(p)
    p.add_argument("--name", help="task name")
    p.add_argument("--webhook", help="URL the node calls when the task ends")
    p.add_argument("--wait", action="store_true", help="wait until the task ends, with a progress bar")
    p.add_argument("--download", type=Path, metavar="DIR", help="wait, then extract all.zip into DIR")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--parallel-uploads", type=int, default=4, help="files uploaded at once (default 4)")

    add("tasks", cmd_tasks, "list the node's tasks")
    p = add("info", cmd_info, "show one task")
    p.add_argument("uuid")
    p.add_argument("--json", action="store_true", help="the raw /task/{uuid}/info answer")
    p = add("logs", cmd_logs, "print a task's console output")
    p.add_argument("uuid")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the task ends")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    for name, verb in (("cancel", "cancel"), ("remove", "remove (and delete the results of)")):
        p = add(name, cmd_command, f"{verb} a task")
        p.add_argument("uuid")
    p = add("restart", cmd_command, "restart a task (optionally with changed options)")
    p.add_argument("uuid")
    _option_flag(p)
    p = add("download", cmd_download, "download a completed task's all.zip and extract it into DIR")
    p.add_argument("uuid")
    p.add_argument("dir", type=Path, metavar="DIR")
    add("workers", cmd_workers, "list the farm's live workers (an ODM Farm extension)")


def _option_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a processing option, checked against the node's /options before anything is sent "
        "(repeatable; a bare NAME means NAME=true)",
    )


def _node(args: argparse.Namespace) -> RemoteNode:
    return client.connect(args.url, args.token, args.timeout)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(in_bytes: bool = False, console: Any = None) -> Any:
    """Bars on stderr; a transfer bar counts bytes (done / total, speed), a processing bar percents."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    if in_bytes:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    console = console or Console(stderr=True)
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=False)


# --- submit ----------------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise ClientError(f"no such file: {', '.join(missing)}")
    names: dict[str, Path] = {}
    for path in args.images:
        if path.name in names and names[path.name].resolve() != path.resolve():
            raise ClientError(
                f"{names[path.name]} and {path} have the same name: a node keeps one file per name"
            )
        names[path.name] = path
    args.images = list({p.resolve(): p for p in args.images}.values())  # a file given twice is sent once
    node = _node(args)
    with client.friendly_errors(node):
        options = client.check_options(client.parse_option_args(args.option), client.node_options(node))
        try:
            with _progress(in_bytes=True) as bars:
                bar = bars.add_task(f"Uploading {len(args.images)} files", total=None)
                task = transfer.upload_task(
                    node,
                    args.images,
                    options,
                    lambda done, total: bars.update(bar, completed=done, total=total),
                    name=args.name,
                    webhook=args.webhook,
                    parallel=max(1, args.parallel_uploads),
                )
        except KeyboardInterrupt:
            _err("upload interrupted: no task was started (the node discards the partial upload)")
            return EXIT_INTERRUPTED
        print(task.uuid, flush=True)
        if not (args.wait or args.download):
            return 0
        try:
            info = _wait(task, args.interval)
        except KeyboardInterrupt:
            return _interrupted(task)
        if info.status != TaskStatus.COMPLETED:
            reason = f": {info.last_error}" if info.last_error else ""
            _err(f"task {task.uuid} ended {info.status.name}{reason}")
            return 1
        _err(f"task {task.uuid} completed")
        if args.download:
            _download(task, args.download)
    return 0


def _wait(task: Task, interval: float) -> Any:
    with _progress() as bars:
        bar = bars.add_task("Queued", total=100)

        def retrying(reason: str) -> None:
            bars.update(bar, description=f"Reconnecting ({reason})")

        while True:
            info = client.patiently(task.info, retrying)
            bars.update(bar, completed=info.progress, description=info.status.name.capitalize())
            if info.status in ENDED:
                return info
            time.sleep(interval)


def _interrupted(task: Task) -> int:
    """Ctrl-C while waiting: ask whether to cancel the task; without an answer, leave it running."""
    answer = client.ask_yes_no(f"\nCancel task {task.uuid} on the node? [y/N] ")
    if answer:
        with client.friendly_errors(task.node):
            task.cancel()
        _err(f"task {task.uuid} canceled")
    else:
        why = "no answer on stdin; " if answer is None else ""
        _err(f"{why}task {task.uuid} keeps running; cancel it with: odm-farm cancel {task.uuid}")
    return EXIT_INTERRUPTED


def _download(task: Task, destination: Path) -> None:
    status = task.info().status
    if status != TaskStatus.COMPLETED:
        raise ClientError(f"task {task.uuid} is {status.name}: only a COMPLETED task has results to download")
    destination.mkdir(parents=True, exist_ok=True)
    # the archive goes next to the results, under a temporary name, so a failed download leaves no all.zip
    with (
        tempfile.TemporaryDirectory(dir=destination, prefix=".download-") as scratch,
        _progress(in_bytes=True) as bars,
    ):
        bar = bars.add_task("Downloading all.zip", total=None)
        zip_path = transfer.download_zip(
            task, Path(scratch), lambda done, total: bars.update(bar, completed=done, total=total)
        )
        names = client.extract(zip_path, destination)
    _err(f"{len(names)} files extracted into {destination}")


# --- the other commands ----------------------------------------------------------------------------------


def cmd_tasks(args: argparse.Namespace) -> int:
    node = _node(args)
    with client.friendly_errors(node):
        infos = client.task_list(node)
    infos.sort(key=lambda i: i.date_created)
    print(f"{'UUID':36}  {'STATUS':9}  {'PROGRESS':>8}  {'IMAGES':>6}  {'CREATED (UTC)':19}  NAME")
    for i in infos:
        created = i.date_created.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{i.uuid:36}  {i.status.name:9}  {i.progress:7.1f}%  {i.images_count:6}  {created:19}  {i.name}"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    node = _node(args)
    with client.friendly_errors(node):
        if args.json:
            print(client.dump(node.get(f"/task/{args.uuid}/info")))
            return 0
        i = Task(node, args.uuid).info()
    rows = [
        ("uuid", i.uuid),
        ("name", i.name),
        ("status", f"{i.status.name} ({i.status.value})"),
        ("progress", f"{i.progress:.1f}%"),
        ("images", i.images_count),
        ("created", i.date_created.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("processing", f"{i.processing_time / 1000:.1f} s" if i.processing_time >= 0 else "-"),
        ("error", i.last_error or "-"),
        ("options", ", ".join(f"{o['name']}={_value(o['value'])}" for o in i.options) or "-"),
    ]
    for key, value in rows:
        print(f"{key:11} {value}")
    return 0


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # true, not True: as the API has it


def cmd_logs(args: argparse.Namespace) -> int:
    node = _node(args)
    with client.friendly_errors(node):
        client.follow_output(
            Task(node, args.uuid),
            lambda line: print(line, flush=True),
            args.interval,
            args.follow,
            on_retry=lambda why: _err(f"odm-farm logs: node unreachable ({why}); trying again"),
        )
    return 0


def cmd_command(args: argparse.Namespace) -> int:
    node = _node(args)
    task = Task(node, args.uuid)
    with client.friendly_errors(node):
        if args.command == "restart":
            options = None
            if args.option:
                items = client.parse_option_args(args.option)
                options = client.check_options(items, client.node_options(node))
            done = task.restart(options)
        else:
            done = getattr(task, args.command)()
    if not done:  # a NodeODM answer without "success": true and without an error
        raise ClientError(f"task {args.uuid}: the node did not confirm the {args.command}")
    _err(f"task {args.uuid}: {args.command} done")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    node = _node(args)
    with client.friendly_errors(node):
        _download(Task(node, args.uuid), args.dir)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    node = _node(args)
    with client.friendly_errors(node):
        try:
            workers = node.get("/workers")
        except client.NodeServerError as exc:
            if "404" not in str(exc):  # a farm in trouble (503 while Redis restarts) is still a farm
                raise
            raise ClientError(
                f"{node.base} has no /workers: it is not an ODM Farm (NodeODM and ClusterODM list no workers)"
            ) from None
    if not isinstance(workers, list):
        raise ClientError(f"unexpected answer from {node.base}/workers")
    print(
        f"{'NAME':28}  {'QUEUES':7}  {'SLOTS':>5}  {'RUNNING':>7}  {'CPUS':>4}  {'FREE DISK':>9}  "
        f"{'MEMORY FREE':>11}  {'ENGINE':16}  LAST SEEN"
    )
    now = time.time() * 1000
    for w in sorted(workers, key=lambda w: str(w.get("name"))):
        engine = f"{w.get('engine', '')} {w.get('engineVersion', '')}".strip()
        seen = f"{max(0, now - float(w.get('lastBeat', now))) / 1000:.0f} s ago"
        note = f"  ({w['note']})" if w.get("note") else ""
        print(
            f"{str(w.get('name', '?')):28}  {','.join(w.get('queues', [])):7}  {w.get('slots', 0):>5}  "
            f"{len(w.get('running', [])):>7}  {w.get('cpuCores', '?'):>4}  {_size(w.get('freeDisk')):>9}  "
            f"{_size(w.get('availableMemory')):>11}  {engine:16}  {seen}{note}"
        )
    return 0


def _size(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
