"""RSocket-over-WebSocket frame codec (protocol.md §8). Pure Python: no Django, no database."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powersync_django.rsocket import (
    APPLICATION_ERROR,
    CANCELED,
    CONNECTION_CLOSE,
    CONNECTION_ERROR,
    INVALID,
    INVALID_SETUP,
    REJECTED,
    REJECTED_RESUME,
    REJECTED_SETUP,
    UNSUPPORTED_SETUP,
    Cancel,
    Error,
    Frame,
    FrameType,
    Keepalive,
    Payload,
    RequestN,
    RequestStream,
    RSocketProtocolError,
    Setup,
    UnknownFrame,
    decode_frame,
    encode_frame,
    error_frame,
    keepalive_reply,
    payload_complete,
    payload_next,
)


def h(text: str) -> bytes:
    """Hex with spaces and `|` separators, as written in protocol.md §8.12."""
    return bytes.fromhex(text.replace("|", " "))


def type_flags(frame_bytes: bytes) -> int:
    return int.from_bytes(frame_bytes[4:6], "big")


# {"token_expires_in": 20} as BSON (protocol.md §7.4).
BSON_LINE = h("1b 00 00 00 | 10") + b"token_expires_in" + h("00 | 14 00 00 00 | 00")


# --------------------------------------------------------------------------------------------------------------
# protocol.md §8.12 byte-level examples


def test_error_codes() -> None:
    assert (INVALID_SETUP, UNSUPPORTED_SETUP, REJECTED_SETUP, REJECTED_RESUME) == (1, 2, 3, 4)
    assert (CONNECTION_ERROR, CONNECTION_CLOSE) == (0x101, 0x102)
    assert (APPLICATION_ERROR, REJECTED, CANCELED, INVALID) == (0x201, 0x202, 0x203, 0x204)


def test_keepalive_from_client() -> None:
    raw = h("00 00 00 00 | 0c 80 | 00 00 00 00 00 00 00 00")
    frame = decode_frame(raw)
    assert frame == Keepalive(respond=True, last_received_position=0, data=b"")
    assert frame.stream_id == 0
    assert encode_frame(frame) == raw


def test_keepalive_reply_example() -> None:
    raw = h("00 00 00 00 | 0c 00 | 00 00 00 00 00 00 00 00")
    frame = decode_frame(raw)
    assert frame == Keepalive(respond=False, last_received_position=0, data=b"")
    assert encode_frame(frame) == raw
    assert (
        encode_frame(keepalive_reply(decode_frame(h("00 00 00 00 | 0c 80 | 00 00 00 00 00 00 00 00")))) == raw
    )


def test_keepalive_reply_echoes_data_and_zeroes_position() -> None:
    ping = decode_frame(h("00 00 00 00 | 0c 80 | 00 00 00 00 00 00 00 07 | 61 62"))
    assert ping == Keepalive(respond=True, last_received_position=7, data=b"ab")
    assert keepalive_reply(ping) == Keepalive(respond=False, last_received_position=0, data=b"ab")
    assert keepalive_reply(ping).encode() == h("00 00 00 00 | 0c 00 | 00 00 00 00 00 00 00 00 | 61 62")


def test_request_n() -> None:
    raw = h("00 00 00 01 | 20 00 | 00 00 00 05")
    frame = decode_frame(raw)
    assert isinstance(frame, RequestN)
    assert (frame.stream_id, frame.n) == (1, 5)
    assert encode_frame(frame) == raw
    assert RequestN(1, 5).encode() == raw


def test_payload_next() -> None:
    raw = h("00 00 00 01 | 28 20") + BSON_LINE
    frame = decode_frame(raw)
    assert isinstance(frame, Payload)
    assert frame.stream_id == 1
    assert frame.data == BSON_LINE
    assert frame.metadata is None
    assert (frame.next, frame.complete, frame.follows) == (True, False, False)
    assert encode_frame(frame) == raw
    assert payload_next(1, BSON_LINE).encode() == raw


def test_payload_complete() -> None:
    raw = h("00 00 00 01 | 28 40")
    frame = decode_frame(raw)
    assert frame == Payload(stream_id=1, data=b"", metadata=None, next=False, complete=True, follows=False)
    assert encode_frame(frame) == raw
    assert payload_complete(1).encode() == raw


def test_error_application() -> None:
    message = "[PSYNC_S2002] Route not found: héllo"
    raw = h("00 00 00 01 | 2c 00 | 00 00 02 01") + message.encode()
    frame = decode_frame(raw)
    assert isinstance(frame, Error)
    assert (frame.stream_id, frame.code, frame.message) == (1, APPLICATION_ERROR, message)
    assert encode_frame(frame) == raw
    assert error_frame(1, APPLICATION_ERROR, message).encode() == raw


def test_error_rejected_setup() -> None:
    message = "[PSYNC_S2103] JWT has expired"
    raw = h("00 00 00 00 | 2c 00 | 00 00 00 03") + message.encode()
    frame = decode_frame(raw)
    assert frame == Error(stream_id=0, code=REJECTED_SETUP, message=message)
    assert encode_frame(frame) == raw
    assert error_frame(0, REJECTED_SETUP, message).encode() == raw


def test_setup() -> None:
    metadata = json.dumps({"token": "Token abc.def.ghi", "user_agent": "powersync-js/1.0"}).encode()
    raw = (
        h("00 00 00 00 | 05 00 | 00 01 | 00 00 | 00 00 4e 20 | 00 01 5f 90 | 10")
        + b"application/json"
        + h("10")
        + b"application/json"
        + len(metadata).to_bytes(3, "big")
        + metadata
    )
    frame = decode_frame(raw)
    assert isinstance(frame, Setup)
    assert frame.stream_id == 0
    assert (frame.major_version, frame.minor_version) == (1, 0)
    assert (frame.keepalive_ms, frame.max_lifetime_ms) == (20000, 90000)
    assert frame.resume_token is None
    assert frame.lease is False
    assert (frame.metadata_mime, frame.data_mime) == ("application/json", "application/json")
    assert frame.metadata == metadata
    assert json.loads(frame.metadata)["token"] == "Token abc.def.ghi"
    assert frame.data == b""
    assert encode_frame(frame) == raw
    built = Setup(20000, 90000, "application/json", "application/json", metadata=metadata)
    assert built == frame
    assert built.encode() == raw


def test_request_stream() -> None:
    metadata = b'{"path":"/sync/stream"}'
    request = b'{"buckets":[],"include_checksum":true,"raw_data":true,"client_id":"c1"}'
    raw = h("00 00 00 01 | 19 00 | 00 00 00 0a | 00 00 17") + metadata + request
    frame = decode_frame(raw)
    assert isinstance(frame, RequestStream)
    assert (frame.stream_id, frame.initial_request_n, frame.follows) == (1, 10, False)
    assert frame.metadata == metadata
    assert json.loads(frame.metadata) == {"path": "/sync/stream"}
    assert frame.data == request
    assert encode_frame(frame) == raw
    assert RequestStream(1, 10, metadata, request).encode() == raw


def test_cancel() -> None:
    raw = h("00 00 00 03 | 24 00")
    assert decode_frame(raw) == Cancel(3)
    assert Cancel(3).encode() == raw


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Setup(20000, 90000, "application/json", "application/json", metadata=b"{}"), 0x0500),
        (Keepalive(respond=True), 0x0C80),
        (Keepalive(), 0x0C00),
        (RequestStream(1, 10, b"{}"), 0x1900),
        (RequestN(1, 1), 0x2000),
        (Cancel(1), 0x2400),
        (Payload(1, b"x", next=True), 0x2820),
        (Payload(1, complete=True), 0x2840),
        (Payload(1, b"x", next=True, complete=True), 0x2860),
        (Error(1, APPLICATION_ERROR, "x"), 0x2C00),
    ],
)
def test_header_values_table(frame: Frame, expected: int) -> None:
    """protocol.md §8.2 'Header 16-bit value (typical)' column."""
    assert type_flags(frame.encode()) == expected


def test_setup_flags_resume_lease_and_data() -> None:
    frame = Setup(
        500,
        1500,
        "application/bson",
        "",
        metadata=None,
        data=b"\x01\x02",
        major_version=2,
        minor_version=3,
        resume_token=b"tok",
        lease=True,
    )
    raw = frame.encode()
    assert type_flags(raw) == 0x0400 | 0x80 | 0x40
    assert raw[6:23] == h("00 02 | 00 03 | 00 00 01 f4 | 00 00 05 dc | 00 03") + b"tok"
    assert raw[23:] == h("10") + b"application/bson" + h("00") + h("01 02")
    assert decode_frame(raw) == frame


def test_metadata_present_but_empty_differs_from_absent() -> None:
    with_empty = Payload(1, b"d", metadata=b"", next=True)
    assert with_empty.encode() == h("00 00 00 01 | 29 20 | 00 00 00") + b"d"
    assert decode_frame(with_empty.encode()) == with_empty
    assert decode_frame(Payload(1, b"d", next=True).encode()).metadata is None


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = h("00 00 00 01 | 20 00 | 00 00 00 05")
    assert decode_frame(bytearray(raw)) == RequestN(1, 5)
    assert decode_frame(memoryview(raw)) == RequestN(1, 5)
    with pytest.raises(TypeError):
        decode_frame("text message")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Unmodelled frames and flag handling


def test_unknown_type_with_ignore_flag() -> None:
    frame = decode_frame(h("00 00 00 05 | 7e 00 | 01 02 03"))  # type 0x1f, I flag
    assert isinstance(frame, UnknownFrame)
    assert frame.ignore is True
    assert (frame.frame_type, frame.stream_id, frame.flags, frame.body) == (0x1F, 5, 0x200, h("01 02 03"))
    assert frame.type_name == "UNKNOWN_0x1f"
    assert frame.encode() == h("00 00 00 05 | 7e 00 | 01 02 03")


def test_ext_frame_with_ignore_flag() -> None:
    frame = decode_frame(h("00 00 00 00 | fe 00 | 00 00 00 01"))
    assert isinstance(frame, UnknownFrame)
    assert frame.frame_type == FrameType.EXT
    assert frame.ignore


@pytest.mark.parametrize(
    ("raw", "frame_type"),
    [
        (h("00 00 00 03 | 11 00 | 00 00 02 | 7b 7d | 78"), FrameType.REQUEST_RESPONSE),
        (h("00 00 00 03 | 14 00 | 78"), FrameType.REQUEST_FNF),
        (h("00 00 00 03 | 1c 00 | 00 00 00 01"), FrameType.REQUEST_CHANNEL),
        (h("00 00 00 00 | 08 00 | 00 00 03 e8 | 00 00 00 0a"), FrameType.LEASE),
        (h("00 00 00 00 | 31 00 | 7b 7d"), FrameType.METADATA_PUSH),
        (h("00 00 00 00 | 34 00 | 00 01 00 00 | 00 01 61") + bytes(16), FrameType.RESUME),
        (h("00 00 00 00 | 38 00") + bytes(8), FrameType.RESUME_OK),
        (h("00 00 00 00 | 00 00"), FrameType.RESERVED),
    ],
)
def test_unsupported_types_decode_to_unknown_frame(raw: bytes, frame_type: FrameType) -> None:
    frame = decode_frame(raw)
    assert isinstance(frame, UnknownFrame)
    assert frame.frame_type == frame_type
    assert frame.type_name == frame_type.name
    assert frame.ignore is False
    assert frame.body == raw[6:]
    assert frame.encode() == raw


def test_unknown_frame_cannot_shadow_modelled_type() -> None:
    with pytest.raises(RSocketProtocolError):
        UnknownFrame(FrameType.PAYLOAD, 1, 0x20, b"x")


def test_ignore_and_undefined_flags_on_known_frames_are_ignored() -> None:
    # REQUEST_N with I and M and every type-specific bit set.
    assert decode_frame(h("00 00 00 01 | 23 ff | 00 00 00 05")) == RequestN(1, 5)
    # ERROR with M set: still no metadata section.
    assert decode_frame(h("00 00 00 01 | 2d 00 | 00 00 02 01 | 61")) == Error(1, APPLICATION_ERROR, "a")
    # PAYLOAD with I flag and low undefined bits.
    assert decode_frame(h("00 00 00 01 | 2a 3f | 61")) == Payload(
        1, b"a", next=True, complete=False, follows=False
    )


# --------------------------------------------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(h("00 00 00"), id="short header"),
        pytest.param(h("00 00 00 01 | 28"), id="5 bytes"),
        pytest.param(h("80 00 00 01 | 28 20"), id="stream id top bit"),
        pytest.param(h("00 00 00 01 | 20 00 | 00 00 00"), id="REQUEST_N truncated"),
        pytest.param(h("00 00 00 01 | 20 00 | 00 00 00 00"), id="REQUEST_N zero"),
        pytest.param(h("00 00 00 01 | 20 00 | 80 00 00 01"), id="REQUEST_N top bit"),
        pytest.param(h("00 00 00 01 | 20 00 | 00 00 00 01 | 00"), id="REQUEST_N trailing"),
        pytest.param(h("00 00 00 00 | 20 00 | 00 00 00 01"), id="REQUEST_N on stream 0"),
        pytest.param(h("00 00 00 01 | 24 00 | 00"), id="CANCEL trailing"),
        pytest.param(h("00 00 00 00 | 24 00"), id="CANCEL on stream 0"),
        pytest.param(h("00 00 00 01 | 28 00 | 61"), id="PAYLOAD without N/C/F"),
        pytest.param(h("00 00 00 00 | 28 20 | 61"), id="PAYLOAD on stream 0"),
        pytest.param(h("00 00 00 01 | 29 20 | 00 00"), id="PAYLOAD metadata length truncated"),
        pytest.param(h("00 00 00 01 | 29 20 | 00 00 05 | 61 62"), id="PAYLOAD metadata length too big"),
        pytest.param(
            h("00 00 00 01 | 19 00 | 00 00 00 0a | 00 00 17 | 7b"), id="REQUEST_STREAM metadata short"
        ),
        pytest.param(h("00 00 00 01 | 18 00 | 00 00 00 00"), id="REQUEST_STREAM n zero"),
        pytest.param(h("00 00 00 01 | 18 00 | 00 00"), id="REQUEST_STREAM truncated"),
        pytest.param(h("00 00 00 00 | 18 00 | 00 00 00 01"), id="REQUEST_STREAM on stream 0"),
        pytest.param(h("00 00 00 01 | 2c 00 | 00 00 02"), id="ERROR truncated"),
        pytest.param(h("00 00 00 01 | 2c 00 | 00 00 02 01 | ff fe"), id="ERROR invalid UTF-8"),
        pytest.param(h("00 00 00 00 | 0c 80 | 00 00 00 00"), id="KEEPALIVE truncated"),
        pytest.param(h("00 00 00 01 | 0c 80 | 00 00 00 00 00 00 00 00"), id="KEEPALIVE on stream 1"),
        pytest.param(h("00 00 00 00 | 0c 80 | 80 00 00 00 00 00 00 00"), id="KEEPALIVE position top bit"),
        pytest.param(
            h("00 00 00 01 | 04 00 | 00 01 00 00 00 00 4e 20 00 01 5f 90 00 00"), id="SETUP stream 1"
        ),
        pytest.param(h("00 00 00 00 | 04 00 | 00 01 00 00 00 00 4e 20 00 01 5f"), id="SETUP truncated"),
        pytest.param(
            h("00 00 00 00 | 04 00 | 00 01 00 00 00 00 00 00 00 01 5f 90 00 00"), id="SETUP keepalive 0"
        ),
        pytest.param(
            h("00 00 00 00 | 04 00 | 00 01 00 00 80 00 4e 20 00 01 5f 90 00 00"), id="SETUP top bit"
        ),
        pytest.param(
            h("00 00 00 00 | 04 00 | 00 01 00 00 00 00 4e 20 00 01 5f 90 05 61 00"), id="SETUP mime short"
        ),
        pytest.param(
            h("00 00 00 00 | 04 00 | 00 01 00 00 00 00 4e 20 00 01 5f 90 01 ff 00"), id="SETUP mime non-ASCII"
        ),
        pytest.param(
            h("00 00 00 00 | 04 80 | 00 01 00 00 00 00 4e 20 00 01 5f 90 00 05 61"), id="SETUP token short"
        ),
        pytest.param(
            h("00 00 00 00 | 05 00 | 00 01 00 00 00 00 4e 20 00 01 5f 90 00 00 | 00 00"), id="SETUP meta len"
        ),
    ],
)
def test_malformed_frames_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(RSocketProtocolError):
        decode_frame(raw)


def test_protocol_error_carries_header_fields() -> None:
    with pytest.raises(RSocketProtocolError) as info:
        decode_frame(h("00 00 00 00 | 04 00 | 00 01 00 00 00 00 4e 20"))
    assert isinstance(info.value, ValueError)
    assert info.value.frame_type == FrameType.SETUP
    assert info.value.stream_id == 0
    assert "SETUP" in str(info.value)

    with pytest.raises(RSocketProtocolError) as info:
        decode_frame(b"\x00\x01")
    assert info.value.frame_type is None
    assert info.value.stream_id is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: payload_next(0, b"x"),
        lambda: payload_complete(2**31),
        lambda: Payload(1, b"x"),
        lambda: RequestN(1, 0),
        lambda: RequestN(1, 2**31),
        lambda: RequestStream(1, 0),
        lambda: Error(-1, APPLICATION_ERROR, "x"),
        lambda: Error(1, 2**32, "x"),
        lambda: Keepalive(last_received_position=2**63),
        lambda: Setup(0, 90000, "a", "b"),
        lambda: Setup(20000, 90000, "é", "b"),
        lambda: Setup(20000, 90000, "a" * 256, "b"),
        lambda: Setup(20000, 90000, "a", "b", resume_token=bytes(65536)),
        lambda: Payload(1, metadata=bytes(2**24), next=True),
        lambda: Error(1, APPLICATION_ERROR, "\ud800").encode(),
    ],
)
def test_invalid_frames_cannot_be_built_or_encoded(build: Callable[[], object]) -> None:
    with pytest.raises(RSocketProtocolError):
        build()


def test_wrong_field_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        Payload(1, "text", next=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RequestN(1, True)


# --------------------------------------------------------------------------------------------------------------
# Property tests

stream_ids = st.integers(1, 2**31 - 1)
u31_positive = st.integers(1, 2**31 - 1)
metadata_st = st.none() | st.binary(max_size=64)
data_st = st.binary(max_size=200)
ascii_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=255)

setups = st.builds(
    Setup,
    keepalive_ms=u31_positive,
    max_lifetime_ms=u31_positive,
    metadata_mime=ascii_text,
    data_mime=ascii_text,
    metadata=metadata_st,
    data=data_st,
    major_version=st.integers(0, 0xFFFF),
    minor_version=st.integers(0, 0xFFFF),
    resume_token=st.none() | st.binary(max_size=64),
    lease=st.booleans(),
)
keepalives = st.builds(
    Keepalive, respond=st.booleans(), last_received_position=st.integers(0, 2**63 - 1), data=data_st
)
request_streams = st.builds(
    RequestStream,
    stream_id=stream_ids,
    initial_request_n=u31_positive,
    metadata=metadata_st,
    data=data_st,
    follows=st.booleans(),
)
request_ns = st.builds(RequestN, stream_id=stream_ids, n=u31_positive)
cancels = st.builds(Cancel, stream_id=stream_ids)
payload_flags = st.tuples(st.booleans(), st.booleans(), st.booleans()).filter(any)  # N, C, F
payloads = st.builds(
    lambda stream_id, data, metadata, flags: Payload(
        stream_id, data, metadata, next=flags[0], complete=flags[1], follows=flags[2]
    ),
    stream_ids,
    data_st,
    metadata_st,
    payload_flags,
)
errors = st.builds(
    Error, stream_id=st.integers(0, 2**31 - 1), code=st.integers(0, 2**32 - 1), message=st.text()
)
modelled_types = {1, 3, 6, 8, 9, 10, 11}
unknowns = st.builds(
    UnknownFrame,
    frame_type=st.integers(0, 0x3F).filter(lambda t: t not in modelled_types),
    stream_id=st.integers(0, 2**31 - 1),
    flags=st.integers(0, 0x3FF),
    body=data_st,
)
all_frames = st.one_of(setups, keepalives, request_streams, request_ns, cancels, payloads, errors, unknowns)


@pytest.mark.parametrize(
    "strategy",
    [setups, keepalives, request_streams, request_ns, cancels, payloads, errors, unknowns],
    ids=["setup", "keepalive", "request_stream", "request_n", "cancel", "payload", "error", "unknown"],
)
@given(data=st.data())
def test_round_trip(strategy: st.SearchStrategy[Frame], data: st.DataObject) -> None:
    frame = data.draw(strategy)
    raw = encode_frame(frame)
    assert raw == frame.encode()
    decoded = decode_frame(raw)
    assert decoded == frame
    assert type(decoded) is type(frame)
    assert encode_frame(decoded) == raw
    assert int.from_bytes(raw[:4], "big") == frame.stream_id
    expected_type = frame.frame_type if isinstance(frame, UnknownFrame) else frame.TYPE
    assert type_flags(raw) >> 10 == expected_type


def _check_decode(raw: bytes) -> None:
    """Either a protocol error, or a frame that re-encodes to something decoding to the same frame."""
    try:
        frame = decode_frame(raw)
    except RSocketProtocolError:
        return
    again = encode_frame(frame)
    assert decode_frame(again) == frame
    # Only ignorable flag bits may differ; the stream id and type are preserved.
    assert again[:4] == raw[:4]
    assert type_flags(again) >> 10 == type_flags(raw) >> 10


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(raw: bytes) -> None:
    _check_decode(raw)


@settings(max_examples=500)
@given(
    stream_id=st.sampled_from([0, 1, 3, 2**31 - 1]) | st.integers(0, 2**32 - 1),
    frame_type=st.sampled_from([1, 3, 6, 8, 9, 10, 11]) | st.integers(0, 0x3F),
    flags=st.integers(0, 0x3FF),
    body=st.binary(max_size=120),
)
def test_fuzz_valid_headers_random_bodies(stream_id: int, frame_type: int, flags: int, body: bytes) -> None:
    _check_decode(stream_id.to_bytes(4, "big") + ((frame_type << 10) | flags).to_bytes(2, "big") + body)


@settings(max_examples=500)
@given(frame=all_frames, data=st.data())
def test_fuzz_mutated_frames(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode_frame(frame))
    mutation = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "append"]))
    if mutation == "truncate":
        del raw[data.draw(st.integers(0, len(raw))) :]
    elif mutation == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "overwrite":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    elif mutation == "insert":
        index = data.draw(st.integers(0, len(raw)))
        raw[index:index] = data.draw(st.binary(min_size=1, max_size=8))
    elif mutation == "delete":
        index = data.draw(st.integers(0, len(raw) - 1))
        del raw[index : index + data.draw(st.integers(1, 8))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    _check_decode(bytes(raw))


@given(stream_id=stream_ids, data=data_st)
def test_builders(stream_id: int, data: bytes) -> None:
    assert decode_frame(payload_next(stream_id, data).encode()) == Payload(stream_id, data, next=True)
    assert decode_frame(payload_complete(stream_id).encode()) == Payload(stream_id, complete=True)
    assert decode_frame(error_frame(stream_id, INVALID, "bad").encode()) == Error(stream_id, INVALID, "bad")
