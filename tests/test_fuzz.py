"""Fuzz of everything a client sends (issue 10): sync request bodies, query strings, headers, upload batches and
RSocket frames. 10,000 inputs drawn by hypothesis (7,000 for the parsers, 3,000 through the full HTTP and
WebSocket stack), plus 13,000 byte-level mutations of the parsers' inputs. Each must get a 2xx/4xx answer
(an ERROR frame on WebSocket), never a 5xx, an exception escaping a view or consumer, an error log, or a
stored change from a rejected request.

Bodies, query strings and headers go through the real handlers (Django's test clients raise anything that
escapes a view). The request-parsing and frame-decoding layers get most of the cases, the full stack enough of
them to reach every branch. One event loop serves all cases of a test, as a server process would.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import random
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db.models import Count, Max, Sum
from django.test import AsyncClient, Client, override_settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from demo_project.todos.models import Todo, TodoList
from powersync_django import notify
from powersync_django.auth import make_token
from powersync_django.consumers import SyncConsumer
from powersync_django.models import OutboxEntry, WriteCheckpoint
from powersync_django.protocol import ProtocolError, parse_json_request
from powersync_django.replication import replicate_now
from powersync_django.rsocket import (
    Error,
    Keepalive,
    Payload,
    RequestN,
    RequestStream,
    RSocketProtocolError,
    Setup,
    decode_frame,
)

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
LIST_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
TODO_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")

# Extra definitions whose parameter querysets compare client values with a UUID and an integer-like column.
FUZZ_BUCKETS = {
    "client_list": {
        "parameters": {"queryset": "todos.TodoList", "filter": {"id": "client.list"}, "values": {"list_id": "id"}},
        "data": [{"model": "todos.Todo", "table": "todos", "filter": {"list_id": "bucket.list_id"}}],
    },
    "client_done": {
        "parameters": {"queryset": "todos.Todo", "filter": {"completed": "client.done", "list_id": "client.list"},
                       "values": {"todo_id": "id"}},
        "data": [{"model": "todos.Todo", "table": "todos", "filter": {"id": "bucket.todo_id"}}],
    },
}


def fuzz_settings() -> override_settings:
    config = copy.deepcopy(settings.POWERSYNC)
    config["BUCKETS"] = {**config["BUCKETS"], **FUZZ_BUCKETS}
    config["RATE_LIMITS"] = {"WRITE_CHECKPOINT": None, "UPLOAD": None, "CACHE": "default"}
    return override_settings(POWERSYNC=config)


@pytest.fixture
def world(caplog: pytest.LogCaptureFixture) -> Iterator[asyncio.AbstractEventLoop]:
    """The fuzz settings, a list and a todo of user u1, and one event loop; no error may be logged."""
    with fuzz_settings():
        TodoList.objects.create(id=LIST_ID, name="l", owner_id="u1")
        Todo.objects.create(id=TODO_ID, list_id=LIST_ID, description="t", created_by="u1")
        replicate_now()
        loop = asyncio.new_event_loop()
        try:
            yield loop
        finally:
            hub = notify._hubs.pop(loop, None)
            if hub is not None:
                loop.run_until_complete(hub.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, errors[:5]


@functools.lru_cache(maxsize=8)
def token(user: str) -> str:
    return make_token(user)


def stored() -> tuple:
    """Every stored change a request can make: ORM writes of synced models leave an outbox entry (capture), and
    write checkpoints count up."""
    return (OutboxEntry.objects.aggregate(n=Count("id"), last=Max("id")),
            WriteCheckpoint.objects.aggregate(n=Count("key"), issued=Sum("issued")))


# --- strategies -----------------------------------------------------------------------------------------------

SPECIAL = ["", "\x00", "a\x00b", "²", "١٢", "--5", "🙂", str(LIST_ID), str(TODO_ID), "u1", "1", "-1", "true",
           " 7 ", "\n", "c" * 201]
texts = st.sampled_from(SPECIAL) | st.text(max_size=6)
keys = st.sampled_from(["name", "list", "done", "id", "after", "x"]) | st.text(max_size=3)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | texts
json_values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(keys, scalars, max_size=2)
AFTER_SPECIAL = ["9" * 5000, "²", "--5", "-5", "+5", "5_0", "0x10", "1e3", " 12 ", "١٢", str(2**63), "0"]
op_ids = st.one_of(st.sampled_from(AFTER_SPECIAL), st.sampled_from(AFTER_SPECIAL),
                   st.from_regex(r"\s?-?-?[0-9]{1,22}\s?", fullmatch=True), st.integers(-5, 2**64), json_values)
bucket_names = st.sampled_from(['1#user_lists["u1"]', f'1#list_todos["{LIST_ID}"]', "x", "b" * 600]) | texts
bucket_entries = st.one_of(st.fixed_dictionaries({"name": bucket_names, "after": op_ids}),
                           st.fixed_dictionaries({"name": bucket_names, "after": op_ids}),
                           st.fixed_dictionaries({}, optional={"name": bucket_names, "after": op_ids}), json_values)
client_parameters = st.fixed_dictionaries({}, optional={"list": json_values | st.just(str(LIST_ID)),
                                                        "done": json_values})
# Mostly well-formed requests with bad values in them (they reach deep), some anything at all.
request_bodies = st.fixed_dictionaries({}, optional={
    "buckets": st.lists(bucket_entries, max_size=3) | json_values,
    "client_id": texts | json_values | st.just("c" * 201),
    "parameters": client_parameters | client_parameters | json_values,
    "raw_data": st.booleans() | json_values,
    "include_checksum": st.booleans() | json_values,
    "binary_data": st.booleans() | json_values,
    "app_metadata": st.dictionaries(texts, texts, max_size=3) | json_values,
    "streams": json_values,
})


def encode(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return b"{}"


raw_bodies = st.one_of(*[request_bodies.map(encode)] * 4, json_values.map(encode), st.binary(max_size=64))


def mutations(data: bytes, seed: int, count: int) -> list[bytes]:
    """``count`` cheap byte-level variants of ``data`` (truncated, a byte changed, a slice repeated, digits
    swapped for look-alikes): more cases per drawn input than drawing costs."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if not data:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(8))))
            continue
        at = rng.randrange(len(data))
        kind = (seed + i) % 4
        if kind == 0:
            out.append(data[:at])
        elif kind == 1:
            out.append(data[:at] + bytes([rng.randrange(256)]) + data[at + 1:])
        elif kind == 2:
            out.append(data[:at] + data[at:at + rng.randrange(1, 9)] * 2 + data[at:])
        else:
            out.append(data.replace(b"1", "²".encode(), 1).replace(b'"', b"", rng.randrange(2)))
    return out


# --- the sync request ------------------------------------------------------------------------------------------


@hsettings(max_examples=3000, **FUZZ)
@given(raw=raw_bodies, seed=st.integers(0, 2**32))
def test_fuzz_sync_request_parsing(raw: bytes, seed: int) -> None:
    """The parser of HTTP bodies and RSocket request data raises ProtocolError (a 4xx) and nothing else."""
    for body in (raw, *mutations(raw, seed, 3)):
        try:
            parse_json_request(body)
        except ProtocolError as exc:
            assert 400 <= exc.status < 500


async def _sync(body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
    response = await AsyncClient().post("/sync/stream", data=body, content_type="application/json", headers=headers)
    if response.streaming:
        iterator = response.streaming_content.__aiter__()
        first = await asyncio.wait_for(iterator.__anext__(), 10)
        await iterator.aclose()
        return response.status_code, first, response["Content-Type"]
    return response.status_code, response.content, response["Content-Type"]


def check_answer(status: int, content: bytes, content_type: str) -> None:
    event(f"HTTP {status}")
    assert status < 500, content[:300]
    if status >= 400:
        assert content_type.startswith("application/json"), content_type
        error = orjson.loads(content)["error"]
        assert error["status"] == status and error["code"] and isinstance(error["description"], str)


@hsettings(max_examples=700, **FUZZ)
@given(raw=raw_bodies)
def test_fuzz_sync_stream_bodies(world: asyncio.AbstractEventLoop, raw: bytes) -> None:
    before = stored()
    check_answer(*world.run_until_complete(_sync(raw, {"Authorization": f"Token {make_token('u1')}"})))
    assert stored() == before


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40) | st.sampled_from(
    ["abc", "-5", "²", "9" * 40, "0", "application/vnd.powersync.bson-stream", "gzip", "*/*;q=x"])


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    token = make_token(draw(st.sampled_from(["u1", "u2", "a" * 255])))
    authorization = draw(st.sampled_from([f"Token {token}", f"Bearer {token}", "Token", "", f"Token {token[:-2]}",
                                          f"Basic {token}"]) | header_values)
    out = {"Authorization": authorization}
    for name in ("Content-Length", "Accept", "Accept-Encoding", "User-Agent", "Origin"):
        if draw(st.booleans()):
            out[name] = draw(header_values)
    return out


@hsettings(max_examples=500, **FUZZ)
@given(hdrs=headers(), raw=st.sampled_from([b"{}", b'{"buckets": []}', b"", b"{"]))
def test_fuzz_sync_stream_headers(world: asyncio.AbstractEventLoop, hdrs: dict[str, str], raw: bytes) -> None:
    check_answer(*world.run_until_complete(_sync(raw, hdrs)))


query_values = st.text(max_size=30) | st.sampled_from(["c" * 200, "c" * 201, "%00", "a%2Fb", "%ff%fe", "²"])


@hsettings(max_examples=500, **FUZZ)
@given(query=st.lists(st.tuples(st.sampled_from(["client_id", "x", "client_id[]", ""]), query_values), max_size=3),
       raw_query=st.sampled_from(["", "client_id=%00", "client_id=%E0%A4%A", "client_id&client_id=", "%%%"]),
       hdrs=headers())
def test_fuzz_write_checkpoint_query_and_headers(world: asyncio.AbstractEventLoop, query: list[tuple[str, str]],
                                                 raw_query: str, hdrs: dict[str, str]) -> None:
    from urllib.parse import urlencode

    before = stored()

    async def run() -> tuple[int, bytes, str]:
        path = "/write-checkpoint2.json?" + "&".join(p for p in (urlencode(query), raw_query) if p)
        response = await AsyncClient().get(path, headers=hdrs)
        return response.status_code, response.content, response["Content-Type"]

    status, content, content_type = world.run_until_complete(run())
    check_answer(status, content, content_type)
    if status != 200:
        assert stored() == before


# --- uploads ---------------------------------------------------------------------------------------------------

row_ids = st.sampled_from([str(LIST_ID), str(TODO_ID)]) | st.uuids().map(str) | texts | json_values
values = (texts | st.booleans() | st.integers(-(2**63), 2**63) | st.sampled_from([str(LIST_ID), str(TODO_ID), "x" * 250,
                                                                                 "2026-11-26 05:44:47Z"])
          | json_values)
list_data = st.fixed_dictionaries({}, optional={"name": values, "owner_id": values, "created_at": values})
todo_data = st.fixed_dictionaries({}, optional={
    "list_id": st.just(str(LIST_ID)) | values, "description": values, "completed": st.sampled_from([0, 1]) | values,
    "created_by": values, "completed_at": values})
# Mostly plausible operations (they reach validation, permissions and the database), some anything at all.
plausible = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(["PUT", "PATCH", "DELETE"]), "type": st.just("lists"),
                           "id": st.sampled_from([str(LIST_ID)]) | st.uuids().map(str), "data": list_data}),
    st.fixed_dictionaries({"op": st.sampled_from(["PUT", "PATCH", "DELETE"]), "type": st.just("todos"),
                           "id": st.sampled_from([str(TODO_ID)]) | st.uuids().map(str), "data": todo_data}),
)
anything = st.fixed_dictionaries(
    {"op": st.sampled_from(["PUT", "PATCH", "DELETE"]) | texts, "type": st.sampled_from(["lists", "todos"]) | texts,
     "id": row_ids},
    optional={"data": st.dictionaries(keys, values, max_size=3) | json_values, "op_id": json_values,
              "tx_id": json_values, "old": json_values, "metadata": json_values},
) | json_values
operations = plausible | plausible | anything
batches = (st.fixed_dictionaries({"batch": st.lists(operations, max_size=4)}).map(encode)
           | st.fixed_dictionaries({}, optional={"batch": json_values}).map(encode)
           | st.binary(max_size=40))


@hsettings(max_examples=1000, **FUZZ)
@given(raw=batches, user=st.sampled_from(["u1", "u2"]))
def test_fuzz_upload_batches(world: asyncio.AbstractEventLoop, raw: bytes, user: str) -> None:
    before = stored()
    response = Client().post("/api/upload", raw, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Token {token(user)}")
    check_answer(response.status_code, response.content, response["Content-Type"])
    if response.status_code != 200:
        assert stored() == before


# --- RSocket -------------------------------------------------------------------------------------------------


VALID_FRAMES = [
    Setup(20000, 90000, "application/json", "application/json", metadata=b'{"token": "Token x"}').encode(),
    RequestStream(1, 10, metadata=b'{"path": "/sync/stream"}', data=b'{"buckets": []}').encode(),
    RequestN(1, 5).encode(), Keepalive(respond=True, data=b"k").encode(), Error(1, 0x201, "x").encode(),
    Payload(1, data=b"{}", next=True).encode(),
]


@hsettings(max_examples=4000, **FUZZ)
@given(data=st.binary(max_size=80) | st.sampled_from(VALID_FRAMES) | st.builds(
    lambda h, b: h + b, st.sampled_from([bytes([0, 0, 0, 1, t << 2, f]) for t in range(64) for f in (0, 0xFF)]),
    st.binary(max_size=40)), seed=st.integers(0, 2**32))
def test_fuzz_rsocket_frame_decoding(data: bytes, seed: int) -> None:
    """The frame decoder raises RSocketProtocolError (an ERROR frame) and nothing else."""
    for frame in (data, *mutations(data, seed, 2)):
        try:
            decode_frame(frame)
        except RSocketProtocolError:
            pass


@hsettings(max_examples=300, **FUZZ)
@given(body=raw_bodies, metadata=st.sampled_from([b'{"path": "/sync/stream"}', b"", b"{}", b'{"path": 5}', b"[",
                                                  b'{"path": "/other"}']),
       token=st.sampled_from(["u1", "u2", None, "bad"]), n=st.integers(1, 2**31 - 1))
def test_fuzz_rsocket_requests(world: asyncio.AbstractEventLoop, body: bytes, metadata: bytes, token: str | None,
                               n: int) -> None:
    """SETUP with a good, missing or bad token, then REQUEST_STREAM with a fuzzed body: ERROR frames, no crash."""

    async def run() -> list[Any]:
        comm = WebsocketCommunicator(SyncConsumer.as_asgi(), "/sync/stream")
        connected, _ = await comm.connect()
        assert connected
        value = {"u1": f"Token {make_token('u1')}", "u2": f"Token {make_token('u2')}", "bad": "Token x.y.z"}
        setup_metadata = orjson.dumps({"token": value[token]} if token else {})
        await comm.send_input({"type": "websocket.receive", "bytes": Setup(
            20000, 90000, "application/json", "application/json", metadata=setup_metadata).encode()})
        await comm.send_input({"type": "websocket.receive",
                               "bytes": RequestStream(1, n, metadata=metadata or None, data=body).encode()})
        await comm.send_input({"type": "websocket.receive", "bytes": RequestN(1, 5).encode()})
        frames = []
        while True:  # until the stream's first answer (a sync line or an ERROR), or the connection's end
            message = await comm.receive_output(10)
            if message["type"] == "websocket.close":
                break
            frame = decode_frame(message["bytes"])
            frames.append(frame)
            if isinstance(frame, Payload | Error):
                break
        await comm.disconnect()
        await comm.wait(10)  # re-raises an exception escaping the consumer
        return frames

    frames = world.run_until_complete(run())
    event(" ".join(sorted({type(f).__name__ for f in frames})))
    for frame in frames:
        if isinstance(frame, Error):
            assert frame.message.startswith("[PSYNC_S") and "Something went wrong" not in frame.message, frame
    assert frames and isinstance(frames[-1], Payload | Error)
