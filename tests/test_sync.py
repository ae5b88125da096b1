"""The sync session (sync.py) driven in-process, and the HTTP view's request handling."""

from __future__ import annotations

import asyncio
import time
import zlib
from unittest import mock

import bson
import orjson
import pytest
from asgi_stream import AsgiRequest, endpoint_app
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient, override_settings

from demo_project.todos.models import Todo, TodoList
from powersync_django import checksums, storage
from powersync_django.auth import TokenClaims, make_token
from powersync_django.conf import get_config
from powersync_django.protocol import BSON_STREAM, ProtocolError, SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.rules import ParameterQuery, get_rules
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(fn):
    """Run blocking ORM code from async tests in a worker thread that closes its connection afterwards."""

    def call(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


def claims(user: str = "u1", ttl: float = 3600) -> TokenClaims:
    return TokenClaims(user_id=user, expires_at=time.time() + ttl, claims={"sub": user})


def seed(owner: str = "u1", todos: int = 3) -> TodoList:
    lst = TodoList.objects.create(name=f"list of {owner}", owner_id=owner)
    for i in range(todos):
        Todo.objects.create(list=lst, description=f"todo {i}", created_by=owner)
    replicate_now()
    return lst


async def take_until(gen, key: str, limit: int = 200, seconds: float = 10) -> list[dict]:
    """Collect lines up to and including the first one whose key is ``key``."""
    out = []
    async with asyncio.timeout(seconds):
        async for line in gen:
            out.append(line)
            if key in line or len(out) >= limit:
                return out
    return out


def reduce_rows(lines: list[dict]) -> dict[str, dict[str, dict]]:
    """The client's view: bucket -> object_id -> row data, from data lines."""
    buckets: dict[str, dict[str, dict]] = {}
    for line in lines:
        if "data" in line:
            rows = buckets.setdefault(line["data"]["bucket"], {})
            for op in line["data"]["data"]:
                if op["op"] == "PUT":
                    rows[op["object_id"]] = orjson.loads(op["data"])
                elif op["op"] == "REMOVE":
                    rows.pop(op["object_id"], None)
    return buckets


def check_checksums(lines: list[dict]) -> None:
    """Sum of received op checksums per bucket equals the checkpoint's checksum (as the client checks)."""
    checkpoint = next(line["checkpoint"] for line in lines if "checkpoint" in line)
    sums: dict[str, int] = {}
    for line in lines:
        if "data" in line:
            b = line["data"]["bucket"]
            sums[b] = checksums.total([sums.get(b, 0)] + [op["checksum"] for op in line["data"]["data"]])
    for entry in checkpoint["buckets"]:
        assert sums.get(entry["bucket"], 0) == entry["checksum"] & checksums.MASK, entry["bucket"]


def test_initial_sync_sends_checkpoint_data_and_complete():
    lst = seed("u1", todos=3)
    seed("u2", todos=2)

    async def run():
        session = SyncSession(claims("u1"), SyncRequest())
        await session.prepare()
        return await take_until(session.lines(), "checkpoint_complete")

    lines = asyncio.run(run())
    assert list(lines[0]) == ["checkpoint"]
    assert list(lines[-1]) == ["checkpoint_complete"]
    checkpoint = lines[0]["checkpoint"]
    assert isinstance(checkpoint["last_op_id"], str)
    assert lines[-1]["checkpoint_complete"]["last_op_id"] == checkpoint["last_op_id"]
    names = sorted(b["bucket"] for b in checkpoint["buckets"])
    assert names == sorted([f'1#todos_by_list["{lst.id}"]', '1#lists["u1"]'])
    check_checksums(lines)
    rows = reduce_rows(lines)
    todos = rows[f'1#todos_by_list["{lst.id}"]']
    assert sorted(r["description"] for r in todos.values()) == ["todo 0", "todo 1", "todo 2"]
    assert all(r["completed"] == 0 and r["list_id"] == str(lst.id) for r in todos.values())
    assert [r["owner_id"] for r in rows['1#lists["u1"]'].values()] == ["u1"]
    for line in lines:
        if "data" in line:
            for op in line["data"]["data"]:
                assert isinstance(op["op_id"], str) and isinstance(op["data"], str)


def test_no_buckets_still_completes():
    async def run():
        session = SyncSession(claims("nobody"), SyncRequest())
        await session.prepare()
        return await take_until(session.lines(), "checkpoint_complete")

    replicate_now()
    lines = asyncio.run(run())
    assert [list(x) for x in lines] == [["checkpoint"], ["checkpoint_complete"]]
    assert lines[0]["checkpoint"]["buckets"] == [{"bucket": '1#lists["nobody"]', "checksum": 0, "count": 0,
                                                  "priority": 3, "subscriptions": [{"default": 1}]}]


def test_resume_sends_only_ops_after_position_and_ignores_foreign_buckets():
    lst = seed("u1", todos=2)
    bucket = f'1#todos_by_list["{lst.id}"]'
    last = storage.read_checkpoint([bucket]).buckets[bucket].last_op_id
    Todo.objects.create(list=lst, description="new one")
    replicate_now()
    new = storage.read_checkpoint([bucket]).buckets[bucket].last_op_id

    async def run():
        req = SyncRequest(buckets={bucket: last, '1#lists["u2"]': 0})
        session = SyncSession(claims("u1"), req)
        await session.prepare()
        return await take_until(session.lines(), "checkpoint_complete")

    lines = asyncio.run(run())
    data = [line["data"] for line in lines if "data" in line and line["data"]["bucket"] == bucket]
    assert [op["op_id"] for d in data for op in d["data"]] == [str(new)]
    assert data[0]["after"] == str(last)
    assert '1#lists["u2"]' not in {b["bucket"] for b in lines[0]["checkpoint"]["buckets"]}
    assert not any("data" in line and line["data"]["bucket"] == '1#lists["u2"]' for line in lines)


def test_live_changes_write_checkpoints_and_bucket_loss_on_open_stream():
    lst = seed("u1", todos=1)

    async def run():
        session = SyncSession(claims("u1"), SyncRequest(client_id="c1"))
        await session.prepare()
        gen = session.lines()
        first = await take_until(gen, "checkpoint_complete")

        def insert():
            Todo.objects.create(list=lst, description="live")
            replicate_now()

        await in_thread(insert)()
        second = await take_until(gen, "checkpoint_complete")
        counter = await in_thread(storage.create_write_checkpoint)("u1", "c1")
        await in_thread(replicate_now)()
        third = await take_until(gen, "checkpoint_complete")

        def move():
            TodoList.objects.filter(pk=lst.pk).update(owner_id="u2")  # not captured: use the helper
            from powersync_django.capture import record_changed

            record_changed(TodoList, [lst.pk])
            replicate_now()

        await in_thread(move)()
        fourth = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return first, second, counter, third, fourth

    first, second, counter, third, fourth = asyncio.run(run())
    diff = second[0]["checkpoint_diff"]
    assert [b["bucket"] for b in diff["updated_buckets"]] == [f'1#todos_by_list["{lst.id}"]']
    assert diff["removed_buckets"] == []
    [data] = [line["data"] for line in second if "data" in line]
    assert [orjson.loads(op["data"])["description"] for op in data["data"]] == ["live"]
    assert counter == 1
    assert third == [{"checkpoint_diff": {"last_op_id": diff["last_op_id"], "write_checkpoint": "1",
                                          "updated_buckets": [], "removed_buckets": []}},
                     {"checkpoint_complete": {"last_op_id": diff["last_op_id"]}}]
    moved = fourth[0]["checkpoint_diff"]
    assert moved["removed_buckets"] == [f'1#todos_by_list["{lst.id}"]']
    assert moved["write_checkpoint"] == "1"
    [data] = [line["data"] for line in fourth if "data" in line]
    assert data["bucket"] == '1#lists["u1"]' and data["data"][0]["op"] == "REMOVE"


def test_gaining_a_list_adds_its_bucket_on_the_open_stream():
    seed("u2", todos=2)

    async def run():
        session = SyncSession(claims("u1"), SyncRequest())
        await session.prepare()
        gen = session.lines()
        await take_until(gen, "checkpoint_complete")

        def give():
            lst = TodoList.objects.get(owner_id="u2")
            lst.owner_id = "u1"
            lst.save()
            replicate_now()
            return lst

        lst = await in_thread(give)()
        lines = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return lst, lines

    lst, lines = asyncio.run(run())
    diff = lines[0]["checkpoint_diff"]
    assert f'1#todos_by_list["{lst.id}"]' in {b["bucket"] for b in diff["updated_buckets"]}
    rows = reduce_rows(lines)
    assert len(rows[f'1#todos_by_list["{lst.id}"]']) == 2


def test_a_change_of_another_users_list_does_not_re_evaluate_this_stream(monkeypatch):
    """Parameter re-evaluation is targeted: TodoList rows concern the streams of their owner only."""
    from powersync_django import rules

    seed("u1", todos=1)
    runs: list[str] = []
    original = rules.ParameterQuery.rows

    def rows(self, token, client, order, *args, **kwargs):
        if self.model is not None:
            runs.append(token["sub"])
        return original(self, token, client, order, *args, **kwargs)

    monkeypatch.setattr(rules.ParameterQuery, "rows", rows)

    async def run():
        session = SyncSession(claims("u1"), SyncRequest())
        await session.prepare()
        gen = session.lines()
        await take_until(gen, "checkpoint_complete")
        runs.clear()
        await in_thread(lambda: (seed("u2", todos=1), TodoList.objects.filter(owner_id="u2").delete(),
                                 replicate_now()))()
        hub = session.hub
        async with asyncio.timeout(10):
            while hub.latest_id == session.cursor:
                await hub.wait_changes(session.cursor, 1)
        changes = hub.changes_since(session.cursor)
        untouched = await session._diff(changes)
        # The owner's own list changing does re-evaluate.
        lst = await in_thread(lambda: TodoList.objects.create(name="new", owner_id="u1"))()
        await in_thread(replicate_now)()
        lines = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return changes, untouched, lst, lines

    changes, untouched, lst, lines = asyncio.run(run())
    assert "todos.todolist|owner_id=u2" in changes.models
    assert untouched == (None, None, [])
    assert runs == ["u1"]
    assert f'1#todos_by_list["{lst.id}"]' in {b["bucket"] for b in lines[0]["checkpoint_diff"]["updated_buckets"]}


def test_priorities_send_partial_checkpoints():
    buckets = {
        "urgent": {"data": [{"model": "todos.TodoList", "table": "lists"}], "priority": 0},
        "rest": {"data": [{"model": "todos.Todo", "table": "todos"}]},
    }
    with override_settings(POWERSYNC={**_config(), "BUCKETS": buckets, "STREAMS": {}}):
        seed("u1", todos=2)

        async def run():
            session = SyncSession(claims("u1"), SyncRequest())
            await session.prepare()
            return await take_until(session.lines(), "checkpoint_complete")

        lines = asyncio.run(run())
    kinds = [next(iter(line)) for line in lines]
    assert kinds == ["checkpoint", "data", "partial_checkpoint_complete", "data", "checkpoint_complete"]
    assert lines[1]["data"]["bucket"].endswith("urgent[]")
    assert lines[2]["partial_checkpoint_complete"]["priority"] == 0


def test_paging_keeps_data_lines_bounded():
    with override_settings(POWERSYNC={**_config(), "OPS_PER_DATA_LINE": 2}):
        lst = seed("u1", todos=5)

        async def run():
            session = SyncSession(claims("u1"), SyncRequest())
            await session.prepare()
            return await take_until(session.lines(), "checkpoint_complete")

        lines = asyncio.run(run())
    pages = [line["data"] for line in lines if "data" in line and line["data"]["bucket"].endswith(f'["{lst.id}"]')]
    assert [len(p["data"]) for p in pages] == [2, 2, 1]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert pages[1]["after"] == pages[0]["next_after"]
    check_checksums(lines)


def test_expired_token_ends_with_zero():
    async def run():
        session = SyncSession(claims("u1", ttl=-1), SyncRequest())
        return [line async for line in session.lines()]

    assert asyncio.run(run()) == [{"token_expires_in": 0}]


def test_token_expiry_during_stream_sends_zero_and_ends():
    replicate_now()

    async def run():
        session = SyncSession(claims("u1", ttl=1.5), SyncRequest())
        await session.prepare()
        async with asyncio.timeout(10):
            return [line async for line in session.lines()]

    lines = asyncio.run(run())
    assert lines[-1] == {"token_expires_in": 0}
    assert any("checkpoint_complete" in line for line in lines)


def test_too_many_buckets_is_rejected_before_streaming():
    for i in range(3):
        TodoList.objects.create(name=str(i), owner_id="u1")
    with override_settings(POWERSYNC={**_config(), "MAX_BUCKETS_PER_CONNECTION": 2}):
        replicate_now()

        async def run():
            await SyncSession(claims("u1"), SyncRequest()).prepare()

        with pytest.raises(ProtocolError) as err:
            asyncio.run(run())
    assert err.value.code == "PSYNC_S2305"
    assert "todos_by_list (3+)" in err.value.details


def test_bucket_limit_stops_reading_parameter_rows_past_limit_plus_one():
    """A user with 500 lists and a limit of 3: the parameter queryset reads 4 rows, not 500."""
    TodoList.objects.bulk_create([TodoList(name=str(i), owner_id="many") for i in range(500)])
    rules = get_rules()
    seen: list[int] = []
    original = ParameterQuery.rows

    def counting(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(len(out))
        return out

    with mock.patch.object(ParameterQuery, "rows", counting):
        buckets = rules.request_buckets({"sub": "many"}, {}, 1, limit=3)
    assert len(buckets) == 4
    assert sum(seen) <= 4


def _config() -> dict:
    from django.conf import settings

    return dict(settings.POWERSYNC)


# --- HTTP view ---------------------------------------------------------------------------------------


def _until_complete(raw: bytes, gzip: bool) -> bool:
    if gzip:
        raw = zlib.decompressobj(31).decompress(raw)
    return b"checkpoint_complete" in raw


def post(body: bytes | str, token: str | None = "default", transport: str = "view", **headers):
    """POST /sync/stream through Django's view (``view``) or the pure-ASGI endpoint of powersync_application
    (``endpoint``); read until ``checkpoint_complete``."""
    if token:
        headers["Authorization"] = f"Token {make_token('u1') if token == 'default' else token}"
    if transport == "endpoint":
        return asyncio.run(_post_endpoint(body.encode() if isinstance(body, str) else body, headers))

    async def run():
        client = AsyncClient()
        response = await client.post("/sync/stream", data=body, content_type="application/json", headers=headers)
        chunks = []
        if response.streaming:
            it = response.streaming_content.__aiter__()
            async with asyncio.timeout(10):
                while True:
                    chunk = await it.__anext__()
                    chunks.append(chunk)
                    if _until_complete(b"".join(chunks), response.get("Content-Encoding") == "gzip"):
                        break
            await it.aclose()
        return response, b"".join(chunks)

    return asyncio.run(run())


async def _post_endpoint(body: bytes, headers: dict[str, str]):
    request = AsgiRequest(endpoint_app(), "POST", "/sync/stream", body,
                          {"Content-Type": "application/json", **headers})
    raw = await request.read_until(lambda raw: _until_complete(raw, request.response.get("content-encoding") == "gzip"))
    await request.disconnect()
    response = request.response
    return response, (raw if response.status_code == 200 else b"")


@pytest.fixture(params=["view", "endpoint"])
def transport(request) -> str:
    """Each HTTP test runs against Django's view and against powersync_application's ASGI endpoint."""
    return request.param


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ("{not json", 400, "not valid JSON"),
        ('{"buckets": [{"name": "x", "after": "abc"}]}', 400, "decimal string"),
        ('{"buckets": {"name": "x"}}', 400, "must be an array"),
        ('{"buckets": [{"after": "1"}]}', 400, "string 'name'"),
        ('{"client_id": 5}', 400, "client_id"),
        ('{"parameters": []}', 400, "parameters"),
        ('[1, 2]', 400, "JSON object"),
    ],
)
def test_bad_requests_get_400_json(body, status, fragment, transport):
    response, _ = post(body, transport=transport)
    assert response.status_code == status
    error = orjson.loads(response.content)["error"]
    assert fragment in error["description"] + error.get("details", "")
    assert error["code"] == "PSYNC_S2001"


def test_oversized_body_is_413(transport):
    response, _ = post('{"buckets": [], "x": "' + "a" * (get_config()["MAX_REQUEST_BYTES"] + 10) + '"}',
                       transport=transport)
    assert response.status_code == 413


def test_auth_failures_are_401_json(transport):
    response, _ = post("{}", token=None, transport=transport)
    assert response.status_code == 401
    assert orjson.loads(response.content)["error"]["code"] == "PSYNC_S2106"
    tampered = make_token("u1")[:-3] + "abc"
    response, _ = post("{}", token=tampered, transport=transport)
    assert response.status_code == 401
    assert orjson.loads(response.content)["error"]["code"] == "PSYNC_S2101"


def test_tolerates_nulls_and_unknown_fields_and_streams_ndjson(transport):
    seed("u1", todos=1)
    body = '{"buckets": null, "client_id": null, "parameters": null, "streams": null, "future": {"x": 1}}'
    response, raw = post(body, transport=transport)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["X-Accel-Buffering"] == "no"
    lines = [orjson.loads(x) for x in raw.splitlines() if x]
    assert "checkpoint" in lines[0] and "checkpoint_complete" in lines[-1]


def test_bson_and_gzip_when_the_client_asks(transport):
    seed("u1", todos=2)
    response, raw = post("{}", transport=transport, Accept="application/vnd.powersync.bson-stream;q=0.9,application/x-ndjson;q=0.8",
                         **{"Accept-Encoding": "gzip, deflate"})
    assert response["Content-Type"] == BSON_STREAM
    assert response["Content-Encoding"] == "gzip"
    docs = bson.decode_all(zlib.decompressobj(31).decompress(raw))
    assert "checkpoint" in docs[0] and "checkpoint_complete" in docs[-1]
    ops = [op for d in docs if "data" in d for op in d["data"]["data"]]
    assert all(isinstance(op["op_id"], str) and isinstance(op["data"], str) for op in ops)


def test_cors_preflight(transport):
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}

    async def run():
        if transport == "endpoint":
            request = AsgiRequest(endpoint_app(), "OPTIONS", "/sync/stream", headers=headers)
            await request.task
            return request.response
        return await AsyncClient().options("/sync/stream", headers=headers)

    response = asyncio.run(run())
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in response["Access-Control-Allow-Headers"]


def test_write_checkpoint_endpoint_counts_per_user_and_client():
    async def get(client_id, user="u1"):
        return await AsyncClient().get(f"/write-checkpoint2.json?client_id={client_id}",
                                       headers={"Authorization": f"Token {make_token(user)}"})

    async def run():
        return [orjson.loads((await get(c, u)).content) for c, u in [("a", "u1"), ("a", "u1"), ("b", "u1"),
                                                                   ("a", "u2")]]

    assert asyncio.run(run()) == [{"data": {"write_checkpoint": v}} for v in ["1", "2", "1", "1"]]
