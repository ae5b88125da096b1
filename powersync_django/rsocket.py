"""RSocket frame codec for RSocket over WebSocket (protocol.md §8, RSocket spec 1.0).

One WebSocket binary message carries exactly one frame, with no 24-bit frame-length prefix. Every frame is a
6-byte header (31-bit stream id; 16 bits of frame type << 10 | flags) followed by type-specific fields and,
for frames that carry a payload, ``[u24 metadata length + metadata if M] + data to the end of the frame``.

Only what a PowerSync server needs is fully modelled (SETUP, KEEPALIVE, REQUEST_STREAM, REQUEST_N, CANCEL,
PAYLOAD, ERROR). Every other frame type (REQUEST_RESPONSE, REQUEST_FNF, REQUEST_CHANNEL, LEASE, METADATA_PUSH,
RESUME, RESUME_OK, EXT, unassigned codes) decodes to :class:`UnknownFrame`, which the caller may ignore when
its ``ignore`` flag is set, or otherwise answer with an ERROR.

Any malformed input makes :func:`decode_frame` raise :class:`RSocketProtocolError` (a ``ValueError``) and
nothing else. Constructing a frame object with out-of-range values raises the same exception, so anything
that can be built can be encoded, and ``decode_frame(encode_frame(f)) == f`` for every frame.

Decoding ignores flag bits that are not defined for the frame type (as the spec requires), including I on
understood frames; everything else is checked strictly (reserved top bits, stream id 0 vs > 0, request-N > 0,
no trailing bytes after fixed-size frames, PAYLOAD needs N, C or F, UTF-8 error text, ASCII MIME types).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

__all__ = [
    "APPLICATION_ERROR",
    "CANCELED",
    "CONNECTION_CLOSE",
    "CONNECTION_ERROR",
    "FLAG_COMPLETE",
    "FLAG_FOLLOWS",
    "FLAG_IGNORE",
    "FLAG_LEASE",
    "FLAG_METADATA",
    "FLAG_NEXT",
    "FLAG_RESPOND",
    "FLAG_RESUME",
    "INVALID",
    "INVALID_SETUP",
    "MAX_FRAME_LENGTH",
    "REJECTED",
    "REJECTED_RESUME",
    "REJECTED_SETUP",
    "UNSUPPORTED_SETUP",
    "Cancel",
    "Error",
    "ErrorFrame",
    "Frame",
    "FrameType",
    "Keepalive",
    "Payload",
    "RSocketProtocolError",
    "RequestN",
    "RequestStream",
    "Setup",
    "UnknownFrame",
    "decode_frame",
    "encode_frame",
    "error_frame",
    "keepalive_reply",
    "payload_complete",
    "payload_next",
]


class RSocketProtocolError(ValueError):
    """Malformed, truncated or inconsistent frame (or an unencodable frame object).

    ``frame_type`` and ``stream_id`` are set when the 6-byte header could be read, so a server can answer
    e.g. a bad SETUP with ERROR(0, INVALID_SETUP) and anything else with ERROR(0, CONNECTION_ERROR).
    """

    def __init__(self, message: str, *, frame_type: int | None = None, stream_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.frame_type = frame_type
        self.stream_id = stream_id


class FrameType(IntEnum):
    """RSocket frame type codes (top 6 bits of the type/flags field)."""

    RESERVED = 0x00
    SETUP = 0x01
    LEASE = 0x02
    KEEPALIVE = 0x03
    REQUEST_RESPONSE = 0x04
    REQUEST_FNF = 0x05
    REQUEST_STREAM = 0x06
    REQUEST_CHANNEL = 0x07
    REQUEST_N = 0x08
    CANCEL = 0x09
    PAYLOAD = 0x0A
    ERROR = 0x0B
    METADATA_PUSH = 0x0C
    RESUME = 0x0D
    RESUME_OK = 0x0E
    EXT = 0x3F


# Flags (low 10 bits). Bits 0x80 and 0x40 mean different things depending on the frame type.
FLAG_IGNORE = 0x200  # I: ignore the frame if not understood (all types)
FLAG_METADATA = 0x100  # M: metadata present
FLAG_FOLLOWS = 0x080  # F: more fragments follow (PAYLOAD, REQUEST_*)
FLAG_RESPOND = 0x080  # R: KEEPALIVE wants an answer
FLAG_RESUME = 0x080  # R: SETUP carries a resume token
FLAG_COMPLETE = 0x040  # C: stream complete (PAYLOAD, REQUEST_CHANNEL)
FLAG_LEASE = 0x040  # L: SETUP, client will honour LEASE
FLAG_NEXT = 0x020  # N: PAYLOAD carries an onNext payload

# Error codes. Connection-level codes (stream 0):
INVALID_SETUP = 0x001
UNSUPPORTED_SETUP = 0x002
REJECTED_SETUP = 0x003
REJECTED_RESUME = 0x004
CONNECTION_ERROR = 0x101
CONNECTION_CLOSE = 0x102
# Stream-level codes (stream id > 0):
APPLICATION_ERROR = 0x201
REJECTED = 0x202
CANCELED = 0x203
INVALID = 0x204

#: The spec's size cap for one frame (header included), even on WebSocket where no length field exists.
#: Not enforced by this codec; callers may use it to bound incoming messages.
MAX_FRAME_LENGTH = 0xFFFFFF

_HEADER = struct.Struct(">IH")
_U31_MAX = 0x7FFF_FFFF
_U24_MAX = 0xFF_FFFF
_U63_MAX = 0x7FFF_FFFF_FFFF_FFFF
_FLAGS_MASK = 0x3FF


# --------------------------------------------------------------------------------------------------------------
# Validation and encoding helpers


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise RSocketProtocolError(f"{name} {value} out of range [{low}, {high}]")


def _check_bytes(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes{' or None' if optional else ''}, not {type(value).__name__}")


def _check_stream_id(stream_id: int, *, connection: bool) -> None:
    _check_int("stream id", stream_id, 0, _U31_MAX)
    if connection and stream_id != 0:
        raise RSocketProtocolError(f"frame must use stream id 0, got {stream_id}")
    if not connection and stream_id == 0:
        raise RSocketProtocolError("frame must use a stream id > 0")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")


def _check_mime(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.isascii():
        raise RSocketProtocolError(f"{name} must be ASCII")
    if len(value) > 0xFF:
        raise RSocketProtocolError(f"{name} longer than 255 bytes")


def _check_metadata(metadata: bytes | None) -> None:
    _check_bytes("metadata", metadata, optional=True)
    if metadata is not None and len(metadata) > _U24_MAX:
        raise RSocketProtocolError(f"metadata of {len(metadata)} bytes exceeds the 24-bit length field")


def _header(stream_id: int, frame_type: int, flags: int) -> bytes:
    return _HEADER.pack(stream_id, (frame_type << 10) | flags)


def _payload_section(metadata: bytes | None, data: bytes) -> bytes:
    if metadata is None:
        return data
    return len(metadata).to_bytes(3, "big") + metadata + data


# --------------------------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True, slots=True)
class Setup:
    """SETUP (stream 0, client → server). PowerSync sends version 1.0, 20000/90000 ms, JSON MIME types."""

    TYPE: ClassVar[FrameType] = FrameType.SETUP

    keepalive_ms: int
    max_lifetime_ms: int
    metadata_mime: str
    data_mime: str
    metadata: bytes | None = None
    data: bytes = b""
    major_version: int = 1
    minor_version: int = 0
    resume_token: bytes | None = None
    lease: bool = False

    def __post_init__(self) -> None:
        _check_int("major version", self.major_version, 0, 0xFFFF)
        _check_int("minor version", self.minor_version, 0, 0xFFFF)
        _check_int("keepalive interval", self.keepalive_ms, 1, _U31_MAX)
        _check_int("max lifetime", self.max_lifetime_ms, 1, _U31_MAX)
        _check_bytes("resume token", self.resume_token, optional=True)
        if self.resume_token is not None and len(self.resume_token) > 0xFFFF:
            raise RSocketProtocolError("resume token longer than 65535 bytes")
        _check_bool("lease", self.lease)
        _check_mime("metadata MIME type", self.metadata_mime)
        _check_mime("data MIME type", self.data_mime)
        _check_metadata(self.metadata)
        _check_bytes("data", self.data)

    @property
    def stream_id(self) -> int:
        return 0

    def encode(self) -> bytes:
        flags = (
            (FLAG_METADATA if self.metadata is not None else 0)
            | (FLAG_RESUME if self.resume_token is not None else 0)
            | (FLAG_LEASE if self.lease else 0)
        )
        parts = [
            _header(0, self.TYPE, flags),
            struct.pack(
                ">HHII", self.major_version, self.minor_version, self.keepalive_ms, self.max_lifetime_ms
            ),
        ]
        if self.resume_token is not None:
            parts.append(len(self.resume_token).to_bytes(2, "big") + self.resume_token)
        for mime in (self.metadata_mime, self.data_mime):
            raw = mime.encode("ascii")
            parts.append(bytes([len(raw)]) + raw)
        parts.append(_payload_section(self.metadata, self.data))
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Keepalive:
    """KEEPALIVE (stream 0). ``respond`` (R) asks the peer to echo it back without R, with the same data."""

    TYPE: ClassVar[FrameType] = FrameType.KEEPALIVE

    respond: bool = False
    last_received_position: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_bool("respond", self.respond)
        _check_int("last received position", self.last_received_position, 0, _U63_MAX)
        _check_bytes("data", self.data)

    @property
    def stream_id(self) -> int:
        return 0

    def encode(self) -> bytes:
        flags = FLAG_RESPOND if self.respond else 0
        return _header(0, self.TYPE, flags) + self.last_received_position.to_bytes(8, "big") + self.data


@dataclass(frozen=True, slots=True)
class RequestStream:
    """REQUEST_STREAM (client → server); PowerSync: stream 1, N=10, metadata ``{"path": "/sync/stream"}``."""

    TYPE: ClassVar[FrameType] = FrameType.REQUEST_STREAM

    stream_id: int
    initial_request_n: int
    metadata: bytes | None = None
    data: bytes = b""
    follows: bool = False

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id, connection=False)
        _check_int("initial request n", self.initial_request_n, 1, _U31_MAX)
        _check_metadata(self.metadata)
        _check_bytes("data", self.data)
        _check_bool("follows", self.follows)

    def encode(self) -> bytes:
        flags = (FLAG_METADATA if self.metadata is not None else 0) | (FLAG_FOLLOWS if self.follows else 0)
        return (
            _header(self.stream_id, self.TYPE, flags)
            + self.initial_request_n.to_bytes(4, "big")
            + _payload_section(self.metadata, self.data)
        )


@dataclass(frozen=True, slots=True)
class RequestN:
    """REQUEST_N: grants ``n`` (> 0) more PAYLOAD frames on a stream."""

    TYPE: ClassVar[FrameType] = FrameType.REQUEST_N

    stream_id: int
    n: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id, connection=False)
        _check_int("request n", self.n, 1, _U31_MAX)

    def encode(self) -> bytes:
        return _header(self.stream_id, self.TYPE, 0) + self.n.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class Cancel:
    """CANCEL: the requester abandons a stream (no ERROR is sent back)."""

    TYPE: ClassVar[FrameType] = FrameType.CANCEL

    stream_id: int

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id, connection=False)

    def encode(self) -> bytes:
        return _header(self.stream_id, self.TYPE, 0)


@dataclass(frozen=True, slots=True)
class Payload:
    """PAYLOAD. PowerSync lines: ``next`` with one BSON document as data; end of stream: ``complete`` only.

    At least one of ``next``, ``complete`` or ``follows`` must be set.
    """

    TYPE: ClassVar[FrameType] = FrameType.PAYLOAD

    stream_id: int
    data: bytes = b""
    metadata: bytes | None = None
    next: bool = False
    complete: bool = False
    follows: bool = False

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id, connection=False)
        _check_metadata(self.metadata)
        _check_bytes("data", self.data)
        _check_bool("next", self.next)
        _check_bool("complete", self.complete)
        _check_bool("follows", self.follows)
        if not (self.next or self.complete or self.follows):
            raise RSocketProtocolError("PAYLOAD needs at least one of the N, C or F flags")

    def encode(self) -> bytes:
        flags = (
            (FLAG_METADATA if self.metadata is not None else 0)
            | (FLAG_FOLLOWS if self.follows else 0)
            | (FLAG_COMPLETE if self.complete else 0)
            | (FLAG_NEXT if self.next else 0)
        )
        return _header(self.stream_id, self.TYPE, flags) + _payload_section(self.metadata, self.data)


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR: stream 0 for connection errors (e.g. REJECTED_SETUP), the stream's id for stream errors.

    The message is UTF-8 text to the end of the frame; PowerSync clients expect a ``[PSYNC_Sxxxx]`` code in it.
    """

    TYPE: ClassVar[FrameType] = FrameType.ERROR

    stream_id: int
    code: int
    message: str = ""

    def __post_init__(self) -> None:
        _check_int("stream id", self.stream_id, 0, _U31_MAX)
        _check_int("error code", self.code, 0, 0xFFFF_FFFF)
        if not isinstance(self.message, str):
            raise TypeError(f"message must be a str, not {type(self.message).__name__}")

    def encode(self) -> bytes:
        try:
            text = self.message.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RSocketProtocolError("error message is not encodable as UTF-8") from exc
        return _header(self.stream_id, self.TYPE, 0) + self.code.to_bytes(4, "big") + text


ErrorFrame = Error


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame this codec does not model (e.g. REQUEST_RESPONSE, LEASE, RESUME, EXT or an unassigned type).

    ``body`` is everything after the 6-byte header, unparsed. If ``ignore`` is true the sender marked the
    frame as safe to drop; otherwise the receiver should answer with an ERROR (the stream's REJECTED for
    requests, CONNECTION_ERROR or REJECTED_RESUME on stream 0) or close the connection.
    """

    frame_type: int
    stream_id: int
    flags: int = 0
    body: bytes = b""

    def __post_init__(self) -> None:
        _check_int("frame type", self.frame_type, 0, 0x3F)
        if self.frame_type in _DECODERS:
            raise RSocketProtocolError(f"frame type {self.frame_type:#04x} is modelled; use its own class")
        _check_int("stream id", self.stream_id, 0, _U31_MAX)
        _check_int("flags", self.flags, 0, _FLAGS_MASK)
        _check_bytes("body", self.body)

    @property
    def ignore(self) -> bool:
        """True when the I flag is set: the frame may be silently dropped."""
        return bool(self.flags & FLAG_IGNORE)

    @property
    def type_name(self) -> str:
        try:
            return FrameType(self.frame_type).name
        except ValueError:
            return f"UNKNOWN_{self.frame_type:#04x}"

    def encode(self) -> bytes:
        return _header(self.stream_id, self.frame_type, self.flags) + self.body


Frame = Setup | Keepalive | RequestStream | RequestN | Cancel | Payload | Error | UnknownFrame


# --------------------------------------------------------------------------------------------------------------
# Decoding


class _Reader:
    """Cursor over a frame body; every read past the end raises RSocketProtocolError."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise RSocketProtocolError(
                f"frame truncated in {what}: need {n} bytes, have {len(self.buf) - self.pos}"
            )
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def u31(self, what: str) -> int:
        value = self.uint(4, what)
        if value > _U31_MAX:
            raise RSocketProtocolError(f"reserved top bit set in {what}")
        return value

    def rest(self) -> bytes:
        chunk = self.buf[self.pos :]
        self.pos = len(self.buf)
        return chunk

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise RSocketProtocolError(f"{len(self.buf) - self.pos} unexpected trailing bytes in {what}")

    def payload(self, flags: int) -> tuple[bytes | None, bytes]:
        metadata = None
        if flags & FLAG_METADATA:
            length = self.uint(3, "metadata length")
            metadata = self.take(length, "metadata")
        return metadata, self.rest()


def _decode_setup(stream_id: int, flags: int, r: _Reader) -> Setup:
    major, minor = r.uint(2, "major version"), r.uint(2, "minor version")
    keepalive_ms = r.u31("keepalive interval")
    max_lifetime_ms = r.u31("max lifetime")
    resume_token = None
    if flags & FLAG_RESUME:
        resume_token = r.take(r.uint(2, "resume token length"), "resume token")
    mimes = []
    for what in ("metadata MIME type", "data MIME type"):
        raw = r.take(r.uint(1, f"{what} length"), what)
        try:
            mimes.append(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise RSocketProtocolError(f"{what} is not ASCII") from None
    metadata, data = r.payload(flags)
    return Setup(
        keepalive_ms=keepalive_ms,
        max_lifetime_ms=max_lifetime_ms,
        metadata_mime=mimes[0],
        data_mime=mimes[1],
        metadata=metadata,
        data=data,
        major_version=major,
        minor_version=minor,
        resume_token=resume_token,
        lease=bool(flags & FLAG_LEASE),
    )


def _decode_keepalive(stream_id: int, flags: int, r: _Reader) -> Keepalive:
    position = r.uint(8, "last received position")
    if position > _U63_MAX:
        raise RSocketProtocolError("reserved top bit set in last received position")
    return Keepalive(respond=bool(flags & FLAG_RESPOND), last_received_position=position, data=r.rest())


def _decode_request_stream(stream_id: int, flags: int, r: _Reader) -> RequestStream:
    n = r.u31("initial request n")
    metadata, data = r.payload(flags)
    return RequestStream(stream_id, n, metadata, data, follows=bool(flags & FLAG_FOLLOWS))


def _decode_request_n(stream_id: int, flags: int, r: _Reader) -> RequestN:
    n = r.u31("request n")
    r.end("REQUEST_N")
    return RequestN(stream_id, n)


def _decode_cancel(stream_id: int, flags: int, r: _Reader) -> Cancel:
    r.end("CANCEL")
    return Cancel(stream_id)


def _decode_payload(stream_id: int, flags: int, r: _Reader) -> Payload:
    metadata, data = r.payload(flags)
    return Payload(
        stream_id,
        data,
        metadata,
        next=bool(flags & FLAG_NEXT),
        complete=bool(flags & FLAG_COMPLETE),
        follows=bool(flags & FLAG_FOLLOWS),
    )


def _decode_error(stream_id: int, flags: int, r: _Reader) -> Error:
    code = r.uint(4, "error code")
    try:
        message = r.rest().decode("utf-8")
    except UnicodeDecodeError:
        raise RSocketProtocolError("error message is not valid UTF-8") from None
    return Error(stream_id, code, message)


# frame type -> (stream id must be 0 / must be > 0 / None: any, decoder)
_DECODERS: dict[int, tuple[bool | None, Callable[[int, int, _Reader], Frame]]] = {
    FrameType.SETUP: (True, _decode_setup),
    FrameType.KEEPALIVE: (True, _decode_keepalive),
    FrameType.REQUEST_STREAM: (False, _decode_request_stream),
    FrameType.REQUEST_N: (False, _decode_request_n),
    FrameType.CANCEL: (False, _decode_cancel),
    FrameType.PAYLOAD: (False, _decode_payload),
    FrameType.ERROR: (None, _decode_error),
}


def decode_frame(buf: bytes | bytearray | memoryview) -> Frame:
    """Decode one frame (one whole WebSocket binary message, no length prefix).

    Raises RSocketProtocolError for any malformed input; unmodelled frame types give an UnknownFrame.
    """
    if isinstance(buf, str):
        raise TypeError("RSocket frames are binary; got str (a text WebSocket message?)")
    buf = bytes(buf)
    if len(buf) < _HEADER.size:
        raise RSocketProtocolError(f"frame of {len(buf)} bytes is shorter than the 6-byte header")
    stream_id, type_and_flags = _HEADER.unpack_from(buf)
    frame_type, flags = type_and_flags >> 10, type_and_flags & _FLAGS_MASK
    if stream_id > _U31_MAX:
        raise RSocketProtocolError(
            "reserved top bit set in stream id", frame_type=frame_type, stream_id=stream_id & _U31_MAX
        )
    entry = _DECODERS.get(frame_type)
    if entry is None:
        return UnknownFrame(frame_type, stream_id, flags, buf[_HEADER.size :])
    connection, decoder = entry
    try:
        if connection is not None:
            _check_stream_id(stream_id, connection=connection)
        return decoder(stream_id, flags, _Reader(buf, _HEADER.size))
    except RSocketProtocolError as exc:
        name = FrameType(frame_type).name
        raise RSocketProtocolError(
            f"{name}: {exc.message}", frame_type=frame_type, stream_id=stream_id
        ) from exc


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame as the bytes of one WebSocket binary message (same as ``frame.encode()``)."""
    return frame.encode()


# --------------------------------------------------------------------------------------------------------------
# Builders


def payload_next(stream_id: int, data: bytes) -> Payload:
    """PAYLOAD with N (one sync line, i.e. one BSON document) and no metadata."""
    return Payload(stream_id, data, next=True)


def payload_complete(stream_id: int) -> Payload:
    """PAYLOAD with only C: normal end of the stream."""
    return Payload(stream_id, complete=True)


def error_frame(stream_id: int, code: int, message: str) -> Error:
    """ERROR frame; use stream 0 with REJECTED_SETUP etc., the request's stream with APPLICATION_ERROR etc."""
    return Error(stream_id, code, message)


def keepalive_reply(keepalive: Keepalive) -> Keepalive:
    """Answer to a KEEPALIVE with R: no R, position 0 (no resume support), the same data."""
    return Keepalive(respond=False, last_received_position=0, data=keepalive.data)
