"""LocalStore: the object store as plain files under one root folder, written atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.storage.base import (
    CHUNK,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    check_key,
    check_prefix,
)

# Unfinished writes live beside their destination under this name; list() never shows them and no key
# may use it, so a reader never sees half an object.
TEMP_PREFIX = ".~tmp."


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range {start}-{'' if end is None else end}")


class _LocalWriter(ObjectWriter):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file, self._temp = _open_temp(path.parent)
        self._size = 0
        self._finished = False  # the temp file is complete and closed
        self._closed = False  # committed or aborted

    def write(self, data: bytes | memoryview) -> int:
        if self._finished or self._closed:
            raise ValueError("write to a finished object writer")
        self._file.write(data)
        self._size += len(data)
        return len(data)

    def finish(self) -> None:
        if self._finished or self._closed:
            return
        self._finished = True
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self._closed = True
            self._discard()
            raise StorageError(f"cannot store {self._path}: {exc}") from exc

    def commit(self) -> int:
        if self._closed:
            raise ValueError("commit of a finished object writer")
        self.finish()
        self._closed = True
        try:
            os.replace(self._temp, self._path)
        except OSError as exc:
            self._discard()
            raise StorageError(f"cannot store {self._path}: {exc}") from exc
        return self._size

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._discard()

    def _discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(folder: Path) -> tuple[BinaryIO, str]:
    # a concurrent delete_prefix may remove the folder between mkdir and mkstemp: try again once
    for attempt in (1, 2):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
            return os.fdopen(fd, "wb"), temp
        except FileNotFoundError:
            if attempt == 2:
                raise
        except OSError as exc:
            raise StorageError(f"cannot write in {folder}: {exc}") from exc
    raise AssertionError("unreachable")


class LocalStore(ObjectStore):
    """Objects are files at ``root/<key>``."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
            raise InvalidKey(f"invalid object key: {key!r}")
        path = self.root / key
        # resolve() follows symlinks: a link planted inside the root must not lead outside it
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"object key leaves the store: {key!r}")
        return path

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            file, temp = _open_temp(self.root)
            file.close()
            os.unlink(temp)
        except OSError as exc:
            raise StorageError(f"local storage folder {self.root} is not writable: {exc}") from exc

    def writer(self, key: str) -> ObjectWriter:
        return _LocalWriter(self._path(key))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source:
            self.put_stream(key, source)

    def get_to_file(self, key: str, path: Path) -> None:
        target = Path(path)
        with self._open(key, self._path(key)) as source:
            file, temp = _open_temp(target.parent)
            try:
                with file:
                    shutil.copyfileobj(source, file, CHUNK)
                os.replace(temp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise

    def _open(self, key: str, path: Path) -> BinaryIO:
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r}") from None
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r}")
        return stat.st_size

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK
    ) -> Iterator[bytes]:
        _check_range(start, end)
        # opened here, not in the generator, so a missing object fails at the call
        file = self._open(key, self._path(key))
        return self._read(file, start, end, chunk_size)

    @staticmethod
    def _read(file: BinaryIO, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
        with file:
            file.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                data = file.read(want)
                if not data:
                    return
                if remaining is not None:
                    remaining -= len(data)
                yield data

    def presigned_url(self, key: str, expires: int = 3600, filename: str | None = None) -> str | None:
        self._path(key)
        return None

    def make_durable(self, prefix: str) -> None:
        """Objects are fsynced when written, before their rename: fsync the folders holding the renames
        (and, up to the root, the folders holding the folders), so that the names survive too."""
        check_prefix(prefix)
        folder = self._path(prefix[:-1])
        if not folder.is_dir():
            return
        try:
            for dirpath, _dirs, _files in os.walk(folder):
                _fsync_folder(dirpath)
            parent = folder.parent
            while parent.is_relative_to(self.root):
                _fsync_folder(str(parent))
                if parent == self.root:
                    break
                parent = parent.parent
        except OSError as exc:
            raise StorageError(f"cannot make {folder} durable: {exc}") from exc

    def list(self, prefix: str) -> list[tuple[str, int]]:
        check_prefix(prefix)
        folder = self._path(prefix[:-1])
        found: list[tuple[str, int]] = []
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:  # deleted while we walked
                    continue
                found.append((path.relative_to(self.root).as_posix(), size))
        return sorted(found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except IsADirectoryError:
            pass  # a "folder" is not an object
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix)
        count = len(self.list(prefix))
        folder = self._path(prefix[:-1])
        try:
            shutil.rmtree(folder)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except OSError as exc:
            raise StorageError(f"cannot delete {folder}: {exc}") from exc
        return count
