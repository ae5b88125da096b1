"""Sync Streams (streams.py): declarations, system checks, and subscriptions served by the sync session."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from django.core import checks
from django.test import override_settings
from test_consumers import (  # noqa: F401  (the fixture is used by the WebSocket test)
    App,
    Client,
    _collect_abandoned_connections,
    request_frame,
    run_async,
    setup_frame,
)
from test_sync import claims, in_thread, reduce_rows, seed, take_until

from demo_project.todos.models import Todo, TodoList
from powersync_django import rules, storage
from powersync_django.conf import get_config
from powersync_django.models import BucketOp
from powersync_django.protocol import ProtocolError, SyncRequest, parse_request
from powersync_django.replication import replicate_now
from powersync_django.streams import Stream
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

DEMO_STREAMS = get_config()["STREAMS"]


def config(**changes: Any) -> dict[str, Any]:
    from django.conf import settings

    return {**settings.POWERSYNC, **changes}


def todos_bucket(lst: TodoList) -> str:
    """The demo's list_todos stream shares the buckets of the todos_by_list definition (same rows)."""
    return f'1#todos_by_list["{lst.id}"]'


def sub(list_id: Any = None, stream: str = "list_todos", **extra: Any) -> dict[str, Any]:
    return {"stream": stream, "parameters": None if list_id is None else {"list_id": str(list_id)},
            "override_priority": None, **extra}


def request(*subscriptions: dict[str, Any], include_defaults: bool = False, **kwargs: Any) -> SyncRequest:
    return parse_request({"streams": {"include_defaults": include_defaults, "subscriptions": list(subscriptions)},
                          "client_id": "c1", **kwargs})


def sync_once(req: SyncRequest, user: str = "u1") -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        session = SyncSession(claims(user), req)
        await session.prepare()
        gen = session.lines()
        try:
            return await take_until(gen, "checkpoint_complete")
        finally:
            await gen.aclose()

    return asyncio.run(run())


def checkpoint(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert list(lines[0]) == ["checkpoint"], lines[0]
    assert "checkpoint_complete" in lines[-1]
    return lines[0]["checkpoint"]


def buckets_of(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {b["bucket"]: b for b in checkpoint(lines)["buckets"]}


# --- declarations and checks ---------------------------------------------------------------------------


def parse(streams: Any, buckets: Any = None) -> tuple[rules.Rules | None, list[rules.Problem]]:
    return rules.parse({"BUCKETS": buckets or {}, "STREAMS": streams, "DATETIME_FORMAT": "space"})


def test_demo_streams_are_parsed_next_to_bucket_definitions():
    r = rules.get_rules()
    assert list(r.definitions) == ["todos_by_list", "lists", "list_todos"]
    lists, list_todos = r.definitions["lists"], r.definitions["list_todos"]
    assert isinstance(lists, Stream) and lists.auto_subscribe and lists.subscription_keys == ()
    assert isinstance(list_todos, Stream) and not list_todos.auto_subscribe
    assert list_todos.subscription_keys == ("list_id",)
    # Same rows per list as todos_by_list: it reuses those buckets, replication writes no ops of its own.
    assert list_todos.bucket_name == "todos_by_list" and list_todos.data == []
    assert "todos.todolist" in r.parameter_models


def test_streams_are_part_of_the_rules_hash():
    base = parse({})[0]
    assert base is not None and base.hash == parse(None)[0].hash
    one = parse({"all": {"data": ["todos.Todo"]}})[0]
    two = parse({"all": {"data": ["todos.Todo"], "priority": 1}})[0]
    assert len({base.hash, one.hash, two.hash}) == 3


def test_a_stream_of_its_own_builds_its_own_buckets():
    streams = {"mine": {"parameters": {"owner_id": "auth.user_id"},
                        "data": [{"model": "todos.TodoList", "table": "lists", "filter": {"owner_id": "bucket.owner_id"}}]}}
    with override_settings(POWERSYNC=config(BUCKETS={}, STREAMS=streams)):
        lst = TodoList.objects.create(name="a", owner_id="u1")
        replicate_now()
        assert list(BucketOp.objects.values_list("bucket", "object_id")) == [('1#mine["u1"]', str(lst.id))]
        lines = sync_once(request(include_defaults=True))
    assert checkpoint(lines)["streams"] == [] and checkpoint(lines)["buckets"] == []  # on demand only


@pytest.mark.parametrize(("streams", "buckets", "problem"), [
    ([], None, "E020"),
    ({"s": "todos.Todo"}, None, "E020"),
    ({"s": {"data": ["todos.Todo"], "ttl": 5}}, None, "E020"),
    ({"s": {"data": ["todos.Todo"], "auto_subscribe": "yes"}}, None, "E020"),
    ({"s": {"data": ["todos.Todo"], "priority": 4}}, None, "E007"),
    ({"s": {"data": []}}, None, "E003"),
    ({"s": {"data": ["todos.Nope"]}}, None, "E002"),
    ({"s": {"parameters": {"x": "request.x"}, "data": [
        {"model": "todos.Todo", "filter": {"list_id": "bucket.x"}}]}}, None, "E006"),
    ({"s": {"data": [{"model": "todos.Todo", "filter": {"list_id": "subscription.list_id"}}]}}, None, "E004"),
    ({"s": {"parameters": {"x": "subscription.x"}, "data": ["todos.Todo"]}}, None, "E008"),
    ({"s": {"parameters": {"queryset": "todos.TodoList", "filter": {"nope": "auth.user_id"}, "values": {"x": "id"}},
            "data": [{"model": "todos.Todo", "filter": {"list_id": "bucket.x"}}]}}, None, "E006"),
    ({"s": {"data": [{"model": "todos.Todo", "table": "lists"}]}},
     {"b": {"data": [{"model": "todos.TodoList", "table": "lists"}]}}, "E009"),
    ({"same": {"data": ["todos.Todo"]}}, {"same": {"data": ["todos.TodoList"]}}, "E021"),
])
def test_invalid_streams_are_reported(streams, buckets, problem):
    r, problems = parse(streams, buckets)
    assert r is None
    assert problem in {p.id for p in problems}, problems
    assert all("BUCKETS[" not in p.msg or buckets for p in problems)


def test_auto_subscribed_stream_reading_subscription_parameters_is_a_warning():
    r, problems = parse({"s": {"auto_subscribe": True, "parameters": {"x": "subscription.x"},
                               "data": [{"model": "todos.Todo", "filter": {"list_id": "bucket.x"}}]}})
    assert r is not None and [p.id for p in problems] == ["W021"]


def test_system_checks_report_stream_problems_with_ids():
    bad = {"lists": {"data": ["todos.TodoList"]}, "broken": {"data": ["todos.Todo"], "auto_subscribe": 1}}
    with override_settings(POWERSYNC=config(STREAMS={**DEMO_STREAMS, **bad}, BUCKETS={"lists": {"data": ["todos.Todo"]}})):
        messages = checks.run_checks(tags=["powersync"])
    ids = {m.id for m in messages}
    assert {"powersync_django.E020", "powersync_django.E021"} <= ids
    assert any("STREAMS['broken']" in m.msg for m in messages)


# --- serving subscriptions -----------------------------------------------------------------------------


def test_defaults_are_bucket_definitions_and_auto_subscribed_streams():
    lst = seed("u1", todos=2)
    lines = sync_once(SyncRequest(client_id="c1"))
    cp = checkpoint(lines)
    assert cp["streams"] == [{"name": "todos_by_list", "is_default": True, "errors": []},
                             {"name": "lists", "is_default": True, "errors": []}]
    got = buckets_of(lines)
    assert got['1#lists["u1"]']["subscriptions"] == [{"default": 1}]
    assert got[todos_bucket(lst)]["subscriptions"] == [{"default": 0}]


def test_include_defaults_false_without_subscriptions_syncs_nothing():
    seed("u1", todos=2)
    lines = sync_once(request())
    assert checkpoint(lines) == {"last_op_id": checkpoint(lines)["last_op_id"], "buckets": [], "streams": []}
    assert [next(iter(line)) for line in lines] == ["checkpoint", "checkpoint_complete"]


def test_subscription_syncs_only_that_list():
    mine, other_mine = seed("u1", todos=2), seed("u1", todos=3)
    lines = sync_once(request(sub(mine.id)))
    cp = checkpoint(lines)
    assert cp["streams"] == [{"name": "list_todos", "is_default": False, "errors": []}]
    assert cp["buckets"] == [{"bucket": todos_bucket(mine), "checksum": cp["buckets"][0]["checksum"], "count": 2,
                              "priority": 3, "subscriptions": [{"sub": 0}]}]
    rows = reduce_rows(lines)
    assert set(rows) == {todos_bucket(mine)}
    assert {r["list_id"] for r in rows[todos_bucket(mine)].values()} == {str(mine.id)}
    assert todos_bucket(other_mine) not in rows


def test_explicit_subscription_of_a_default_stream_and_bucket_reasons_merge():
    lst = seed("u1", todos=1)
    lines = sync_once(request(sub(lst.id), sub(lst.id, override_priority=1), include_defaults=True))
    cp = checkpoint(lines)
    assert [s["name"] for s in cp["streams"]] == ["todos_by_list", "lists", "list_todos"]
    entry = buckets_of(lines)[todos_bucket(lst)]
    assert entry["subscriptions"] == [{"default": 0}, {"sub": 0}, {"sub": 1}]
    assert entry["priority"] == 1


def test_forbidden_unknown_and_bad_subscriptions_get_errors_and_others_keep_syncing():
    mine = seed("u1", todos=2)
    theirs = seed("u2", todos=2)
    lines = sync_once(request(
        sub(theirs.id),                                   # 0: another user's list
        sub(mine.id),                                     # 1: fine
        sub(uuid.uuid4()),                                # 2: does not exist
        sub("not-a-uuid"),                                # 3: bad parameter
        sub(None),                                        # 4: missing parameter
        {"stream": "nope", "parameters": {}},             # 5: unknown stream
        sub(mine.id, override_priority=9),                # 6: bad priority
        {"stream": "list_todos", "parameters": [1]},      # 7: parameters not an object
        "garbage",                                        # 8: not a subscription
        {"stream": ["list_todos"], "parameters": {}},     # 9: a stream name that is not a string
    ))
    cp = checkpoint(lines)
    by_name = {s["name"]: s for s in cp["streams"]}
    errors = {e["subscription"]: e["message"] for e in by_name["list_todos"]["errors"]}
    assert set(errors) == {0, 2, 3, 4, 6, 7}
    assert errors[0] == errors[2]  # not disclosed whether the list exists
    assert "valid UUID" in errors[3] and "list_id" in errors[4]
    assert by_name["nope"] == {"name": "nope", "is_default": False,
                               "errors": [{"subscription": 5, "message": "Unknown stream 'nope'"}]}
    assert [e["subscription"] for e in by_name[""]["errors"]] == [8, 9]
    assert [b["bucket"] for b in cp["buckets"]] == [todos_bucket(mine)]
    assert buckets_of(lines)[todos_bucket(mine)]["subscriptions"] == [{"sub": 1}]
    assert set(reduce_rows(lines)) == {todos_bucket(mine)}
    assert str(theirs.id) not in orjson.dumps(lines).decode().replace(f'"list_id":"{theirs.id}"', "")


def test_override_priority_orders_data_and_partial_checkpoints():
    a, b = seed("u1", todos=1), seed("u1", todos=1)
    lines = sync_once(request(sub(a.id), sub(b.id, override_priority=0)))
    kinds = [next(iter(line)) for line in lines]
    assert kinds == ["checkpoint", "data", "partial_checkpoint_complete", "data", "checkpoint_complete"]
    assert lines[1]["data"]["bucket"] == todos_bucket(b)
    assert lines[2]["partial_checkpoint_complete"]["priority"] == 0
    assert buckets_of(lines)[todos_bucket(a)]["priority"] == 3


def test_a_second_subscription_downloads_only_the_new_bucket():
    a, b = seed("u1", todos=3), seed("u1", todos=2)
    first = sync_once(request(sub(a.id)))
    position = int(first[-1]["checkpoint_complete"]["last_op_id"])
    # The client restarts with the subscription added and what it holds.
    second = sync_once(request(sub(a.id), sub(b.id), buckets=[{"name": todos_bucket(a), "after": str(position)}]))
    assert set(buckets_of(second)) == {todos_bucket(a), todos_bucket(b)}
    assert {line["data"]["bucket"] for line in second if "data" in line} == {todos_bucket(b)}
    # Unsubscribed (TTL expired on the client): the bucket is no longer in the checkpoint, so it is deleted.
    third = sync_once(request(sub(b.id), buckets=[{"name": todos_bucket(a), "after": str(position)}]))
    assert set(buckets_of(third)) == {todos_bucket(b)}


def test_request_side_parameters_are_coerced_like_row_values():
    streams = {"one_list": {"parameters": {"list_id": "subscription.list_id"},
                            "data": [{"model": "todos.Todo", "table": "todos", "filter": {"list_id": "bucket.list_id"}}]}}
    with override_settings(POWERSYNC=config(STREAMS=streams)):
        lst = seed("u1", todos=1)
        lines = sync_once(request(sub(str(lst.id).upper(), stream="one_list"), sub("x", stream="one_list")))
    assert [b["bucket"] for b in checkpoint(lines)["buckets"]] == [todos_bucket(lst)]
    [stream] = checkpoint(lines)["streams"]
    assert [e["subscription"] for e in stream["errors"]] == [1]


def test_connection_parameters_and_token_claims():
    streams = {"by_owner": {"auto_subscribe": True, "parameters": {"owner_id": "connection.owner"},
                            "data": [{"model": "todos.TodoList", "table": "lists", "filter": {"owner_id": "bucket.owner_id"}}]},
               "by_claim": {"parameters": {"owner_id": "auth.team"},
                            "data": [{"model": "todos.TodoList", "table": "lists", "filter": {"owner_id": "bucket.owner_id"}}]}}
    with override_settings(POWERSYNC=config(BUCKETS={}, STREAMS=streams)):
        replicate_now()
        lines = sync_once(request({"stream": "by_claim"}, include_defaults=True, parameters={"owner": "o1"}))
    got = buckets_of(lines)
    assert got['1#by_owner["o1"]']["subscriptions"] == [{"default": 0}]
    # No 'team' claim: no bucket, and no error (the stream has no subscription parameters to blame).
    assert checkpoint(lines)["streams"][1] == {"name": "by_claim", "is_default": False, "errors": []}


def test_too_many_subscriptions_is_rejected_before_streaming():
    with override_settings(POWERSYNC=config(MAX_SUBSCRIPTIONS_PER_CONNECTION=2)):
        replicate_now()

        async def run() -> None:
            await SyncSession(claims("u1"), request(sub(1), sub(2), sub(3))).prepare()

        with pytest.raises(ProtocolError) as err:
            asyncio.run(run())
    assert err.value.code == "PSYNC_S2305" and "limit 2" in err.value.description


def test_bad_streams_object_is_a_request_error():
    for body in ({"streams": {"subscriptions": {}}}, {"streams": {"include_defaults": "no"}}, {"streams": []}):
        with pytest.raises(ProtocolError):
            parse_request(body)
    assert parse_request({"streams": None}).include_defaults is True


def test_live_changes_reach_subscriptions_and_losing_access_removes_the_bucket():
    lst = seed("u1", todos=1)

    async def run() -> tuple[list[dict], list[dict], list[dict]]:
        session = SyncSession(claims("u1"), request(sub(lst.id)))
        await session.prepare()
        gen = session.lines()
        first = await take_until(gen, "checkpoint_complete")

        def insert() -> None:
            Todo.objects.create(list=lst, description="live")
            replicate_now()

        await in_thread(insert)()
        second = await take_until(gen, "checkpoint_complete")

        def give_away() -> None:
            lst.owner_id = "u2"
            lst.save()
            replicate_now()

        await in_thread(give_away)()
        third = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return first, second, third

    first, second, third = asyncio.run(run())
    diff = second[0]["checkpoint_diff"]
    assert [(b["bucket"], b["subscriptions"]) for b in diff["updated_buckets"]] == [(todos_bucket(lst), [{"sub": 0}])]
    [data] = [line["data"] for line in second if "data" in line]
    assert [orjson.loads(op["data"])["description"] for op in data["data"]] == ["live"]
    assert third[0]["checkpoint_diff"]["removed_buckets"] == [todos_bucket(lst)]
    assert storage.read_checkpoint([todos_bucket(lst)]).buckets[todos_bucket(lst)].count == 2


# --- WebSocket keepalive lines (the client re-checks subscription TTLs on them) --------------------------


@run_async
async def test_websocket_sends_token_expires_in_keepalives() -> None:
    from powersync_django.auth import make_token

    app = App()
    with override_settings(POWERSYNC=config(KEEPALIVE_SECONDS=0.2)):
        await in_thread(seed)("u1", 1)
        client = Client(app.asgi())
        await client.connect()
        await client.send(setup_frame(make_token("u1")))
        await client.send(request_frame())
        await client.lines_until("checkpoint_complete")
        line = await client.line()
        assert list(line) == ["token_expires_in"] and line["token_expires_in"] > 30
        await client.close()
