"""Checkpoint requests (``POST /sync/checkpoint-request``, protocol.md §11.5) and how streams report them."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from django.test import AsyncClient
from test_sync import claims, in_thread, seed, take_until

from demo_project.todos.models import Todo
from powersync_django import storage
from powersync_django.auth import make_token
from powersync_django.models import OutboxEntry, WriteCheckpoint
from powersync_django.protocol import MAX_OP_ID, SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)


def post(body: object, user: str | None = "u1", raw: bytes | None = None, **headers):
    async def run():
        if user is not None:
            headers["Authorization"] = f"Token {make_token(user)}"
        data = raw if raw is not None else orjson.dumps(body)
        return await AsyncClient().post("/sync/checkpoint-request", data=data, content_type="application/json",
                                        headers=headers)

    return asyncio.run(run())


def stored(body: object, user: str = "u1") -> str:
    response = post(body, user)
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)["data"]["checkpoint_request_id"]


def legacy(client_id: str, user: str = "u1") -> str:
    async def run():
        return await AsyncClient().get(f"/write-checkpoint2.json?client_id={client_id}",
                                       headers={"Authorization": f"Token {make_token(user)}"})

    return orjson.loads(asyncio.run(run()).content)["data"]["write_checkpoint"]


def test_answers_the_stored_maximum_per_user_and_client():
    assert stored({"client_id": "a", "checkpoint_request_id": "5"}) == "5"
    assert stored({"client_id": "a", "checkpoint_request_id": 7}) == "7"  # a JSON number is accepted too
    assert stored({"client_id": "a", "checkpoint_request_id": "7"}) == "7"  # repeated: no-op
    assert stored({"client_id": "a", "checkpoint_request_id": "3"}) == "7"  # stale: the stored value
    assert stored({"client_id": "b", "checkpoint_request_id": "2"}) == "2"
    assert stored({"client_id": "a", "checkpoint_request_id": "1"}, user="u2") == "1"
    assert stored({"client_id": "a", "checkpoint_request_id": str(MAX_OP_ID), "extra": [1]}) == str(MAX_OP_ID)


def test_only_a_new_id_writes_a_marker():
    stored({"client_id": "a", "checkpoint_request_id": "4"})
    assert list(OutboxEntry.objects.values_list("op", "snapshot")) == [(OutboxEntry.MARKER, "4")]
    stored({"client_id": "a", "checkpoint_request_id": "4"})
    stored({"client_id": "a", "checkpoint_request_id": "2"})
    assert OutboxEntry.objects.count() == 1
    replicate_now()
    key = storage.write_checkpoint_key("u1", "a")
    assert WriteCheckpoint.objects.values_list("issued", "replicated").get(key=key) == (4, 4)
    stored({"client_id": "a", "checkpoint_request_id": "4"})
    assert OutboxEntry.objects.count() == 0


def test_requests_and_write_checkpoints_share_one_counter():
    """Switching modes never goes backwards: the client seeds its request counter from the answer."""
    assert legacy("a") == "1"
    assert legacy("a") == "2"
    assert stored({"client_id": "a", "checkpoint_request_id": "1"}) == "2"  # seeds the client above 2
    assert stored({"client_id": "a", "checkpoint_request_id": "3"}) == "3"
    assert legacy("a") == "4"
    # No client id ("") is the key of write-checkpoint2.json without client_id.
    assert stored({"client_id": "", "checkpoint_request_id": "9"}) == "9"
    assert storage.create_write_checkpoint("u1", None) == 10


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"checkpoint_request_id": "1"}, "client_id"),
        ({"client_id": 5, "checkpoint_request_id": "1"}, "client_id"),
        ({"client_id": "x" * 201, "checkpoint_request_id": "1"}, "client_id"),
        ({"client_id": "a"}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": None}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": "0"}, "between 1 and"),
        ({"client_id": "a", "checkpoint_request_id": 0}, "between 1 and"),
        ({"client_id": "a", "checkpoint_request_id": -3}, "between 1 and"),
        ({"client_id": "a", "checkpoint_request_id": "-3"}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": "1.5"}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": 1.0}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": True}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": " 1"}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": "²"}, "decimal string"),
        ({"client_id": "a", "checkpoint_request_id": str(MAX_OP_ID + 1)}, "between 1 and"),
        ({"client_id": "a", "checkpoint_request_id": MAX_OP_ID + 1}, "between 1 and"),
        ({"client_id": "a", "checkpoint_request_id": "1" * 40}, "decimal string"),
        ([1], "JSON object"),
        (None, "JSON object"),
    ],
)
def test_bad_input_is_a_400_json_error(body, fragment):
    response = post(body)
    assert response.status_code == 400
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "PSYNC_S2001" and fragment in error["description"]
    assert not WriteCheckpoint.objects.exists() and not OutboxEntry.objects.exists()


def test_bad_json_size_auth_and_method():
    assert post(None, raw=b"{nope").status_code == 400
    assert post(None, raw=b"").status_code == 400
    assert post(None, raw=b'{"client_id": "' + b"a" * 5000 + b'"}').status_code == 413
    response = post({"client_id": "a", "checkpoint_request_id": "1"}, user=None)
    assert response.status_code == 401
    assert orjson.loads(response.content)["error"]["code"] == "PSYNC_S2106"

    async def get():
        return await AsyncClient().get("/sync/checkpoint-request", headers={"Authorization": f"Token {make_token('u1')}"})

    assert asyncio.run(get()).status_code == 405
    assert not WriteCheckpoint.objects.exists()


def test_the_stream_reports_an_acknowledged_request_once_its_checkpoint_has_the_data_before_it():
    lst = seed("u1", todos=1)

    async def run():
        session = SyncSession(claims("u1"), SyncRequest(client_id="c1"))
        await session.prepare()
        gen = session.lines()
        first = await take_until(gen, "checkpoint_complete")

        def write_then_request():
            Todo.objects.create(list=lst, description="uploaded")  # committed, not yet replicated
            return storage.request_checkpoint("u1", "c1", 42)

        answer = await in_thread(write_then_request)()
        await in_thread(replicate_now)()
        second = await take_until(gen, "checkpoint_complete")
        stale = await in_thread(storage.request_checkpoint)("u1", "c1", 41)
        await in_thread(lambda: (Todo.objects.create(list=lst, description="later"), replicate_now()))()
        third = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return first, answer, second, stale, third

    first, answer, second, stale, third = asyncio.run(run())
    assert "write_checkpoint" not in first[0]["checkpoint"]
    assert answer == 42 and stale == 42
    diff = second[0]["checkpoint_diff"]
    assert diff["write_checkpoint"] == "42"
    descriptions = [orjson.loads(op["data"])["description"] for line in second if "data" in line
                    for op in line["data"]["data"]]
    assert descriptions == ["uploaded"]
    assert third[0]["checkpoint_diff"]["write_checkpoint"] == "42"  # every line carries the current value


def test_a_new_stream_reports_the_acknowledged_request():
    seed("u1", todos=1)
    storage.request_checkpoint("u1", "c1", 8)
    replicate_now()

    async def run():
        session = SyncSession(claims("u1"), SyncRequest(client_id="c1"))
        await session.prepare()
        return await take_until(session.lines(), "checkpoint_complete")

    lines = asyncio.run(run())
    assert lines[0]["checkpoint"]["write_checkpoint"] == "8"


def test_openapi_describes_the_endpoint():
    from django.test import Client
    from drf_spectacular.validation import validate_schema

    schema = orjson.loads(Client().get("/api/schema", {"format": "json"}).content)
    validate_schema(schema)
    operation = schema["paths"]["/sync/checkpoint-request"]["post"]
    assert operation["security"] == [{"PowerSyncToken": []}]
    assert set(operation["responses"]) >= {"200", "400", "401", "413"}
    body = schema["components"]["schemas"]["PowerSyncCheckpointRequest"]
    assert body["required"] == ["client_id", "checkpoint_request_id"]


def asgi_post(path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """POST ``chunks`` as the request body through Django's ASGI handler, with exactly ``headers`` (a chunked
    request has no Content-Length); (status, body) of the answer."""
    from django.core.asgi import get_asgi_application

    app = get_asgi_application()
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    answer: dict = {"body": b""}

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return answer["status"], answer["body"]


def test_a_chunked_body_without_content_length_is_bounded_too():
    """Without a Content-Length header (chunked transfer) the body is read up to the limit, not in full."""
    body = orjson.dumps({"client_id": "a", "checkpoint_request_id": "7"})
    padding = [b" " * 65536] * 48  # 3 MB (over DATA_UPLOAD_MAX_MEMORY_SIZE) of whitespace after a valid document
    status, content = asgi_post("/sync/checkpoint-request", [body, *padding],
                                [(b"authorization", f"Token {make_token('u1')}".encode()),
                                 (b"content-type", b"application/json")])
    assert status == 413, content
    assert orjson.loads(content)["error"]["status"] == 413
    assert not WriteCheckpoint.objects.exists()
