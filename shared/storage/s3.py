"""S3Store: the object store on any S3-compatible server through one shared, thread-safe boto3 client."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

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

PART_SIZE = 8 * 1024 * 1024
# An object up to PART_SIZE is one PUT; a bigger one a multipart upload with parts sent while it streams.
PARTS_IN_FLIGHT = 3  # per object: parts being sent while the next one fills
PART_THREADS = 8  # per store (process): threads sending parts
UPLOAD_MEMORY = 8 * 1024 * 1024  # per process: upload bytes held in memory; past it, temp files
SPOOL_MEMORY = 256 * 1024  # an object this small always waits in memory for its PUT
MAX_PARTS = 10_000
_DELETE_BATCH = 1000
_Listing = list[
    tuple[str, int]
]  # an alias: inside S3Store "list" is the method  # the most keys one DeleteObjects call accepts

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket", "404", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidSecurity",
}


# A boto3 session is not thread-safe but the clients it makes are. One session for the process, used
# under a lock, makes every client after the first cheap (the service model is loaded once).
_SESSION_LOCK = threading.Lock()
_SESSION: boto3.session.Session | None = None


def _session() -> boto3.session.Session:
    global _SESSION
    if _SESSION is None:
        _SESSION = boto3.session.Session()
    return _SESSION


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range {start}-{'' if end is None else end}")


def content_disposition(filename: str) -> str:
    """An ``attachment`` header value that survives any file name (RFC 6266 with an ASCII fallback)."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


class _MemoryBudget:
    """Bytes of uploads this process may hold in memory at once; past it, a part waits in a temp file."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, amount: int) -> bool:
        with self._lock:
            if self.used + amount > self.limit:
                return False
            self.used += amount
            return True

    def give(self, amount: int) -> None:
        with self._lock:
            self.used -= amount


_MEMORY = _MemoryBudget(UPLOAD_MEMORY)
_PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # private: it can grow (a shared one cannot)


class _PartBuffer:
    """The bytes of one part (or of a whole small object): in memory while the process's budget allows,
    then in a temporary file. An object up to SPOOL_MEMORY stays in memory whatever the budget.

    The memory is an anonymous mmap of the part's size: pages are only used as they are written, and
    they go back to the system when the part is sent (a malloc'ed buffer of megabytes would stay in the
    allocator's arenas, one per thread, and the API's memory would only grow)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # mapped small, grown as bytes come: many small parts reserve little address space
        self.memory: mmap.mmap | None = mmap.mmap(-1, min(capacity, SPOOL_MEMORY), flags=_PRIVATE)
        self.file: Any = None
        self.path = ""  # the temporary file, once the part no longer fits in memory
        self.size = 0
        self.taken = 0  # bytes of the budget this buffer holds

    def add(self, data: memoryview) -> None:
        if self.memory is not None:
            end = self.size + len(data)
            if end <= SPOOL_MEMORY or _MEMORY.take(len(data)):
                if end > SPOOL_MEMORY:
                    self.taken += len(data)
                if end > len(self.memory):
                    self.memory.resize(min(self.capacity, max(end, 2 * len(self.memory))))
                self.memory.write(data)
                self.size = end
                return
            self._spill()
        self.file.write(data)
        self.size += len(data)

    def _spill(self) -> None:
        assert self.memory is not None
        fd, self.path = tempfile.mkstemp(prefix="odm-farm-upload-")
        self.file = os.fdopen(fd, "w+b")
        self.file.write(memoryview(self.memory)[: self.size])
        self._drop_memory()

    def close_file(self) -> None:
        """No more bytes: close the temporary file (it is opened again to be sent)."""
        if self.file is not None:
            self.file.close()

    def body(self) -> Any:
        """What boto3 sends: a file-like object from the start of the part's bytes."""
        if self.memory is not None:
            if self.size:
                self.memory.resize(self.size)  # its end is the part's end (an mmap cannot be 0 bytes)
            self.memory.seek(0)
            return self.memory if self.size else b""
        if self.file.closed:
            self.file = open(self.path, "rb")  # noqa: SIM115 - closed by release()
        self.file.flush()
        self.file.seek(0)
        return self.file

    def release(self) -> None:
        self._drop_memory()
        if self.file is not None:
            self.file.close()
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = ""

    def _drop_memory(self) -> None:
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self.taken:
            _MEMORY.give(self.taken)
            self.taken = 0


class _S3Writer(ObjectWriter):
    """An object up to PART_SIZE is one PUT at commit; a bigger one is a multipart upload whose parts are
    sent by the store's thread pool while the rest still streams in (PARTS_IN_FLIGHT at most per object).
    Memory is bounded: parts in memory come out of the process's UPLOAD_MEMORY budget, the rest waits in
    temporary files. A failed part aborts the whole multipart upload: nothing is left behind."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._full = store._full(key)
        self._buffer = _PartBuffer(PART_SIZE)
        self._upload_id: str | None = None
        self._sending: list[tuple[int, Future[str], _PartBuffer]] = []  # parts in flight, oldest first
        self._parts: list[dict[str, Any]] = []
        self._size = 0
        self._finished = False
        self._closed = False

    def _part_size(self) -> int:
        # grow the part size every 1000 parts so an object never runs out of S3's 10,000 parts
        return PART_SIZE * (1 + (len(self._parts) + len(self._sending)) // 1000)

    def write(self, data: bytes | memoryview) -> int:
        if self._closed or self._finished:
            raise ValueError("write to a finished object writer")
        view = memoryview(data)
        try:
            while view:
                if self._buffer.size >= self._part_size():
                    self._send_part()  # only when more follows: an object of exactly PART_SIZE is one PUT
                room = self._part_size() - self._buffer.size
                self._buffer.add(view[:room])
                view = view[room:]
        except BaseException:
            self.abort()
            raise
        self._size += len(data)
        return len(data)

    def _send_part(self) -> None:
        """Hand the current buffer to the thread pool as the next part; wait while too many are in flight."""
        store = self._store
        if self._upload_id is None:
            with store._errors(f"upload of {self._key!r}"):
                created = store._client.create_multipart_upload(
                    Bucket=store.bucket, Key=self._full, **store._put_args()
                )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + len(self._sending) + 1
        if number > MAX_PARTS:
            raise StorageError(f"object {self._key!r} is too large for one S3 upload")
        buffer = self._buffer
        future = store._pool().submit(self._upload_part, self._upload_id, number, buffer)
        self._sending.append((number, future, buffer))
        self._buffer = _PartBuffer(self._part_size())
        while len(self._sending) >= PARTS_IN_FLIGHT:
            self._wait_oldest()

    def _upload_part(self, upload_id: str, number: int, buffer: _PartBuffer) -> str:
        try:
            with self._store._errors(f"upload of {self._key!r}"):
                sent = self._store._client.upload_part(
                    Bucket=self._store.bucket,
                    Key=self._full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=buffer.body(),
                    ContentLength=buffer.size,
                )
            return str(sent["ETag"])
        finally:
            buffer.release()

    def _wait_oldest(self) -> None:
        number, future, _buffer = self._sending[0]
        etag = future.result()  # a failed part raises here; the caller aborts
        self._sending.pop(0)
        self._parts.append({"PartNumber": number, "ETag": etag})

    def finish(self) -> None:
        """Send what is left of a multipart upload. An object up to PART_SIZE waits for its PUT at commit,
        in memory or in its closed temporary file: a request of many parts holds no open file per part."""
        if self._closed or self._finished:
            return
        try:
            self._buffer.close_file()
            if self._upload_id is not None and (self._buffer.size or not (self._parts or self._sending)):
                self._send_part()
            while self._sending:
                self._wait_oldest()
        except BaseException:
            self.abort()
            raise
        self._finished = True

    def commit(self) -> int:
        if self._closed:
            raise ValueError("commit of a finished object writer")
        store = self._store
        try:
            if self._upload_id is None:
                with store._errors(f"upload of {self._key!r}"):
                    store._client.put_object(
                        Bucket=store.bucket,
                        Key=self._full,
                        Body=self._buffer.body(),
                        ContentLength=self._buffer.size,
                        **store._put_args(),
                    )
            else:
                self.finish()
                with store._errors(f"upload of {self._key!r}"):
                    store._client.complete_multipart_upload(
                        Bucket=store.bucket,
                        Key=self._full,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._buffer.release()
        return self._size

    def abort(self) -> None:
        self._closed = True
        self._buffer.release()
        for _number, future, buffer in self._sending:
            if future.cancel():
                buffer.release()
            else:
                with contextlib.suppress(Exception):
                    future.result()  # a part still being sent: wait, so the abort below is the last word
        self._sending = []
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            # best effort: a failed abort leaves an invisible upload that a bucket lifecycle rule reaps
            with contextlib.suppress(ClientError, BotoCoreError):
                self._store._client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._full, UploadId=upload_id
                )


class S3Store(ObjectStore):
    """Objects are ``<prefix>/<key>`` in one bucket. Safe to share between threads."""

    name = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        acl: str = "",
        create_bucket: bool = False,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        max_pool_connections: int = 64,
    ) -> None:
        if not bucket:
            raise StorageError("no S3 bucket configured")
        if bool(access_key) != bool(secret_key):
            raise StorageError("S3 access key and secret key must be given together")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            try:
                check_key(self.prefix)
            except InvalidKey:
                raise InvalidKey(f"invalid S3 key prefix: {prefix!r}") from None
        self.endpoint_url = endpoint_url or None
        self.region = region or "us-east-1"
        self.acl = acl
        self.create_bucket = create_bucket
        self._where = f"bucket {bucket!r} at {self.endpoint_url or f'AWS S3 ({self.region})'}"
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # many S3-compatible servers reject the CRC trailers newer botocore sends by default
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with _SESSION_LOCK:
            self._client = _session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                config=config,
            )
        self._transfer = TransferConfig(
            multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=8, use_threads=True
        )
        self._parts_pool: ThreadPoolExecutor | None = None
        self._parts_pool_pid = 0
        self._parts_pool_lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        """The threads that send the parts of streamed uploads (made in this process: not kept over a fork)."""
        with self._parts_pool_lock:
            if self._parts_pool is None or self._parts_pool_pid != os.getpid():
                self._parts_pool = ThreadPoolExecutor(PART_THREADS, thread_name_prefix="s3-parts")
                self._parts_pool_pid = os.getpid()
            return self._parts_pool

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The underlying boto3 client (thread-safe), for what the interface does not cover."""
        return self._client

    # --- helpers ----------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put_args(self) -> dict[str, str]:
        return {"ACL": self.acl} if self.acl else {}

    def _translate(self, exc: Exception, op: str, key: str | None) -> Exception:
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if key is not None and code in _NOT_FOUND:
                return ObjectNotFound(f"no object {key!r} in {self._where}")
            if code == "NoSuchBucket":
                return StorageError(f"S3 {self._where} does not exist")
            if code in _DENIED:
                return StorageError(
                    f"S3 denied {op} on {self._where} ({code}): check the access key, secret key and permissions"
                )
            message = exc.response.get("Error", {}).get("Message", "")
            return StorageError(f"S3 {op} failed on {self._where}: {code} {message}".rstrip())
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no S3 credentials for {self._where}: set the access and secret keys "
                "or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY variables"
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return StorageError(f"cannot reach S3 {self._where}: {exc}")
        return StorageError(f"S3 {op} failed on {self._where}: {exc}")

    @contextlib.contextmanager
    def _errors(self, op: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            cause = exc
            # transfers wrap the ClientError; unwrap it to recognise a 404 or a denial
            if not isinstance(exc, ClientError) and isinstance(exc.__context__, ClientError):
                cause = exc.__context__
            raise self._translate(cause, op, key) from exc

    # --- the interface ----------------------------------------------------------------------
    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NO_BUCKET:
                raise self._translate(exc, "check", None) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._translate(exc, "check", None) from exc
        if not self.create_bucket:
            raise StorageError(f"S3 {self._where} does not exist (create it, or enable s3_create_bucket)")
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**args)
        except ClientError as exc:
            if _error_code(exc) != "BucketAlreadyOwnedByYou":  # another replica won the race
                raise self._translate(exc, "create bucket", None) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._translate(exc, "create bucket", None) from exc

    def writer(self, key: str) -> ObjectWriter:
        self._full(key)
        return _S3Writer(self, key)

    def put_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        with self._errors(f"upload of {key!r}"):
            self._client.upload_file(
                str(path), self.bucket, full, ExtraArgs=self._put_args() or None, Config=self._transfer
            )

    def get_to_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # download_file writes a temporary file and renames it: the target is never half-written
        with self._errors("download", key):
            self._client.download_file(self.bucket, full, str(path), Config=self._transfer)

    def size(self, key: str) -> int:
        full = self._full(key)
        with self._errors("head", key):
            head = self._client.head_object(Bucket=self.bucket, Key=full)
        return int(head["ContentLength"])

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK
    ) -> Iterator[bytes]:
        _check_range(start, end)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            with self._errors("read", key):
                body = self._client.get_object(**args)["Body"]
        except StorageError as exc:
            # a range past the end reads nothing, as a file does
            if isinstance(exc.__cause__, ClientError) and _error_code(exc.__cause__) == "InvalidRange":
                return iter(())
            raise
        return self._stream(body, key, chunk_size)

    def _stream(self, body: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._errors("read", key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return [(self._logical(full), size) for full, size in self._list_full(prefix)]

    def _logical(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _list_full(self, prefix: str) -> _Listing:
        check_prefix(prefix)
        full_prefix = self._full(prefix[:-1]) + "/"
        found: _Listing = []
        with self._errors("list"):
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full_prefix
            ):
                found.extend((obj["Key"], int(obj["Size"])) for obj in page.get("Contents", ()))
        return sorted(found)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors(f"delete of {key!r}"):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        keys = [full for full, _size in self._list_full(prefix)]
        for first in range(0, len(keys), _DELETE_BATCH):
            batch = keys[first : first + _DELETE_BATCH]
            with self._errors("delete"):
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            if errors := answer.get("Errors"):
                first_error = errors[0]
                raise StorageError(
                    f"S3 could not delete {len(errors)} object(s) under {prefix!r} in {self._where}: "
                    f"{first_error.get('Key')}: {first_error.get('Code')} {first_error.get('Message', '')}".rstrip()
                )
        return len(keys)

    def presigned_url(self, key: str, expires: int = 3600, filename: str | None = None) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        with self._errors("presign", key):
            url: str = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        return url
