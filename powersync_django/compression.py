"""gzip of a sync stream's body, line by line, with the compressed bytes of shared lines made once.

Each line is flushed (``Z_SYNC_FLUSH``) so that no line waits for the next. A stream's own lines go through
its own compressor, which keeps the history of its earlier lines. A :class:`~powersync_django.protocol.SharedLine`
(one that many streams send, e.g. a change's data line fanned out to every stream holding its bucket) is
deflated once, by a fresh compressor, and those bytes are spliced into every stream's body: they refer to
nothing before them, and the stream's compressor is reset (``Z_FULL_FLUSH``) before a splice, so its later
output does not refer across it either. The gzip header, CRC-32 and length are the stream's own. The body is
a standard gzip member: any gzip decoder reads it.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from .protocol import SharedLine

# ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown)
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class GzipLines:
    """The gzip body of one stream: :meth:`compress` each encoded line, :meth:`finish` at the end."""

    def __init__(self, level: int, kind: str | None) -> None:
        """``kind``: the encoding of the lines (the key of shared lines' cached bytes); None: never splice."""
        self.level = level
        self.kind = None if kind is None else f"{kind}+deflate{level}"
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self._started = False
        self._history = False  # the compressor's output since its last reset may refer back

    def compress(self, line: Any, chunk: bytes) -> bytes:
        """The compressed bytes of ``chunk``, the encoding of ``line``."""
        head = b""
        if not self._started:
            head, self._started = HEADER, True
        self._crc = zlib.crc32(chunk, self._crc)
        self._size += len(chunk)
        if self.kind is not None and type(line) is SharedLine:
            if self._history:
                head += self._deflate.flush(zlib.Z_FULL_FLUSH)
                self._history = False
            return head + line.encoded(self.kind, lambda _line: _deflate_alone(chunk, self.level))
        self._history = True
        return head + self._deflate.compress(chunk) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """The end of the body: the final deflate block, CRC-32 and length."""
        head = b"" if self._started else HEADER
        self._started = True
        return head + self._deflate.flush(zlib.Z_FINISH) + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


def _deflate_alone(chunk: bytes, level: int) -> bytes:
    """Raw deflate blocks of ``chunk`` that refer to nothing before it, ending byte-aligned and not final."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
    return deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
