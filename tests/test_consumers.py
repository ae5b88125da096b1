"""The WebSocket transport: SyncConsumer speaking RSocket, driven with Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import bson
import jwt
import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from django.test import override_settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from demo_project.todos.models import Todo, TodoList
from powersync_django import consumers, notify
from powersync_django.auth import make_token
from powersync_django.consumers import SyncConsumer
from powersync_django.replication import replicate_now
from powersync_django.routing import powersync_application
from powersync_django.rsocket import (
    APPLICATION_ERROR,
    CONNECTION_ERROR,
    INVALID_SETUP,
    REJECTED,
    REJECTED_SETUP,
    UNSUPPORTED_SETUP,
    Cancel,
    Error,
    Frame,
    Keepalive,
    Payload,
    RequestN,
    RequestStream,
    RSocketProtocolError,
    Setup,
    UnknownFrame,
    decode_frame,
)
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"
BSON = "application/bson"
TIMEOUT = 10


# --- helpers ---------------------------------------------------------------------------------------


def run_async(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an async test body in a fresh event loop (the hub and sessions belong to that loop)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Blocking ORM code from async tests, in a worker thread that closes its connection afterwards."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


def config(**changes: Any) -> dict[str, Any]:
    return {**settings.POWERSYNC, **changes}


def seed(owner: str = "u1", todos: int = 2) -> TodoList:
    lst = TodoList.objects.create(name=f"list of {owner}", owner_id=owner)
    for i in range(todos):
        Todo.objects.create(list=lst, description=f"todo {i}", created_by=owner)
    replicate_now()
    return lst


def encode(doc: Any, mime: str) -> bytes:
    return bson.encode(doc) if mime == BSON else orjson.dumps(doc)


def setup_frame(token: str | None = None, mime: str = JSON, metadata: Any = None) -> bytes:
    if metadata is None:
        metadata = {"token": f"Token {token}", "user_agent": "powersync-test/1.0"}
    return Setup(20000, 90000, mime, mime, metadata=encode(metadata, mime)).encode()


def request_frame(
    stream_id: int = 1, n: int = 10, body: Any = None, mime: str = JSON, path: str = "/sync/stream"
) -> bytes:
    body = (
        {"buckets": [], "include_checksum": True, "raw_data": True, "client_id": "c1"}
        if body is None
        else body
    )
    return RequestStream(
        stream_id, n, metadata=encode({"path": path}, mime), data=encode(body, mime)
    ).encode()


def keepalive(data: bytes = b"") -> bytes:
    return Keepalive(respond=True, data=data).encode()


class CountingSession(SyncSession):
    """Records how far the consumer advanced the session generator and whether it was closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.yielded = 0
        self.kinds: list[str] = []
        self.closed = False

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        gen = super().lines()
        try:
            async for line in gen:
                self.yielded += 1
                self.kinds.append(next(iter(line)))
                yield line
        finally:
            await gen.aclose()
            self.closed = True


@dataclass
class App:
    """A SyncConsumer subclass that remembers its instances and sessions."""

    consumers: list[SyncConsumer] = field(default_factory=list)
    sessions: list[CountingSession] = field(default_factory=list)
    session_base: type[CountingSession] = CountingSession

    def asgi(self, **attrs: Any) -> Any:
        app = self

        class Session(self.session_base):  # type: ignore[name-defined,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                app.sessions.append(self)

        class Consumer(SyncConsumer):
            session_class = Session

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                app.consumers.append(self)

        for name, value in attrs.items():
            setattr(Consumer, name, value)
        return Consumer.as_asgi()

    @property
    def consumer(self) -> SyncConsumer:
        return self.consumers[-1]

    @property
    def session(self) -> CountingSession:
        return self.sessions[-1]


class Client:
    """A WebsocketCommunicator speaking RSocket frames."""

    def __init__(self, application: Any, path: str = "/sync/stream") -> None:
        self.comm = WebsocketCommunicator(application, path)
        self.marker = 0

    async def connect(self) -> None:
        connected, subprotocol = await self.comm.connect()
        assert connected and subprotocol is None

    async def send(self, message: bytes | str) -> None:
        key = "text" if isinstance(message, str) else "bytes"
        await self.comm.send_input({"type": "websocket.receive", key: message})

    async def next(self) -> Frame | None:
        """The next frame from the server; None when it closed the socket."""
        message = await self.comm.receive_output(TIMEOUT)
        if message["type"] == "websocket.close":
            return None
        assert message["type"] == "websocket.send" and "bytes" in message and message.get("text") is None
        return decode_frame(message["bytes"])

    async def line(self) -> dict[str, Any]:
        frame = await self.next()
        assert isinstance(frame, Payload) and frame.next and not frame.complete, frame
        assert frame.metadata is None
        return bson.decode(frame.data)

    async def lines_until(self, key: str) -> list[dict[str, Any]]:
        out = []
        while True:
            out.append(await self.line())
            if key in out[-1]:
                return out

    async def sync(self) -> list[Frame]:
        """Round-trip a KEEPALIVE: every frame sent before it has been handled. Returns frames received meanwhile."""
        self.marker += 1
        data = f"marker-{self.marker}".encode()
        await self.send(keepalive(data))
        before = []
        while True:
            frame = await self.next()
            assert frame is not None, "connection closed"
            if isinstance(frame, Keepalive) and frame.data == data:
                assert not frame.respond and frame.last_received_position == 0
                return before
            before.append(frame)

    async def expect_error_and_close(self) -> Error:
        frame = await self.next()
        assert isinstance(frame, Error), frame
        assert await self.next() is None
        return frame

    async def close(self) -> None:
        await self.comm.disconnect()
        await self.comm.wait(TIMEOUT)  # re-raises anything the consumer raised


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll a condition of the consumer's state (there is no event to wait on from outside)."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def _collect_abandoned_connections() -> Iterator[None]:
    """Free what cancelled hub tasks left behind before the test database is dropped.

    A hub whose LISTEN task is cancelled inside ``psycopg.AsyncConnection.connect`` (sessions that end right
    after starting, when the test's event loop closes) leaves an open connection that only the garbage
    collector closes; PostgreSQL then refuses to drop the test database.
    """
    yield
    notify._hubs.clear()
    gc.collect()


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def token() -> str:
    return make_token("u1")


# --- the session over RSocket ----------------------------------------------------------------------


@pytest.mark.parametrize("mime", [JSON, BSON])
@run_async
async def test_initial_sync_json_and_bson(app: App, token: str, mime: str) -> None:
    lst = await in_thread(seed)("u1", 2)
    await in_thread(seed)("u2", 1)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token, mime))
    await client.send(request_frame(mime=mime, body={"buckets": [], "client_id": "c1", "raw_data": True}))
    lines = await client.lines_until("checkpoint_complete")

    assert list(lines[0]) == ["checkpoint"]
    checkpoint = lines[0]["checkpoint"]
    buckets = {b["bucket"]: b for b in checkpoint["buckets"]}
    assert set(buckets) == {'1#lists["u1"]', f'1#todos_by_list["{lst.id}"]'}
    assert buckets[f'1#todos_by_list["{lst.id}"]']["count"] == 2
    assert isinstance(checkpoint["last_op_id"], str)
    assert lines[-1] == {"checkpoint_complete": {"last_op_id": checkpoint["last_op_id"]}}
    data = [line["data"] for line in lines if "data" in line]
    todos = {
        op["object_id"]: orjson.loads(op["data"])
        for d in data
        if d["bucket"].startswith("1#todos_by_list")
        for op in d["data"]
    }
    assert sorted(t["description"] for t in todos.values()) == ["todo 0", "todo 1"]
    lists = [
        orjson.loads(op["data"]) for d in data if d["bucket"] == '1#lists["u1"]' for op in d["data"]
    ]
    assert [x["name"] for x in lists] == ["list of u1"]
    for d in data:
        assert all(isinstance(op["op_id"], str) for op in d["data"])
        count = sum(len(x["data"]) for x in data if x["bucket"] == d["bucket"])
        assert count == buckets[d["bucket"]]["count"]
    assert app.consumer.claims is not None and app.consumer.claims.user_id == "u1"
    assert app.consumer.user_agent == "powersync-test/1.0"
    await client.close()
    assert app.session.closed


@run_async
async def test_live_change_arrives_as_checkpoint_diff(app: App, token: str) -> None:
    lst = await in_thread(seed)("u1", 1)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame())
    await client.lines_until("checkpoint_complete")

    def change() -> None:
        Todo.objects.create(list=lst, description="live one")
        replicate_now()

    await in_thread(change)()
    lines = await client.lines_until("checkpoint_complete")
    assert list(lines[0]) == ["checkpoint_diff"]
    diff = lines[0]["checkpoint_diff"]
    assert [b["bucket"] for b in diff["updated_buckets"]] == [f'1#todos_by_list["{lst.id}"]']
    assert diff["removed_buckets"] == []
    ops = [op for line in lines if "data" in line for op in line["data"]["data"]]
    assert [orjson.loads(op["data"])["description"] for op in ops] == ["live one"]
    await client.close()


@run_async
async def test_token_expiry_completes_the_stream(app: App) -> None:
    await in_thread(replicate_now)()
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(make_token("u1", ttl=1)))
    await client.send(request_frame())
    lines = []
    while True:
        frame = await client.next()
        assert isinstance(frame, Payload)
        if frame.complete:
            assert not frame.next and frame.data == b""
            break
        lines.append(bson.decode(frame.data))
    assert lines[-1] == {"token_expires_in": 0}
    await client.sync()  # the connection stays usable; the client closes it
    await client.close()
    assert app.session.closed


# --- SETUP and authentication ----------------------------------------------------------------------


def _expired_token() -> str:
    now = int(time.time())
    secret = settings.POWERSYNC["JWT"]["SECRET"]
    return jwt.encode(
        {"sub": "u1", "iat": now - 7200, "exp": now - 3600, "aud": "powersync"}, secret, "HS256"
    )


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ({}, "PSYNC_S2106"),
        ({"token": None}, "PSYNC_S2106"),
        ({"token": 12}, "PSYNC_S2106"),
        ({"token": "not-prefixed"}, "PSYNC_S2106"),
        ({"token": "Token not.a.jwt"}, "PSYNC_S2101"),
        ({"token": "expired"}, "PSYNC_S2103"),
    ],
)
@pytest.mark.parametrize("mime", [JSON, BSON])
@run_async
async def test_auth_failure_rejects_setup_and_closes(app: App, metadata: dict, code: str, mime: str) -> None:
    if metadata.get("token") == "expired":
        metadata = {"token": f"Token {_expired_token()}"}
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(mime=mime, metadata=metadata))
    await client.send(request_frame(mime=mime))  # buffered meanwhile, then dropped with the connection
    error = await client.expect_error_and_close()
    assert error.stream_id == 0 and error.code == REJECTED_SETUP
    assert error.message.startswith(f"[{code}] ")
    assert app.sessions == []
    await client.close()


@run_async
async def test_setup_without_metadata_is_unauthenticated(app: App) -> None:
    client = Client(app.asgi())
    await client.connect()
    await client.send(Setup(20000, 90000, JSON, JSON).encode())
    error = await client.expect_error_and_close()
    assert (error.code, error.message[:14]) == (REJECTED_SETUP, "[PSYNC_S2106] ")
    await client.close()


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        (Setup(20000, 90000, "text/plain", JSON, metadata=b"{}").encode(), REJECTED_SETUP, "[PSYNC_S2004]"),
        (
            Setup(20000, 90000, JSON, "application/cbor", metadata=b"{}").encode(),
            REJECTED_SETUP,
            "[PSYNC_S2004]",
        ),
        (Setup(20000, 90000, JSON, JSON, metadata=b"{not json").encode(), INVALID_SETUP, "[PSYNC_S2001]"),
        (Setup(20000, 90000, JSON, JSON, metadata=b"[1]").encode(), INVALID_SETUP, "[PSYNC_S2001]"),
        (
            Setup(20000, 90000, BSON, BSON, metadata=b"\x05\x00\x00\x00").encode(),
            INVALID_SETUP,
            "[PSYNC_S2001]",
        ),
        (Setup(20000, 90000, JSON, JSON, major_version=2).encode(), UNSUPPORTED_SETUP, "[PSYNC_S2001]"),
        (Setup(20000, 90000, JSON, JSON, resume_token=b"r").encode(), UNSUPPORTED_SETUP, "[PSYNC_S2001]"),
        (Setup(20000, 90000, JSON, JSON, lease=True).encode(), UNSUPPORTED_SETUP, "[PSYNC_S2001]"),
        (keepalive(), INVALID_SETUP, "[PSYNC_S2001] Expected SETUP"),
        (request_frame(), INVALID_SETUP, "[PSYNC_S2001] Expected SETUP"),
        (setup_frame("x")[:20], INVALID_SETUP, "[PSYNC_S2001] Invalid RSocket frame"),
        (b"\x00\x00", INVALID_SETUP, "[PSYNC_S2001] Invalid RSocket frame"),
        ("a text message", INVALID_SETUP, "[PSYNC_S2001] RSocket frames must be binary"),
    ],
)
@run_async
async def test_bad_setup_gets_error_and_close(app: App, frame: bytes | str, code: int, text: str) -> None:
    client = Client(app.asgi())
    await client.connect()
    await client.send(frame)
    error = await client.expect_error_and_close()
    assert error.stream_id == 0 and error.code == code
    assert error.message.startswith(text), error.message
    await client.close()


@run_async
async def test_frames_sent_before_auth_completes_are_buffered_in_order(app: App, token: str) -> None:
    await in_thread(seed)("u1", 1)
    gate = asyncio.Event()

    async def slow_authenticate(self: SyncConsumer, authorization: Any) -> Any:
        await gate.wait()
        return await SyncConsumer.authenticate(self, authorization)

    client = Client(app.asgi(authenticate=slow_authenticate))
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame(n=10))
    await client.send(keepalive(b"early"))
    await client.send(RequestN(1, 5).encode())
    await wait_for(lambda: len(app.consumers[0]._pending) == 3)
    assert await client.comm.receive_nothing()
    gate.set()

    first = await client.next()
    assert first == Keepalive(respond=False, data=b"early")
    lines = await client.lines_until("checkpoint_complete")
    assert list(lines[0]) == ["checkpoint"]
    await client.sync()
    stream = app.consumer._streams[1]
    assert stream.credit == 10 + 5 - len(lines)  # the REQUEST_N was not lost either
    assert app.session.yielded == len(lines)
    await client.close()


@run_async
async def test_too_many_frames_during_setup_closes(app: App, token: str) -> None:
    gate = asyncio.Event()

    async def never(self: SyncConsumer, authorization: Any) -> Any:
        await gate.wait()

    client = Client(app.asgi(authenticate=never, max_pending_frames=3))
    await client.connect()
    await client.send(setup_frame(token))
    for _ in range(4):
        await client.send(keepalive())
    error = await client.expect_error_and_close()
    assert (error.stream_id, error.code) == (0, CONNECTION_ERROR)
    assert error.message.startswith("[PSYNC_S2001] ")
    await client.close()
    assert app.consumer._setup_task is None and app.consumer._pending == deque()


@run_async
async def test_jwks_verification_runs_in_a_thread(
    app: App, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from powersync_django.auth import verify_token

    threads = []

    def verify(tok: str) -> Any:
        threads.append(threading.current_thread())
        return verify_token(tok)

    monkeypatch.setattr(consumers, "verify_token", verify)
    client = Client(app.asgi())
    with override_settings(
        POWERSYNC=config(JWT={**settings.POWERSYNC["JWT"], "JWKS_URL": "https://example.invalid/jwks"})
    ):
        await client.connect()
        await client.send(setup_frame(token))
        await client.sync()
    assert threads and threads[0] is not threading.main_thread()
    assert app.consumer.claims is not None
    await client.close()


# --- keepalive, flow control, cancellation ----------------------------------------------------------


@run_async
async def test_keepalive_is_echoed(app: App, token: str) -> None:
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(keepalive(b"ping"))
    assert await client.next() == Keepalive(respond=False, last_received_position=0, data=b"ping")
    assert app.consumer.channel_layer is None  # no per-connection channel
    await client.send(Keepalive(respond=False).encode())  # no R: no answer
    assert await client.sync() == []
    await client.close()


@run_async
async def test_credit_limits_payloads_until_request_n(app: App, token: str) -> None:
    with override_settings(POWERSYNC=config(OPS_PER_DATA_LINE=1)):
        await in_thread(seed)("u1", 5)  # 1 list + 5 todos, one op per data line
        client = Client(app.asgi())
        await client.connect()
        await client.send(setup_frame(token))
        await client.send(request_frame(n=2))
        lines = [await client.line(), await client.line()]
        assert await client.sync() == []  # nothing beyond the credit
        stream = app.consumer._streams[1]
        assert (stream.credit, stream.waiting, app.session.yielded) == (0, True, 2)

        await client.send(RequestN(1, 1).encode())
        lines.append(await client.line())
        assert await client.sync() == []
        assert (stream.credit, stream.waiting, app.session.yielded) == (0, True, 3)

        await client.send(RequestN(1, 100).encode())
        lines += await client.lines_until("checkpoint_complete")
    kinds = [next(iter(line)) for line in lines]
    assert kinds == ["checkpoint"] + ["data"] * 6 + ["checkpoint_complete"]
    assert app.session.yielded == len(lines)
    assert stream.credit == 2 + 1 + 100 - len(lines)
    await client.close()


@run_async
async def test_client_without_credit_does_not_grow_server_memory(app: App, token: str) -> None:
    with override_settings(POWERSYNC=config(OPS_PER_DATA_LINE=1)):
        lst = await in_thread(seed)("u1", 300)
        client = Client(app.asgi())
        await client.connect()
        await client.send(setup_frame(token))
        await client.send(request_frame(n=2))
        assert list(await client.line()) == ["checkpoint"]
        assert list(await client.line()) == ["data"]
        for _ in range(20):  # the connection stays alive; the session does not move on
            assert await client.sync() == []
        session = app.session
        stream = app.consumer._streams[1]
        assert stream.waiting and stream.credit == 0
        assert session.yielded == 2  # the generator was advanced exactly as far as the credit
        todos = f'1#todos_by_list["{lst.id}"]'
        assert todos not in session.positions or session.positions[todos] == 0  # no todo page read yet
        assert client.comm.output_queue.qsize() == 0  # nothing queued for sending either
        await client.close()
    assert session.closed


@run_async
async def test_cancel_stops_the_stream_and_closes_the_session(app: App, token: str) -> None:
    lst = await in_thread(seed)("u1", 1)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame())
    await client.lines_until("checkpoint_complete")
    task = app.consumer._streams[1].task
    await client.send(Cancel(1).encode())
    assert await client.sync() == []  # no ERROR, no PAYLOAD
    assert app.session.closed and task is not None and task.done()
    assert app.consumer._streams == {}

    await in_thread(lambda: (Todo.objects.create(list=lst, description="late"), replicate_now()))()
    await client.send(RequestN(1, 5).encode())  # late frames for the ended stream are ignored
    assert await client.sync() == []
    assert await client.comm.receive_nothing(0.3)

    # The connection can open a new stream afterwards.
    await client.send(request_frame(stream_id=3))
    assert list((await client.lines_until("checkpoint_complete"))[0]) == ["checkpoint"]
    await client.close()


@run_async
async def test_disconnect_cancels_streams_and_closes_sessions(app: App, token: str) -> None:
    await in_thread(seed)("u1", 1)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame())
    await client.lines_until("checkpoint_complete")
    task = app.consumer._streams[1].task
    await client.close()
    assert app.session.closed
    assert task is not None and task.done()
    assert app.consumer._streams == {} and app.consumer.closed


@run_async
async def test_disconnect_while_waiting_for_credit(app: App, token: str) -> None:
    await in_thread(seed)("u1", 3)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame(n=1))
    await client.line()
    await client.sync()
    await client.close()
    assert app.session.closed and app.session.yielded == 1


# --- stream errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (
            RequestStream(1, 10, metadata=b'{"path":"/sync/stream"}', data=b"{oops").encode(),
            "[PSYNC_S2001] Request body is not valid JSON",
        ),
        (
            RequestStream(1, 10, metadata=b'{"path":"/sync/stream"}', data=b'{"buckets": 3}').encode(),
            "[PSYNC_S2001] 'buckets' must be an array",
        ),
        (request_frame(path="/write-checkpoint2.json"), "[PSYNC_S2002] Route not found"),
        (
            RequestStream(1, 10, metadata=b"{bad", data=b"{}").encode(),
            "[PSYNC_S2001] REQUEST_STREAM metadata",
        ),
        (RequestStream(1, 10, metadata=b"[]", data=b"{}").encode(), "[PSYNC_S2001] REQUEST_STREAM metadata"),
        (RequestStream(1, 10, data=b"{}", follows=True).encode(), "[PSYNC_S2001] Fragmented requests"),
    ],
)
@run_async
async def test_bad_request_gets_stream_error(app: App, token: str, frame: bytes, text: str) -> None:
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(frame)
    error = await client.next()
    assert isinstance(error, Error) and (error.stream_id, error.code) == (1, APPLICATION_ERROR)
    assert error.message.startswith(text), error.message
    assert await client.sync() == []  # the connection stays open
    assert app.consumer._streams == {}
    await client.close()


@run_async
async def test_bson_request_with_non_json_types_is_rejected(app: App, token: str) -> None:
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token, BSON))
    await client.send(request_frame(mime=BSON, body={"parameters": {"at": bson.ObjectId()}}))
    error = await client.next()
    assert isinstance(error, Error) and error.code == APPLICATION_ERROR
    assert error.message.startswith("[PSYNC_S2001] Request body is the BSON document holds non-JSON types")
    await client.close()


@run_async
async def test_request_body_limit(app: App, token: str) -> None:
    client = Client(app.asgi())
    with override_settings(POWERSYNC=config(MAX_REQUEST_BYTES=100)):
        await client.connect()
        await client.send(setup_frame(token))
        await client.send(request_frame(body={"client_id": "x" * 150}))
        error = await client.next()
    assert isinstance(error, Error) and error.message == "[PSYNC_S2001] Request body too large"
    await client.close()


@run_async
async def test_too_many_buckets_is_a_stream_error(app: App, token: str) -> None:
    with override_settings(POWERSYNC=config(MAX_BUCKETS_PER_CONNECTION=0)):
        await in_thread(replicate_now)()
        client = Client(app.asgi())
        await client.connect()
        await client.send(setup_frame(token))
        await client.send(request_frame())
        error = await client.next()
    assert isinstance(error, Error) and (error.stream_id, error.code) == (1, APPLICATION_ERROR)
    assert error.message.startswith("[PSYNC_S2305] Too many buckets: more than 0\n  ")
    await client.close()


class FailingSession(CountingSession):
    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        yield {"checkpoint": {"last_op_id": "0", "buckets": []}}
        raise RuntimeError("secret internal detail")


@run_async
async def test_internal_error_in_stream_is_logged_not_leaked(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    await in_thread(replicate_now)()
    app = App(session_base=FailingSession)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame())
    assert list(await client.line()) == ["checkpoint"]
    error = await client.next()
    assert error == Error(1, APPLICATION_ERROR, "[PSYNC_S2001] Something went wrong")
    assert await client.sync() == []
    assert app.consumer._streams == {}
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)
    await client.close()


@run_async
async def test_second_concurrent_stream_is_rejected(app: App, token: str) -> None:
    await in_thread(replicate_now)()
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(request_frame(stream_id=1))
    await client.lines_until("checkpoint_complete")
    await client.send(request_frame(stream_id=3))
    error = await client.next()
    assert isinstance(error, Error) and (error.stream_id, error.code) == (3, REJECTED)
    assert error.message.startswith("[PSYNC_S2304] ")
    assert list(app.consumer._streams) == [1]
    await client.close()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([request_frame(stream_id=2)], CONNECTION_ERROR),  # even ids belong to the server
        ([request_frame(stream_id=1, n=1), request_frame(stream_id=1)], CONNECTION_ERROR),
        ([setup_frame("again")], CONNECTION_ERROR),
        (["text after setup"], CONNECTION_ERROR),
        ([b"\x00\x00\x00\x01\x20\x00\x00"], CONNECTION_ERROR),  # truncated REQUEST_N
        ([UnknownFrame(0x0C, 0, 0, b"metadata push").encode()], CONNECTION_ERROR),
    ],
)
@run_async
async def test_connection_errors_after_setup(app: App, token: str, frames: list, code: int) -> None:
    await in_thread(seed)("u1", 3)
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    for frame in frames:
        await client.send(frame)
    while True:  # payloads of an open stream may come first
        frame = await client.next()
        assert frame is not None
        if isinstance(frame, Error):
            break
    assert (frame.stream_id, frame.code) == (0, code) and frame.message.startswith("[PSYNC_S2001] ")
    assert await client.next() is None
    await client.close()
    assert all(s.closed or s.yielded == 0 for s in app.sessions)


@run_async
async def test_unsupported_and_ignorable_frames(app: App, token: str) -> None:
    client = Client(app.asgi())
    await client.connect()
    await client.send(setup_frame(token))
    await client.send(UnknownFrame(0x04, 5, 0, b"request/response").encode())
    error = await client.next()
    assert isinstance(error, Error) and (error.stream_id, error.code) == (5, REJECTED)
    assert error.message.startswith("[PSYNC_S2002] ")
    await client.send(UnknownFrame(0x3F, 0, 0x200, b"ext, ignorable").encode())
    await client.send(UnknownFrame(0x05, 7, 0, b"fire and forget").encode())
    await client.send(Payload(9, b"x", next=True).encode())
    await client.send(Error(11, APPLICATION_ERROR, "client side").encode())
    assert await client.sync() == []
    await client.send(Error(0, CONNECTION_ERROR, "bye").encode())
    assert await client.next() is None
    await client.close()


# --- routing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "path"), [("", "/sync/stream"), ("/api/", "/api/sync/stream")])
@run_async
async def test_routing_serves_the_consumer(token: str, prefix: str, path: str) -> None:
    from django.core.asgi import get_asgi_application

    with override_settings(POWERSYNC=config(REPLICATOR_IN_PROCESS=False)):
        application = powersync_application(get_asgi_application(), prefix=prefix)
    client = Client(application, path)
    await client.connect()
    await client.send(setup_frame(token))
    assert await client.sync() == []
    await client.close()


# --- fuzzing ---------------------------------------------------------------------------------------

_FUZZ_TOKEN: list[str] = []


def _fuzz_token() -> str:
    if not _FUZZ_TOKEN:
        _FUZZ_TOKEN.append(make_token("u1", ttl=86400))
    return _FUZZ_TOKEN[0]


def _valid_frames() -> list[bytes]:
    return [
        request_frame(n=3),
        request_frame(stream_id=3, body={"buckets": [{"name": '1#lists["u1"]', "after": "0"}]}),
        RequestN(1, 2).encode(),
        Cancel(1).encode(),
        keepalive(b"k"),
        Keepalive(respond=False).encode(),
        Error(1, APPLICATION_ERROR, "x").encode(),
    ]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    frame = bytearray(draw(base))
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "append"]))
    if kind == "truncate":
        return bytes(frame[: draw(st.integers(0, max(0, len(frame) - 1)))])
    pos = draw(st.integers(0, len(frame)))
    if kind == "flip" and frame:
        pos = min(pos, len(frame) - 1)
        frame[pos] = draw(st.integers(0, 255))
    elif kind == "insert":
        frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    else:
        frame += draw(st.binary(min_size=1, max_size=8))
    return bytes(frame)


@st.composite
def _message(draw: st.DrawFn, valid: st.SearchStrategy[bytes], valid_share: int) -> bytes | str:
    """A valid frame (``valid_share`` in 10), a mutated one, random bytes or a text message."""
    pick = draw(st.integers(0, 9))
    if pick < valid_share:
        return draw(valid)
    if pick < 8:
        return draw(mutated(valid))
    return draw(st.binary(max_size=40)) if pick == 8 else "text"


def _messages() -> st.SearchStrategy[list[bytes | str]]:
    setup = st.builds(lambda: setup_frame(_fuzz_token()))
    first = _message(setup, 5)
    later = _message(st.sampled_from(_valid_frames()), 7)
    return st.tuples(first, st.lists(later, max_size=6)).map(lambda t: [t[0], *t[1]])


def _decodes(message: bytes | str) -> bool:
    if isinstance(message, str):
        return False
    try:
        decode_frame(message)
    except RSocketProtocolError:
        return False
    return True


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=_messages())
def test_fuzzed_frames_never_crash_the_consumer(
    messages: list[bytes | str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    app = App()

    async def run() -> tuple[list[Frame], bool]:
        client = Client(app.asgi())
        await client.connect()
        for message in messages:
            await client.send(message)
        await client.send(keepalive(b"end-of-fuzz"))
        received: list[Frame] = []
        closed = False
        while True:
            frame = await client.next()  # every output must be a decodable frame
            if frame is None:
                closed = True
                break
            if isinstance(frame, Keepalive) and frame.data == b"end-of-fuzz":
                break
            received.append(frame)
        # Let every stream still open run its initial sync (a new user: checkpoint, checkpoint_complete).
        consumer = app.consumer
        if not closed:
            for sid in list(consumer._streams):
                await client.send(RequestN(sid, 100).encode())

        def syncing() -> bool:
            return any(
                s.session is None or "checkpoint_complete" not in s.session.kinds  # type: ignore[attr-defined]
                for s in consumer._streams.values()
            )

        while not closed and syncing():
            frame = await client.next()
            assert frame is not None
            received.append(frame)
        await client.close()  # re-raises an exception escaping the consumer
        assert consumer._streams == {} and consumer._setup_task is None
        assert all(s.closed or s.yielded == 0 for s in app.sessions)
        return received, closed

    received, closed = asyncio.run(run())
    event("closed with ERROR" if closed else "still open")
    if any(isinstance(f, Payload) for f in received):
        event("sync lines sent")
    if closed:
        assert received and isinstance(received[-1], Error) and received[-1].stream_id == 0
        assert "[PSYNC_S2" in received[-1].message
    if not all(_decodes(m) for m in messages):
        assert closed  # an undecodable frame or text message always ends the connection with an ERROR
    first = messages[0]
    if not (isinstance(first, bytes) and _decodes(first) and isinstance(decode_frame(first), Setup)):
        assert closed and received[-1].code == INVALID_SETUP
    for frame in received:
        if isinstance(frame, Error) and frame.stream_id:
            assert frame.message.startswith("[PSYNC_S2")
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]


@run_async
async def test_streams_over_the_process_cap_are_rejected_with_s2304(app: App, token: str) -> None:
    from powersync_django import limits

    await in_thread(replicate_now)()
    with override_settings(POWERSYNC=config(MAX_CONCURRENT_STREAMS=1)):
        first, second = Client(app.asgi()), Client(app.asgi())
        for client in (first, second):
            await client.connect()
            await client.send(setup_frame(token))
        await first.send(request_frame())
        await first.lines_until("checkpoint_complete")
        await second.send(request_frame())
        error = await second.next()
        assert isinstance(error, Error) and (error.stream_id, error.code) == (1, APPLICATION_ERROR)
        assert error.message.startswith("[PSYNC_S2304] ")
        await first.close()
        await wait_for(lambda: limits.active() == 0)
        await second.send(request_frame(stream_id=3))
        assert "checkpoint" in await second.line()
        await second.close()
    await wait_for(lambda: limits.active() == 0)


@run_async
async def test_streams_over_the_per_user_cap_are_rejected_with_s2304(app: App, token: str) -> None:
    """MAX_STREAMS_PER_USER counts WebSocket streams too: the same user's second connection is refused."""
    from powersync_django import limits

    await in_thread(replicate_now)()
    with override_settings(POWERSYNC=config(MAX_STREAMS_PER_USER=1)):
        first, second = Client(app.asgi()), Client(app.asgi())
        for client in (first, second):
            await client.connect()
            await client.send(setup_frame(token))
        await first.send(request_frame())
        await first.lines_until("checkpoint_complete")
        await second.send(request_frame())
        error = await second.next()
        assert isinstance(error, Error) and (error.stream_id, error.code) == (1, APPLICATION_ERROR)
        assert error.message.startswith("[PSYNC_S2304] ") and "this user" in error.message
        await first.close()
        await wait_for(lambda: limits.active() == 0)
        await second.send(request_frame(stream_id=3))
        assert "checkpoint" in await second.line()
        await second.close()
    await wait_for(lambda: limits.active() == 0)
