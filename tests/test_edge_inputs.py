"""Bad input at the edge is a 4xx JSON answer (HTTP) or an ERROR frame (WebSocket), never a 500 (issue 10)."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from django.test import AsyncClient
from test_consumers import Client, request_frame, run_async, setup_frame

from powersync_django import storage
from powersync_django.auth import make_token
from powersync_django.consumers import SyncConsumer
from powersync_django.models import WriteCheckpoint
from powersync_django.rsocket import APPLICATION_ERROR, Error, Payload

pytestmark = pytest.mark.django_db(transaction=True)

BAD_AFTER = ["²", "--5", "9" * 5000, "-1", "1e3", " ", "١٢", str(1 << 63)]


def http(method: str, path: str, body: bytes | str = b"", user: str = "u1", **headers: str):
    async def run():
        client = AsyncClient()
        headers.setdefault("Authorization", f"Token {make_token(user)}")
        if method == "GET":
            response = await client.get(path, headers=headers)
        else:
            response = await client.post(path, data=body, content_type="application/json", headers=headers)
        if response.streaming:
            it = response.streaming_content.__aiter__()
            chunk = await asyncio.wait_for(it.__anext__(), 10)
            await it.aclose()
            return response, chunk
        return response, response.content

    return asyncio.run(run())


def error_of(response, content: bytes) -> dict:
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = orjson.loads(content)["error"]
    assert set(error) >= {"code", "status", "description", "name"}
    assert error["status"] == response.status_code
    return error


@pytest.mark.parametrize("after", BAD_AFTER)
def test_bad_after_is_400_json(after: str) -> None:
    body = orjson.dumps({"buckets": [{"name": "1#user_lists[\"u1\"]", "after": after}]})
    response, content = http("POST", "/sync/stream", body)
    assert response.status_code == 400
    assert error_of(response, content)["code"] == "PSYNC_S2001"


@pytest.mark.parametrize("after", ["²", "--5", "9" * 5000])
@run_async
async def test_bad_after_is_an_error_frame_on_websocket(after: str) -> None:
    client = Client(SyncConsumer.as_asgi())
    await client.connect()
    await client.send(setup_frame(make_token("u1")))
    await client.send(request_frame(body={"buckets": [{"name": "b", "after": after}]}))
    frame = await client.next()
    assert isinstance(frame, Error) and frame.stream_id == 1 and frame.code == APPLICATION_ERROR, frame
    assert frame.message.startswith("[PSYNC_S2001]") and "Something went wrong" not in frame.message
    # The connection stays usable: a good request on a new stream is served.
    await client.send(request_frame(stream_id=3))
    assert isinstance(await client.next(), Payload)
    await client.close()


@pytest.mark.parametrize("body", [
    {"client_id": "c" * 201},
    {"client_id": "a\x00b"},
    {"client_id": "line\nbreak"},
    {"buckets": [{"name": "b" * 501}]},
    {"parameters": {"p": "x" * (64 * 1024)}},
    {"app_metadata": {"k": 1}},
    {"app_metadata": "text"},
    {"app_metadata": {"k": "v" * (16 * 1024)}},
])
def test_client_strings_are_bounded(body: dict) -> None:
    response, content = http("POST", "/sync/stream", orjson.dumps(body))
    assert response.status_code == 400
    error_of(response, content)


@pytest.mark.parametrize("length", ["abc", "-5", "²", "9" * 40])
def test_malformed_content_length_is_not_a_500(length: str) -> None:
    response, content = http("POST", "/sync/stream", b"{}", **{"Content-Length": length})
    assert response.status_code < 500


@pytest.mark.parametrize("client_id", ["c" * 201, "a%00b", "tab%09"])
def test_write_checkpoint_client_id_is_bounded(client_id: str) -> None:
    response, content = http("GET", f"/write-checkpoint2.json?client_id={client_id}")
    assert response.status_code == 400
    assert error_of(response, content)["code"] == "PSYNC_S2001"
    assert not WriteCheckpoint.objects.exists()


def test_write_checkpoint_keys_are_unambiguous() -> None:
    pairs = [("alice", "phone"), ("alice/phone", None), ("alice/phone", ""), ('a"', "b"), ("a", '"b')]
    keys = {storage.write_checkpoint_key(u, c) for u, c in pairs}
    assert len(keys) == len(pairs) - 1  # "" and None are both "no client id"
    long_key = storage.write_checkpoint_key("u" * 255, "c" * 200)
    assert len(long_key) <= storage.MAX_WRITE_CHECKPOINT_KEY
    assert long_key != storage.write_checkpoint_key("u" * 255, "c" * 199)

    def wc(user: str, client: str | None) -> str:
        response, content = http("GET", "/write-checkpoint2.json" + (f"?client_id={client}" if client else ""),
                                 user=user)
        assert response.status_code == 200, content
        return orjson.loads(content)["data"]["write_checkpoint"]

    assert [wc("alice", "phone"), wc("alice/phone", None), wc("alice", "phone")] == ["1", "1", "2"]
    # The longest ids fit the columns (no 500 from an overflow on PostgreSQL).
    assert wc("u" * 255, "c" * 200) == "1"


# --- rate limits ----------------------------------------------------------------------------------------------


def _limits(**limits: object):
    from django.conf import settings
    from django.test import override_settings

    return override_settings(POWERSYNC={**settings.POWERSYNC,
                                        "RATE_LIMITS": {"CACHE": "default", "UPLOAD": None, **limits}})


def test_write_checkpoints_are_rate_limited_per_user() -> None:
    with _limits(WRITE_CHECKPOINT="3/minute"):
        statuses = [http("GET", "/write-checkpoint2.json?client_id=c")[0].status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        response, content = http("GET", "/write-checkpoint2.json?client_id=c")
        assert response.status_code == 429
        assert 1 <= int(response["Retry-After"]) <= 60
        assert error_of(response, content)["code"] == "RATE_LIMITED"
        # Another user has their own budget.
        assert http("GET", "/write-checkpoint2.json?client_id=c", user="u2")[0].status_code == 200
    assert WriteCheckpoint.objects.get(user_id="u1").issued == 3


def test_uploads_are_rate_limited_per_user() -> None:
    from django.test import Client as SyncClient

    from demo_project.todos.models import TodoList

    client = SyncClient()

    def upload(user: str) -> object:
        body = orjson.dumps({"batch": [{"op": "PUT", "type": "lists", "id": str(uuid.uuid4()),
                                        "data": {"name": "x"}}]})
        return client.post("/api/upload", body, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {make_token(user)}")

    with _limits(WRITE_CHECKPOINT=None, UPLOAD=(2, 3600)):
        assert [upload("u1").status_code for _ in range(3)] == [200, 200, 429]
        response = upload("u1")
        assert response.status_code == 429 and int(response["Retry-After"]) >= 1
        assert error_of(response, response.content)["code"] == "RATE_LIMITED"
        assert upload("u2").status_code == 200
    assert TodoList.objects.filter(owner_id="u1").count() == 2


def test_rate_limit_settings_are_checked() -> None:
    from django.core import checks

    from powersync_django.ratelimit import parse_rate

    assert parse_rate("120/minute") == (120, 60)
    assert parse_rate("10/30s") == (10, 30)
    assert parse_rate("5/hours") == (5, 3600)
    assert parse_rate(None) is None
    with _limits(WRITE_CHECKPOINT="lots", UPLOAD="0/second"):
        ids = [m.id for m in checks.run_checks()]
    assert ids.count("powersync_django.E018") == 2


@run_async
async def test_protocol_error_mid_stream_is_an_error_frame_not_something_went_wrong() -> None:
    from powersync_django.protocol import ProtocolError
    from powersync_django.sync import SyncSession

    class Failing(SyncSession):
        async def lines(self):
            yield {"token_expires_in": 60}
            raise ProtocolError("Token or client parameters do not fit the bucket definitions")

    class Consumer(SyncConsumer):
        session_class = Failing

    client = Client(Consumer.as_asgi())
    await client.connect()
    await client.send(setup_frame(make_token("u1")))
    await client.send(request_frame())
    assert isinstance(await client.next(), Payload)
    frame = await client.next()
    assert isinstance(frame, Error) and frame.stream_id == 1 and frame.code == APPLICATION_ERROR
    assert frame.message.startswith("[PSYNC_S2001] Token or client parameters"), frame.message
    await client.close()


@pytest.mark.parametrize("query", [
    "&".join(f"f{i}=1" for i in range(1500)),  # over DATA_UPLOAD_MAX_NUMBER_FIELDS: TooManyFieldsSent
])
def test_a_suspicious_query_string_is_a_400_json_error_not_a_500(query: str) -> None:
    response, content = http("GET", f"/write-checkpoint2.json?client_id=c&{query}")
    assert response.status_code == 400, content
    assert error_of(response, content)["code"] == "PSYNC_S2001"
    assert not WriteCheckpoint.objects.exists()
