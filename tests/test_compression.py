"""gzip bodies with shared lines spliced in (compression.py): standard gzip, the bytes of the lines."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from powersync_django.compression import GzipLines
from powersync_django.protocol import SharedLine, encode_ndjson


def _line(i: int, shared: bool) -> dict:
    # Own lines repeat each other (the compressor refers back to earlier ones whenever it may), shared lines
    # differ from them: a reference across a spliced line would decompress to the wrong bytes.
    row = (f"shared row data {i} " if shared else "own row data, the same in every own line ") * 20
    line = {"data": {"bucket": "b", "data": [{"op_id": str(i), "data": row}]}}
    return SharedLine(line) if shared else line


@pytest.mark.parametrize("pattern", ["ssoos", "osso", "oooo", "ssss", "soso", ""])
def test_spliced_shared_lines_decompress_to_the_stream(pattern):
    streams = [GzipLines(1, "ndjson"), GzipLines(1, "ndjson")]
    lines = [_line(i, kind == "s") for i, kind in enumerate(pattern)]
    bodies = [bytearray(), bytearray()]
    for line in lines:
        for stream, body in zip(streams, bodies, strict=True):
            body += stream.compress(line, encode_ndjson(line))
    for stream, body in zip(streams, bodies, strict=True):
        body += stream.finish()
        # gzip.decompress checks the CRC-32 and length of the trailer.
        assert gzip.decompress(bytes(body)) == b"".join(orjson.dumps(line) + b"\n" for line in lines)
    assert bodies[0] == bodies[1]


def test_each_line_is_readable_before_the_next_and_shared_bytes_are_made_once():
    stream = GzipLines(1, "ndjson")
    inflate = zlib.decompressobj(31)
    shared = _line(1, True)
    for line in (_line(0, False), shared, _line(2, False), shared):
        chunk = encode_ndjson(line)
        assert inflate.decompress(stream.compress(line, chunk)) == chunk
    assert list(shared._encoded) == ["ndjson", "ndjson+deflate1"]


def test_without_an_encoding_name_shared_lines_go_through_the_stream_compressor():
    stream = GzipLines(1, None)
    line = _line(0, True)
    body = stream.compress(line, encode_ndjson(line)) + stream.finish()
    assert gzip.decompress(body) == encode_ndjson(line)
    assert list(line._encoded) == ["ndjson"]
