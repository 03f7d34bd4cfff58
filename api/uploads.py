"""Streaming multipart uploads: each file part goes straight from the request into the object store."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import request
from werkzeug.formparser import parse_form_data

from api.fields import json_fields
from shared.errors import InvalidRequest
from shared.node import Node
from shared.storage import ObjectWriter

MAX_FORM_PARTS = 100_000
MAX_FIELD_MEMORY = 2 * 1024 * 1024  # options, outputs and names are small; a bigger field is hostile


class _CountingWriter:
    """What werkzeug writes a file part into: counts bytes and forwards them to the store."""

    def __init__(self, name: str, writer: ObjectWriter) -> None:
        self.name = name
        self.writer = writer
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return self.writer.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


@dataclass
class Upload:
    form: dict[str, str]
    files: dict[str, int] = field(default_factory=dict)  # stored name -> size


def receive(node: Node, uuid: str) -> Upload:
    """Parse the request, streaming file parts to <uuid>/inputs/<name>. All or nothing for one request."""
    writers: list[_CountingWriter] = []

    def stream_factory(total_content_length, content_type, filename, content_length=None):
        if not filename:
            return _Discard()  # an empty file input: browsers send it when nothing was chosen
        name, key = node.upload_key(uuid, filename)
        counting = _CountingWriter(name, node.store.writer(key))
        writers.append(counting)
        return counting

    content_type = request.mimetype
    try:
        if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            _, form, _ = parse_form_data(
                request.environ,
                stream_factory=stream_factory,
                silent=False,
                max_form_memory_size=MAX_FIELD_MEMORY,
                max_form_parts=MAX_FORM_PARTS,
            )
            fields = {k: form.get(k, "") for k in form}
        elif content_type == "application/json":
            fields = json_fields()
        else:
            fields = {}
        # the last copy of a name wins, as when a client retries a file
        latest = {w.name: w for w in writers}
        node.refuse_empty_images({name: w.size for name, w in latest.items()})
        node.check_image_limit(uuid, list(latest))
    except BaseException as exc:
        for w in writers:
            w.writer.abort()
        if isinstance(exc, InvalidRequest):
            raise
        if isinstance(exc, ValueError):
            raise InvalidRequest(f"Malformed upload: {exc}", no_retry=True) from None
        raise
    upload = Upload(fields)
    for w in writers:
        if latest[w.name] is w:
            w.writer.commit()
            upload.files[w.name] = w.size
        else:
            w.writer.abort()
    return upload
