"""Uploads and downloads of the `odm-farm` client, with progress counted in bytes.

PyODM reports an upload only when a whole file is done (and reads each file into memory first), and a
download by 10 MB chunk: a bar over a few large images would sit still for minutes. Here each image is
streamed from disk through a reader that counts what leaves, with retries per file, and all.zip is streamed
to disk, resumed with a Range request when the connection drops.
"""

from __future__ import annotations

import json
import mimetypes
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import requests
from pyodm.api import Task
from pyodm.exceptions import NodeConnectionError, NodeResponseError, NodeServerError, OdmError
from requests_toolbelt.multipart.encoder import MultipartEncoder

from odm_farm.client import ClientError, RemoteNode, not_nodeodm, reason

# (bytes done, bytes in all; None when the node does not say); may go back when a file is sent again
Progress = Callable[[int, int | None], None]


class CountingReader:
    """A file as MultipartEncoder reads it, telling `on_read` how many bytes each read took."""

    def __init__(self, file: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._file = file
        self._on_read = on_read
        self.len = Path(file.name).stat().st_size - file.tell()  # what requests_toolbelt asks for the size

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk:
            self.len -= len(chunk)
            self._on_read(len(chunk))
        return chunk


class _Counter:
    """Bytes sent by every upload thread, reported as one running total."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done = total, 0
        self._progress = progress
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            done = self.done
        self._progress(done, self.total)


def upload_task(
    node: RemoteNode,
    files: list[Path],
    options: dict[str, Any],
    progress: Progress,
    name: str | None = None,
    webhook: str | None = None,
    parallel: int = 4,
    retries: int = 5,
    retry_wait: float = 2.0,
) -> Task:
    """A new task from `files` through NodeODM's init/upload/commit, each file retried on its own."""
    fields = {"options": json.dumps([{"name": k, "value": v} for k, v in options.items()])}
    fields.update({k: v for k, v in (("name", name), ("webhook", webhook)) if v})
    init = MultipartEncoder(fields=fields)
    created = node.post("/task/new/init", data=init, headers={"Content-Type": init.content_type})
    if not isinstance(created, dict) or "uuid" not in created:
        raise ClientError(f"unexpected answer from {node.base}/task/new/init: {created!r:.200}")
    uuid = str(created["uuid"])
    counter = _Counter(sum(p.stat().st_size for p in files), progress)
    pending: queue.Queue[Path] = queue.Queue()
    for path in files:
        pending.put(path)
    failures: list[BaseException] = []

    def work() -> None:
        while not failures:
            try:
                path = pending.get_nowait()
            except queue.Empty:
                return
            try:
                _upload_file(node, uuid, path, counter, retries, retry_wait)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                failures.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(parallel, len(files))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a short join keeps the main thread free for Ctrl-C
            thread.join(0.2)
    if failures:
        raise failures[0]
    return node.handle_task_new_response(node.post(f"/task/new/commit/{uuid}"))


def _upload_file(
    node: RemoteNode, uuid: str, path: Path, counter: _Counter, retries: int, retry_wait: float
) -> None:
    for attempt in range(1, retries + 2):
        sent = 0

        def count(amount: int) -> None:
            nonlocal sent
            sent += amount
            counter.add(amount)

        try:
            with path.open("rb") as file:
                mime = mimetypes.guess_type(path.name)[0] or "image/jpg"
                body = MultipartEncoder(fields={"images": (path.name, CountingReader(file, count), mime)})
                result = node.post(
                    f"/task/new/upload/{uuid}", data=body, headers={"Content-Type": body.content_type}
                )
            if not (isinstance(result, dict) and result.get("success")):
                raise NodeServerError(f"unexpected answer: {result!r:.200}")
            return
        except (OdmError, requests.RequestException) as exc:
            counter.add(-sent)  # the bar goes back: these bytes are sent again
            if attempt > retries:
                reason = exc if isinstance(exc, NodeResponseError) else _short(exc)
                raise ClientError(f"{path.name}: upload failed after {attempt} attempts: {reason}") from None
            time.sleep(retry_wait * attempt)


def _short(exc: BaseException) -> str:
    return reason(str(exc)) if isinstance(exc, (NodeConnectionError, requests.RequestException)) else str(exc)


def download_zip(task: Task, destination: Path, progress: Progress, attempts: int = 5) -> Path:
    """all.zip of a completed task streamed into `destination`; a dropped connection resumes where it stopped."""
    node: RemoteNode = task.node
    path = destination / "all.zip"
    done = 0
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(
                node.url(f"/task/{task.uuid}/download/all.zip"),
                headers={"Range": f"bytes={done}-"} if done else {},
                stream=True,
                timeout=node.timeout,
            ) as response:
                _check_download(node, task.uuid, response)
                if response.status_code != 206:
                    done = 0  # the whole archive again (no ranges here)
                length = response.headers.get("Content-Length")
                total = done + int(length) if length and length.isdigit() else None
                with path.open("ab" if done else "wb") as file:
                    for chunk in response.iter_content(1 << 16):
                        file.write(chunk)
                        done += len(chunk)
                        progress(done, total)
            if total is None or done >= total:
                return path
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if attempt == attempts:
                raise NodeConnectionError(str(exc)) from None
        time.sleep(min(attempt, 3))
    raise ClientError(f"the download of {task.uuid}'s all.zip stopped short {attempts} times")


def _check_download(node: RemoteNode, uuid: str, response: requests.Response) -> None:
    kind = response.headers.get("Content-Type", "")
    if response.status_code == 401:
        raise NodeResponseError("Unauthorized. Do you need to set a token?")
    if "application/json" in kind:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        raise NodeResponseError(error or f"no archive for {uuid} (HTTP {response.status_code})")
    if response.status_code not in (200, 206) or kind.startswith("text/html"):
        raise ClientError(not_nodeodm(f"{node.base}/task/{uuid}/download/all.zip", response))
