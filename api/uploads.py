"""Streaming multipart uploads: each file part goes straight from the request into the object store, within limits.

Limits are checked while the body streams, so chunked requests (no Content-Length) are held to them too:
`max_upload_mb` bytes per request, `max_files_per_request` file parts, MAX_FIELDS small fields of at most
MAX_FIELD_MEMORY bytes each. One request is all or nothing: its parts are committed together at the end,
and a refused or broken request leaves no object behind. Each part's writer is finished as soon as the
part ends, so a request of many parts never holds more than one open file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import request
from werkzeug.wsgi import get_input_stream

from api.fields import json_fields
from api.multipart import Event, MultipartParser, PartEnd, PartStart
from shared import metrics
from shared.errors import InvalidRequest
from shared.node import Node
from shared.storage import ObjectWriter

MAX_FIELDS = 1000
MAX_FIELD_MEMORY = 2 * 1024 * 1024  # options, outputs and names are small; a bigger field is hostile
MAX_HEADER_BYTES = 64 * 1024  # the headers of one part
# gunicorn's body reader copies what it holds beyond each read: 256 KB reads cost the least CPU per byte
READ_SIZE = 256 * 1024
MB = 1024 * 1024


@dataclass
class _Part:
    name: str
    writer: ObjectWriter
    size: int = 0


@dataclass
class Upload:
    form: dict[str, str]
    files: dict[str, int] = field(default_factory=dict)  # stored name -> size


class _Receiver:
    """One multipart body, event by event: fields kept as text, file parts streamed to the store."""

    def __init__(self, node: Node, uuid: str) -> None:
        self.node = node
        self.uuid = uuid
        settings = node.settings
        self.max_bytes = settings.max_upload_mb * MB if settings.max_upload_mb else None
        self.max_files = settings.max_files_per_request
        self.fields: dict[str, str] = {}
        self.latest: dict[str, _Part] = {}  # the last copy of a name wins, as when a client retries a file
        self.parts: list[_Part] = []
        self.files_seen = 0
        self.fields_seen = 0
        self.current: _Part | list[bytes] | None = None  # the part being received (None: skipped)
        self.field_name = ""
        self.field_size = 0

    def too_large(self) -> InvalidRequest:
        return InvalidRequest(
            f"Request too large: the limit is {self.node.settings.max_upload_mb} MB per request.",
            no_retry=True,
        )

    def run(self, boundary: bytes) -> None:
        length = request.content_length
        if self.max_bytes is not None and length is not None and length > self.max_bytes:
            raise self.too_large()  # before reading anything
        stream = get_input_stream(request.environ, max_content_length=None)
        parser = MultipartParser(boundary, max_header_bytes=MAX_HEADER_BYTES)
        received = 0
        while True:
            block = stream.read(READ_SIZE)
            received += len(block)
            if self.max_bytes is not None and received > self.max_bytes:
                raise self.too_large()
            for event in parser.feed(block):  # an empty block: the body ended
                self.handle(event)
            if not block:
                return

    def handle(self, event: Event) -> None:
        current = self.current
        if isinstance(event, memoryview):
            if isinstance(current, _Part):
                current.writer.write(event)
                current.size += len(event)
            elif isinstance(current, list):
                current.append(bytes(event))
                self.field_size += len(event)
                if self.field_size > MAX_FIELD_MEMORY:
                    raise InvalidRequest(
                        f"Request too large: a form field is over {MAX_FIELD_MEMORY // MB} MB.", no_retry=True
                    )
        elif isinstance(event, PartStart):
            if event.filename is not None:
                self.current = self.start_file(event.filename)
            else:
                self.fields_seen += 1
                if self.fields_seen > MAX_FIELDS:
                    raise InvalidRequest(f"Too many fields: at most {MAX_FIELDS} per request.", no_retry=True)
                self.current, self.field_name, self.field_size = [], event.name or "", 0
        elif isinstance(event, PartEnd):
            if isinstance(current, _Part):
                current.writer.finish()
            elif isinstance(current, list):
                self.fields[self.field_name] = b"".join(current).decode("utf-8", "replace")
            self.current = None

    def start_file(self, filename: str) -> _Part | None:
        if not filename:
            return None  # an empty file input: browsers send it when nothing was chosen
        self.files_seen += 1
        if self.max_files is not None and self.files_seen > self.max_files:
            raise InvalidRequest(
                f"Too many files in one request: at most {self.max_files} files per request.", no_retry=True
            )
        name, key = self.node.upload_key(self.uuid, filename)
        earlier = self.latest.pop(name, None)
        if earlier is not None:  # the same file again in this request: only the last copy is kept
            self.parts.remove(earlier)
            earlier.writer.abort()
        part = _Part(name, self.node.store.writer(key))
        self.parts.append(part)
        self.latest[name] = part
        return part

    def abort(self) -> None:
        for part in self.parts:
            part.writer.abort()


def receive(node: Node, uuid: str) -> Upload:
    """Parse the request, streaming file parts to <uuid>/inputs/<name>. All or nothing for one request."""
    receiver = _Receiver(node, uuid)
    content_type = request.mimetype
    try:
        if content_type == "multipart/form-data":
            boundary = request.mimetype_params.get("boundary", "")
            if not boundary:
                raise InvalidRequest("Malformed upload: multipart body without a boundary.", no_retry=True)
            receiver.run(boundary.encode("latin-1", "replace"))
            fields = receiver.fields
        elif content_type == "application/x-www-form-urlencoded":
            fields = {k: request.form.get(k, "") for k in request.form}
        elif content_type == "application/json":
            fields = json_fields()
        else:
            fields = {}
        sizes = {name: part.size for name, part in receiver.latest.items()}
        node.refuse_empty_images(sizes)
        node.check_image_limit(uuid, list(sizes))
        node.check_storage(uuid, sizes)
    except BaseException as exc:
        receiver.abort()
        if isinstance(exc, InvalidRequest):
            raise
        if isinstance(exc, ValueError):
            raise InvalidRequest(f"Malformed upload: {exc}", no_retry=True) from None
        raise
    upload = Upload(fields)
    for part in receiver.parts:
        part.writer.commit()
        upload.files[part.name] = part.size
    metrics.count(node.tasks.r, "upload_bytes", sum(upload.files.values()))
    return upload
