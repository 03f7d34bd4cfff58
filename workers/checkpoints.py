"""Checkpoints of a run's project folder in the object store, saved after each ODM stage and restored on resume.

Layout under `<uuid>/checkpoints/`::

    blobs/<random hex>   one stored version of one file, streamed up once and shared by later checkpoints
    manifest.json        the commit point: stage, time, options, engine and every file's blob, size, mtime, hash

A checkpoint uploads only the files whose size or mtime changed since the last one (the delta); the others
keep their blob. The manifest is written last, in one PUT (atomic on S3 and on the local store): until it
is, the previous checkpoint stays whole. Blobs no manifest names any more are deleted after the commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.storage.base import CHUNK, ObjectNotFound, ObjectStore
from workers.resume import STAGES

log = logging.getLogger(__name__)

VERSION = 1
MANIFEST = "manifest.json"
BLOBS = "blobs/"
# not saved: the inputs are placed again from the task's uploads, the console is the farm's own
EXCLUDED_TOP = frozenset({"images", "task_output.txt", ".simulate-children"})
NICE = 10  # the checkpoint thread yields the CPU to the engine


def checkpoint_prefix(uuid: str) -> str:
    return f"{uuid}/checkpoints/"


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable manifest, missing blob, size or hash mismatch."""


@dataclass(frozen=True)
class Entry:
    key: str  # blob key under the checkpoint prefix ("" for a symbolic link)
    size: int
    mtime_ns: int
    sha256: str
    mode: int
    link: str = ""  # target of a symbolic link


@dataclass
class Manifest:
    uuid: str
    run: str
    stage: str
    saved_at: int  # ms since the epoch
    engine: str
    options: list[dict[str, Any]]
    files: dict[str, Entry]
    root: str = ""  # the project folder's absolute path when saved: ODM writes it into some files

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    def to_json(self) -> bytes:
        data = {
            "version": VERSION,
            "uuid": self.uuid,
            "run": self.run,
            "stage": self.stage,
            "savedAt": self.saved_at,
            "engine": self.engine,
            "options": self.options,
            "files": {rel: asdict(e) for rel, e in sorted(self.files.items())},
            "root": self.root,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, uuid: str) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("version") != VERSION:
                raise CheckpointError(f"unknown manifest version {data.get('version')!r}")
            if data["uuid"] != uuid:
                raise CheckpointError("the manifest belongs to another task")
            if data["stage"] not in STAGES:
                raise CheckpointError(f"unknown stage {data['stage']!r}")
            files = {_safe_rel(rel): Entry(**entry) for rel, entry in dict(data["files"]).items()}
            for rel, entry in files.items():
                if not entry.link and not entry.key.startswith(BLOBS):
                    raise CheckpointError(f"bad blob key for {rel}")
            return cls(
                uuid=uuid,
                run=str(data["run"]),
                stage=str(data["stage"]),
                saved_at=int(data["savedAt"]),
                engine=str(data["engine"]),
                options=list(data["options"]),
                files=files,
                root=str(data.get("root") or ""),
            )
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"unreadable manifest ({type(exc).__name__}: {exc})") from None


def _safe_rel(rel: str) -> str:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts) or "\x00" in rel:
        raise CheckpointError(f"unsafe path in the manifest: {rel!r}")
    return rel


def saved_at_text(manifest: Manifest) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(manifest.saved_at / 1000))


# --- scanning and delta -------------------------------------------------------------------------------


def scan(project: Path) -> dict[str, os.stat_result]:
    """Every file and symbolic link of the project folder (relative posix path -> lstat), minus EXCLUDED_TOP."""
    found: dict[str, os.stat_result] = {}
    for folder, dirs, names in os.walk(project):
        here = Path(folder)
        if here == project:
            dirs[:] = [d for d in dirs if d not in EXCLUDED_TOP]
            names = [n for n in names if n not in EXCLUDED_TOP]
        for name in [*names, *[d for d in dirs if (here / d).is_symlink()]]:
            path = here / name
            try:
                st = path.lstat()
            except FileNotFoundError:  # deleted by the engine while we walk
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                found[path.relative_to(project).as_posix()] = st
    return found


def delta(previous: dict[str, Entry], current: dict[str, os.stat_result]) -> list[str]:
    """The files to upload: new ones and those whose size, mtime or kind changed."""
    changed = []
    for rel, st in current.items():
        old = previous.get(rel)
        is_link = stat.S_ISLNK(st.st_mode)
        if (
            old is None
            or old.size != st.st_size
            or old.mtime_ns != st.st_mtime_ns
            or bool(old.link) != is_link
        ):
            changed.append(rel)
    return sorted(changed)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Stopped(Exception):
    """The checkpoint was abandoned (the run ends or is cancelled)."""


def upload_file(
    store: ObjectStore, prefix: str, project: Path, rel: str, st: os.stat_result, stop: Callable[[], bool]
) -> Entry:
    """Stream one file up under a new blob key, hashing it on the way (one read, never whole in memory)."""
    path = project / rel
    if stat.S_ISLNK(st.st_mode):
        return Entry("", st.st_size, st.st_mtime_ns, "", stat.S_IMODE(st.st_mode), link=os.readlink(path))
    key = BLOBS + secrets.token_hex(16)
    digest = hashlib.sha256()
    size = 0
    writer = store.writer(prefix + key)
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                if stop():
                    raise Stopped()
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
        if stop():
            raise Stopped()
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    # the stat taken before reading: a file still being written is uploaded again by the next checkpoint
    return Entry(key, size, st.st_mtime_ns, digest.hexdigest(), stat.S_IMODE(st.st_mode))


# --- saving -------------------------------------------------------------------------------------------


@dataclass
class SaveResult:
    manifest: Manifest
    uploaded_files: int
    uploaded_bytes: int


def save(
    store: ObjectStore,
    base: Manifest,
    project: Path,
    stop: Callable[[], bool] = lambda: False,
    owns: Callable[[], bool] = lambda: True,
    max_bytes: int | None = None,
) -> SaveResult | None:
    """Save a checkpoint described by `base` (its stage, options...) over `base.files`; None when over the cap.

    Raises Stopped when `stop()` turns true, and returns without committing when `owns()` is false.
    """
    prefix = checkpoint_prefix(base.uuid)
    current = scan(project)
    total = sum(st.st_size for st in current.values() if stat.S_ISREG(st.st_mode))
    if max_bytes is not None and total > max_bytes:
        return None
    files = {rel: base.files[rel] for rel in current if rel in base.files}
    uploaded = uploaded_bytes = 0

    def halt() -> bool:  # a run that no longer owns the task (a stale run woken up) stores nothing more
        return stop() or not owns()

    for rel in delta(base.files, current):
        if halt():
            raise Stopped()
        try:
            files[rel] = upload_file(store, prefix, project, rel, current[rel], halt)
        except FileNotFoundError:  # the engine deleted it meanwhile: not part of this checkpoint
            files.pop(rel, None)
            continue
        uploaded += 1
        uploaded_bytes += files[rel].size
    manifest = Manifest(
        base.uuid,
        base.run,
        base.stage,
        int(time.time() * 1000),
        base.engine,
        base.options,
        files,
        str(project),
    )
    if stop() or not owns():
        raise Stopped()
    store.put_bytes(prefix + MANIFEST, manifest.to_json())  # the commit point
    collect_garbage(store, manifest)
    return SaveResult(manifest, uploaded, uploaded_bytes)


def collect_garbage(store: ObjectStore, manifest: Manifest) -> int:
    """Delete the blobs the committed manifest does not name (older checkpoints, abandoned uploads)."""
    prefix = checkpoint_prefix(manifest.uuid)
    used = {prefix + e.key for e in manifest.files.values() if e.key}
    removed = 0
    for key, _size in store.list(prefix + BLOBS):
        if key not in used:
            store.delete(key)
            removed += 1
    return removed


# --- loading and restoring ----------------------------------------------------------------------------


def load(store: ObjectStore, uuid: str) -> Manifest | None:
    """The task's last complete checkpoint; None when it has none; CheckpointError when it is unreadable."""
    try:
        raw = store.get_bytes(checkpoint_prefix(uuid) + MANIFEST)
    except ObjectNotFound:
        return None
    return Manifest.from_json(raw, uuid)


def restore(
    store: ObjectStore, manifest: Manifest, project: Path, stop: Callable[[], bool] = lambda: False
) -> int:
    """Download every file of the checkpoint into `project`, checking size and hash; returns the bytes.

    On any failure the files restored so far are removed again and CheckpointError says why.
    """
    prefix = checkpoint_prefix(manifest.uuid)
    created: list[Path] = []
    total = 0
    try:
        for rel, entry in sorted(manifest.files.items()):
            if stop():
                raise Stopped()
            target = project / rel
            top = project / PurePosixPath(rel).parts[0]
            if not top.exists() and not top.is_symlink():
                created.append(top)
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry.link:
                target.unlink(missing_ok=True)
                os.symlink(entry.link, target)
                os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
                continue
            total += _download(store, prefix + entry.key, target, entry, rel)
            os.chmod(target, entry.mode & 0o7777)
            os.utime(
                target, ns=(entry.mtime_ns, entry.mtime_ns)
            )  # unchanged files stay out of the next delta
        relocate(project, manifest)
    except BaseException:
        for path in created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return total


RELOCATE_MAX_BYTES = 64 * 1024 * 1024


def relocate(project: Path, manifest: Manifest) -> list[str]:
    """Point what the checkpoint's old project folder wrote about itself at `project`; returns those files.

    ODM writes absolute paths under the project folder into some files (OpenSfM's image_list.txt, ...) and
    symbolic links, and another worker's scratch folder has another path. Links into the old folder are
    re-pointed; text files up to RELOCATE_MAX_BYTES naming it are rewritten with a new mtime, so the next
    checkpoint saves them as they are now. Binary files (a NUL byte in their first 8 KB) are left alone.
    """
    old, new = manifest.root, str(project)
    if not old or old == new:
        return []
    old_bytes, new_bytes = old.encode(), new.encode()
    moved = []
    for rel, entry in sorted(manifest.files.items()):
        target = project / rel
        if entry.link:
            if entry.link == old or entry.link.startswith(old + "/"):
                target.unlink(missing_ok=True)
                os.symlink(new + entry.link[len(old) :], target)
                moved.append(rel)
            continue
        if entry.size > RELOCATE_MAX_BYTES:
            continue
        data = target.read_bytes()
        if old_bytes not in data or b"\x00" in data[:8192]:
            continue
        target.write_bytes(data.replace(old_bytes, new_bytes))
        moved.append(rel)
    if moved:
        log.info("checkpoint of %s: %d file(s) re-pointed from %s to %s", manifest.uuid, len(moved), old, new)
    return moved


def _download(store: ObjectStore, key: str, target: Path, entry: Entry, rel: str) -> int:
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("wb") as f:
            for chunk in store.iter_range(key):
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
    except ObjectNotFound:
        raise CheckpointError(f"{rel} is missing from the store") from None
    if size != entry.size:
        raise CheckpointError(f"{rel} has {size} bytes instead of {entry.size}")
    if digest.hexdigest() != entry.sha256:
        raise CheckpointError(f"{rel} does not match its hash")
    return size


# --- the background saver -----------------------------------------------------------------------------


class Checkpointer:
    """Saves a checkpoint after each finished stage from one background thread: never more than one in flight.

    A stage that ends while a checkpoint is under way is remembered; only the latest such stage is saved
    next (coalescing). Errors are logged and told to the console; the previous checkpoint stays.
    """

    def __init__(
        self,
        store: ObjectStore,
        base: Manifest,
        project: Path,
        say: Callable[[str], None],
        owns: Callable[[], bool] = lambda: True,
        cancelled: threading.Event | None = None,
        max_bytes: int | None = None,
        saved_stage: str | None = None,
    ) -> None:
        self.store = store
        self.base = base  # files of the last complete checkpoint, run, engine, options
        self.project = project
        self.say = say
        self.owns = owns
        self.cancelled = cancelled or threading.Event()
        self.max_bytes = max_bytes
        self.saved_stage = saved_stage  # stage of the last complete checkpoint (None: none yet)
        self.saved = 0  # checkpoints committed by this run
        self.skipped = False  # over the size cap: no more checkpoints for this run
        self._pending: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()  # set while a checkpoint is being saved

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="checkpointer", daemon=True)
        self._thread.start()

    def stage_finished(self, stage: str) -> None:
        if stage not in STAGES or self.skipped:
            return
        with self._lock:
            if self._pending is None or STAGES.index(stage) > STAGES.index(self._pending):
                self._pending = stage
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight (tests and the bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._pending is None and not self.busy.is_set()
            if idle:
                return True
            time.sleep(0.05)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Stop: a checkpoint in flight is abandoned (its blobs are collected by the next commit)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.cancelled.is_set()

    def _loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while True:
            self._wake.wait()
            if self._stopping():
                return
            with self._lock:
                stage, self._pending = self._pending, None
                self._wake.clear()
                if stage is not None:
                    self.busy.set()
            if stage is None:
                continue
            try:
                self._save(stage)
            finally:
                self.busy.clear()

    def _save(self, stage: str) -> None:
        if self.saved_stage is not None and STAGES.index(stage) <= STAGES.index(self.saved_stage):
            return  # a stage skipped while resuming: the checkpoint already holds it
        base = Manifest(
            self.base.uuid, self.base.run, stage, 0, self.base.engine, self.base.options, self.base.files
        )
        started = time.monotonic()
        try:
            result = save(self.store, base, self.project, self._stopping, self.owns, self.max_bytes)
        except Stopped:
            return
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint never fails the run
            log.warning("checkpoint of %s after %s failed: %s", self.base.uuid, stage, exc)
            self.say(
                f"Checkpoint after stage {stage} failed ({type(exc).__name__}: {exc}); the previous one is kept."
            )
            return
        if result is None:
            self.skipped = True
            cap = (self.max_bytes or 0) / (1024 * 1024)
            self.say(
                f"Checkpoints stop here: the project folder is larger than ODM_FARM_CHECKPOINT_MAX_MB "
                f"({cap:g} MB); the checkpoint after stage {self.saved_stage or 'none'} is kept."
            )
            return
        self.base = result.manifest
        self.saved_stage = stage
        self.saved += 1
        log.info(
            "checkpoint of %s after %s: %d file(s), %.1f MB uploaded in %.1f s",
            self.base.uuid,
            stage,
            result.uploaded_files,
            result.uploaded_bytes / 1e6,
            time.monotonic() - started,
        )
        self.say(
            f"Checkpoint saved after stage {stage} ({result.uploaded_files} changed file(s), "
            f"{result.uploaded_bytes / 1e6:.1f} MB)."
        )
