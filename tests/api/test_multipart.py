"""The streaming multipart parser: the same parts as werkzeug's decoder, however the body is cut, without copying."""

from __future__ import annotations

import os
import random

import pytest
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from api.multipart import Done, HeadersTooLarge, MultipartParser, PartEnd, PartStart

Parts = list[tuple[str | None, str | None, bytes]]


def parse(body: bytes, boundary: bytes, cuts: list[int] | None = None) -> Parts:
    """The parts our parser finds when the body arrives in blocks cut at `cuts`."""
    parser = MultipartParser(boundary)
    bounds = [0, *(cuts or []), len(body)]
    parts: Parts = []
    current: list = []
    for block in [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a] + [b""]:
        for event in parser.feed(block):
            if isinstance(event, PartStart):
                current = [event.name, event.filename, b""]
            elif isinstance(event, memoryview):
                current[2] += bytes(event)
            elif isinstance(event, PartEnd):
                parts.append(tuple(current))  # type: ignore[arg-type]
    return parts


def werkzeug_parse(body: bytes, boundary: bytes) -> Parts:
    """werkzeug's decoder, given the body in one block (it mishandles a CRLF cut between two blocks)."""
    decoder = MultipartDecoder(boundary)
    parts: Parts = []
    current: list = []
    for block in (body, None):
        decoder.receive_data(block)
        event = decoder.next_event()
        while not isinstance(event, NeedData | Epilogue):
            if isinstance(event, Field | File):
                current = [event.name, getattr(event, "filename", None), b""]
            elif isinstance(event, Data):
                current[2] += event.data
                if not event.more_data:
                    parts.append(tuple(current))  # type: ignore[arg-type]
            event = decoder.next_event()
    return parts


def random_body(rnd: random.Random, boundary: bytes) -> bytes:
    """A body whose data is full of line breaks, dashes and near-boundaries."""
    line_break = rnd.choice([b"\r\n", b"\r\n", b"\n"])
    body = rnd.choice([b"", b"preamble" + line_break, b"pre"])
    for i in range(rnd.randrange(0, 4)):
        disposition = b'Content-Disposition: form-data; name="f%d"' % i
        if rnd.random() < 0.5:
            disposition += b'; filename="a%d.jpg"' % i
        data = b""
        for _ in range(rnd.choice([0, 1, 5, 50, 300])):
            pick = rnd.random()
            if pick < 0.05:
                data += b"--" + boundary[: rnd.randrange(len(boundary))]
            elif pick < 0.07:
                data += b"\r\n--" + boundary + b"X"  # a boundary followed by text is data
            elif pick < 0.35:
                data += rnd.choice([b"\r", b"\n", b"-", b"--", b"\r\n", b"\r\n--"])
            else:
                data += rnd.randbytes(rnd.randrange(1, 20))
        padding = rnd.choice([b"", b" \t"])
        body += b"--" + boundary + padding + line_break + disposition + line_break
        body += b"Content-Type: x/y" + line_break + line_break + data + line_break
    return body + b"--" + boundary + b"--" + rnd.choice([b"", line_break, b"epilogue" + line_break])


def test_same_parts_as_werkzeug_however_the_body_is_cut() -> None:
    rnd = random.Random(20261202)
    for _ in range(3000):
        boundary = rnd.choice([b"zz", b"abc123", rnd.randbytes(8).hex().encode()])
        body = random_body(rnd, boundary)
        cuts = sorted({rnd.randrange(1, len(body)) for _ in range(rnd.randrange(0, 8))})
        assert parse(body, boundary, cuts) == werkzeug_parse(body, boundary), (body, cuts)


def test_every_cut_of_a_small_body() -> None:
    boundary = b"b0und"
    body = (
        b'--b0und\r\nContent-Disposition: form-data; name="options"\r\n\r\n[]\r\n'
        b'--b0und \r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
        b"\r\n--b0un\r\n-\r\r\n\r\n--b0und--\r\n"
    )
    expected = [("options", None, b"[]"), ("images", "a.jpg", b"\r\n--b0un\r\n-\r\r\n")]
    for first in range(1, len(body)):
        for second in range(first + 1, len(body), 7):
            assert parse(body, boundary, [first, second]) == expected, (first, second)


def test_file_data_is_handed_on_without_copying() -> None:
    boundary = b"xyz"
    head = b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
    data = os.urandom(256 * 1024)
    parser = MultipartParser(boundary)
    events = list(parser.feed(head)) + list(parser.feed(data))
    views = [e for e in events if isinstance(e, memoryview)]
    assert views and all(view.obj is data for view in views)  # slices of the block given, not copies
    tail = list(parser.feed(b"\r\n--xyz--\r\n"))
    assert b"".join(bytes(v) for v in views + [e for e in tail if isinstance(e, memoryview)]) == data
    assert isinstance(tail[-1], Done) and parser.done
    assert list(parser.feed(b"anything after the end is ignored")) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"garbage",
        b'--zz\r\nContent-Disposition: form-data; name="a"\r\n\r\nno closing boundary',
        b"--zz\r\nContent-Type: text/plain\r\n\r\n--zz--",  # a part without Content-Disposition
    ],
)
def test_malformed_bodies_are_value_errors(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse(body, b"zz")


def test_part_headers_are_bounded() -> None:
    parser = MultipartParser(b"zz", max_header_bytes=1024)
    with pytest.raises(HeadersTooLarge):
        for block in (b"--zz\r\nContent-Disposition: form-data; name=a\r\nX-Pad: ", b"p" * 2000):
            list(parser.feed(block))
