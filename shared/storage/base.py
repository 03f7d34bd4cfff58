"""The object store interface every implementation (local directory, S3) provides, and its errors.

Errors::

    StorageError             the store cannot be used (unreachable, misconfigured, denied)
    ObjectNotFound           a key that does not exist (also a FileNotFoundError)
    InvalidKey               a key that would leave the store's namespace (also a ValueError)

Keys are logical, '/'-separated and relative (``<uuid>/inputs/a.jpg``); an implementation adds its own
root or bucket prefix. A key never starts with '/', never contains '..', '.', '' segments or a NUL.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """The object store cannot be used: unreachable, misconfigured or access denied."""


class ObjectNotFound(FileNotFoundError):
    """No object under that key."""


class InvalidKey(ValueError):
    """A key that would escape the store's namespace."""


def check_key(key: str) -> str:
    if not key or key.startswith("/") or "\x00" in key or "\\" in key:
        raise InvalidKey(f"invalid object key: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid object key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A prefix is a key that ends with '/'."""
    if not prefix.endswith("/"):
        raise InvalidKey(f"a prefix must end with '/': {prefix!r}")
    check_key(prefix[:-1])
    return prefix


class ObjectWriter(abc.ABC):
    """A streamed upload: write() any number of times, then commit() (visible) or abort() (nothing).

    finish() says that all the bytes were written: the writer gives back what it held open while
    writing (a file, a spool on disk) and keeps only what commit() or abort() needs, so a request that
    streams many parts before committing them all holds no open file per part.
    """

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> int: ...

    def finish(self) -> None:  # noqa: B027 - a no-op for writers that hold nothing open
        """No more writes; release open files. commit() or abort() still follows."""

    @abc.abstractmethod
    def commit(self) -> int:
        """Make the object visible under its key; returns its size."""

    @abc.abstractmethod
    def abort(self) -> None: ...

    # werkzeug's form parser treats the stream it is given as a file
    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def flush(self) -> None:  # noqa: B027 - a no-op hook, not an abstract method
        pass

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class ObjectStore(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StorageError with a clear message when the store cannot be used."""

    @abc.abstractmethod
    def writer(self, key: str) -> ObjectWriter: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as w:
            w.write(data)

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        w = self.writer(key)
        try:
            while chunk := stream.read(CHUNK):
                w.write(chunk)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    @abc.abstractmethod
    def get_to_file(self, key: str, path: Path) -> None: ...

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_range(key))

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound when missing."""

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK
    ) -> Iterator[bytes]:
        """Bytes start..end (end inclusive, None = to the end). ObjectNotFound is raised before the first chunk."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object whose key starts with prefix (a key ending in '/'), sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; a missing one is not an error."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under prefix; returns how many."""

    def presigned_url(self, key: str, expires: int = 3600, filename: str | None = None) -> str | None:
        """A URL a client can GET (with Range) directly, or None when the store cannot give one."""
        return None

    def make_durable(self, prefix: str) -> None:  # noqa: B027 - a no-op where the server sees to it (S3)
        """Once this returns, every object committed under prefix survives a power loss."""
