"""A streaming multipart/form-data parser that hands file data on without copying it.

werkzeug's MultipartDecoder copies every byte of a part several times (into its buffer, out of it, into
the event) and allocates a new buffer of the read size for each read; on uploads of many megabytes that was
most of the API's CPU time. This parser finds the boundary with ``bytes.find`` in the block it was given and
yields ``memoryview`` slices of that block: a file's bytes are copied only by the kernel, from the socket
and into the store. Only the few bytes that may begin a boundary at the end of a block are kept back.

It accepts what werkzeug accepted: CRLF, LF or CR before a boundary, spaces or tabs after it, a preamble
before the first boundary, and headers folded over several lines. Events, in order::

    PartStart(name, filename, headers)   filename is None for a plain field
    memoryview                           the part's bytes, in as many pieces as the body came in
    PartEnd()
    ...
    Done()                               the closing boundary; anything after it is ignored

``feed(block)`` yields the events a block completes; ``feed(b"")`` says the body ended (ValueError when it
ended inside a part). Malformed input raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from werkzeug.datastructures import Headers
from werkzeug.http import parse_options_header

_LINE_BREAKS = (b"\r\n", b"\n", b"\r")
_BLANK_LINE_RE = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_HEADER_CONTINUATION_RE = re.compile(rb"(?:\r\n|\n|\r)[ \t]")
_PADDING = b" \t"  # allowed between a boundary and its line break (RFC 2046 transport padding)


@dataclass(frozen=True)
class PartStart:
    name: str | None
    filename: str | None
    headers: Headers


@dataclass(frozen=True)
class PartEnd:
    pass


@dataclass(frozen=True)
class Done:
    pass


Event = PartStart | PartEnd | Done | memoryview

_PREAMBLE, _HEADERS, _DATA, _EPILOGUE = range(4)


@dataclass(frozen=True)
class _Boundary:
    start: int  # the line break before "--boundary" (or "--boundary" itself in the preamble)
    end: int  # just after the boundary line
    closing: bool


@dataclass(frozen=True)
class _Incomplete:
    start: int  # a boundary line may begin here, but the block ends before it can be told


class MultipartParser:
    """One multipart body. ``max_header_bytes`` bounds a part's header block."""

    def __init__(self, boundary: bytes, max_header_bytes: int = 64 * 1024) -> None:
        if not boundary:
            raise ValueError("empty multipart boundary")
        self.dash_boundary = b"--" + boundary
        self.max_header_bytes = max_header_bytes
        self.state = _PREAMBLE
        self.held = b""  # bytes received but not handed on yet: a possible boundary start, or headers

    @property
    def done(self) -> bool:
        return self.state == _EPILOGUE

    def feed(self, block: bytes) -> Iterator[Event]:
        """The events `block` completes; an empty block is the end of the body."""
        if self.state == _EPILOGUE:
            return  # the epilogue is ignored
        if not block:
            raise ValueError("the body ended before the last part")
        # held bytes are few (a cut boundary, or headers): joining them copies the block once per part
        data = self.held + block if self.held else block
        self.held = b""
        yield from self._parse(data)

    def _parse(self, data: bytes) -> Iterator[Event]:
        pos = 0
        while pos < len(data):
            if self.state == _HEADERS:
                match = _BLANK_LINE_RE.search(data, pos)
                if match is None:
                    self.held = data[pos:]
                    if len(self.held) > self.max_header_bytes:
                        raise HeadersTooLarge(self.max_header_bytes)
                    return
                yield self._part_start(data[pos : match.start()])
                pos = match.end()
                self.state = _DATA
                continue
            # the preamble or a part's data, up to the next boundary line
            found = self._find_boundary(data, pos)
            end = len(data) if found is None else found.start
            if found is None or isinstance(found, _Incomplete):
                end = self._cut_boundary_start(data, pos) if found is None else end
                self.held = data[end:]
            if self.state == _DATA and end > pos:
                yield memoryview(data)[pos:end]
            if not isinstance(found, _Boundary):
                return
            if self.state == _DATA:
                yield PartEnd()
            pos = found.end
            if found.closing:
                self.state = _EPILOGUE
                yield Done()
                return
            self.state = _HEADERS

    def _find_boundary(self, data: bytes, pos: int) -> _Boundary | _Incomplete | None:
        dash = self.dash_boundary
        search = pos
        while (index := data.find(dash, search)) >= 0:
            search = index + 1
            start = self._line_break_before(data, pos, index)
            if start is None:
                continue  # "--boundary" inside the data, not at the start of a line
            end = index + len(dash)
            if len(data) < end + 2:
                return _Incomplete(start)
            if data[end : end + 2] == b"--":
                return _Boundary(start, end + 2, closing=True)
            while end < len(data) and data[end] in _PADDING:
                end += 1
            if end == len(data) or data[end:] == b"\r":
                return _Incomplete(start)  # the line break may follow
            for line_break in _LINE_BREAKS:
                if data.startswith(line_break, end):
                    return _Boundary(start, end + len(line_break), closing=False)
        return None

    def _line_break_before(self, data: bytes, pos: int, index: int) -> int | None:
        if index - 2 >= pos and data[index - 2 : index] == b"\r\n":
            return index - 2
        if index - 1 >= pos and data[index - 1] in b"\r\n":
            return index - 1
        # the first boundary may follow any preamble, with or without a line break
        return index if self.state == _PREAMBLE else None

    def _cut_boundary_start(self, data: bytes, pos: int) -> int:
        """Where a boundary line cut off by the end of the block may begin; len(data) when nowhere."""
        dash = self.dash_boundary
        starts = [line_break + dash for line_break in _LINE_BREAKS]
        if self.state == _PREAMBLE:
            starts.append(dash)
        for index in range(max(pos, len(data) - len(dash) - 2), len(data)):
            if data[index] in b"\r\n-":
                tail = data[index:]
                if any(start.startswith(tail) for start in starts):
                    return index
        return len(data)

    def _part_start(self, raw: bytes) -> PartStart:
        if len(raw) > self.max_header_bytes:
            raise HeadersTooLarge(self.max_header_bytes)
        headers = _parse_headers(raw)
        if "content-disposition" not in headers:
            raise ValueError("Missing Content-Disposition header")
        _disposition, options = parse_options_header(headers["content-disposition"])
        return PartStart(options.get("name"), options.get("filename"), headers)


class HeadersTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the headers of a part are over {limit // 1024} KB")


def _parse_headers(raw: bytes) -> Headers:
    headers: list[tuple[str, str]] = []
    for line in _HEADER_CONTINUATION_RE.sub(b" ", raw).splitlines():
        line = line.strip(b" \t")
        if line:
            name, _, value = line.decode().partition(":")
            headers.append((name.strip(" \t"), value.strip(" \t")))
    return Headers(headers)
