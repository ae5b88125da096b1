"""Adversarial Sync Streams cases (access changes, priorities, shared buckets)."""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings
from test_streams import buckets_of, checkpoint, config, request, sub, sync_once, todos_bucket
from test_sync import claims, in_thread, seed, take_until

from demo_project.todos.models import TodoList
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = {"public_list": {
    "parameters": {"queryset": "todos.TodoList", "values": {"list_id": "id"},
                   "filter": {"id": "subscription.list_id", "name__startswith": "public"}},
    "data": [{"model": "todos.Todo", "table": "todos", "filter": {"list_id": "bucket.list_id"}}],
}}


def test_access_revoked_by_a_filter_without_token_references_removes_the_bucket():
    with override_settings(POWERSYNC=config(STREAMS=PUBLIC)):
        replicate_now()
        lst = seed("u2", todos=1)
        TodoList.objects.filter(pk=lst.pk).update(name="public one")
        lst.refresh_from_db()
        lst.save()
        replicate_now()

        async def run() -> tuple[list[dict], list[dict]]:
            session = SyncSession(claims("u1"), request(sub(lst.id, stream="public_list")))
            await session.prepare()
            gen = session.lines()
            first = await take_until(gen, "checkpoint_complete")

            def hide() -> None:
                lst.name = "private now"
                lst.save()
                replicate_now()

            await in_thread(hide)()
            second = await take_until(gen, "checkpoint_complete", seconds=5)
            await gen.aclose()
            return first, second

        first, second = asyncio.run(run())
    assert list(buckets_of(first)) == [todos_bucket(lst)]
    assert second[0]["checkpoint_diff"]["removed_buckets"] == [todos_bucket(lst)]


def test_override_priority_lowers_only_its_own_subscription():
    """A bucket gets the highest priority of the reasons that include it: one subscription's override_priority
    of 3 does not demote a bucket another subscription (or a default stream) includes at priority 1."""
    streams = {**config()["STREAMS"], "list_todos": {**config()["STREAMS"]["list_todos"], "priority": 1}}
    with override_settings(POWERSYNC=config(STREAMS=streams)):
        replicate_now()
        lst = seed("u1", todos=1)
        lines = sync_once(request(sub(lst.id), sub(lst.id, override_priority=3)))
        assert buckets_of(lines)[todos_bucket(lst)]["priority"] == 1
        lines = sync_once(request(sub(lst.id, override_priority=3), sub(lst.id, override_priority=2)))
        assert buckets_of(lines)[todos_bucket(lst)]["priority"] == 2
        assert checkpoint(lines)["streams"][0]["errors"] == []


def test_subscription_to_a_list_created_later_gets_its_bucket():
    """Offline-first: the app subscribes to a list it created locally before the upload reaches the server."""
    import uuid

    from demo_project.todos.models import Todo

    list_id = uuid.uuid4()
    seed("u1", todos=0)

    async def run() -> tuple[list[dict], list[dict]]:
        session = SyncSession(claims("u1"), request(sub(list_id)))
        await session.prepare()
        gen = session.lines()
        first = await take_until(gen, "checkpoint_complete")

        def upload() -> None:
            lst = TodoList.objects.create(id=list_id, name="new", owner_id="u1")
            Todo.objects.create(list=lst, description="t")
            replicate_now()

        await in_thread(upload)()
        second = await take_until(gen, "checkpoint_complete", seconds=5)
        await gen.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert checkpoint(first)["buckets"] == []
    bucket = f'1#todos_by_list["{list_id}"]'
    assert [b["bucket"] for b in second[0]["checkpoint_diff"]["updated_buckets"]] == [bucket]


@pytest.mark.parametrize("lookup", ["id__in", "created_at__range"])
def test_list_lookup_on_a_subscription_parameter_is_a_check_error(lookup):
    """``id__in: subscription.ids`` passed the checks and then iterated the string's characters (ids "12": 1 and 2)."""
    from test_streams import parse

    r, problems = parse({"s": {"parameters": {"queryset": "todos.TodoList", "values": {"list_id": "id"},
                                              "filter": {lookup: "subscription.x", "owner_id": "auth.user_id"}},
                               "data": [{"model": "todos.Todo", "filter": {"list_id": "bucket.list_id"}}]}})
    assert r is None
    assert any(p.id == "E006" and lookup in p.msg for p in problems), problems


def test_null_parameter_values_give_no_bucket():
    """A parameter row with NULL (a todo not completed) names a bucket no row can be in: like bucket definitions,
    no bucket is announced for it (before: 'same_time[null]' buckets counted against the bucket limit)."""
    streams = {
        "same_time": {"parameters": {"queryset": "todos.Todo", "values": {"at": "completed_at"},
                                     "filter": {"id": "subscription.todo_id", "list__owner_id": "auth.user_id"}},
                      "data": [{"model": "todos.Todo", "table": "todos", "filter": {"completed_at": "bucket.at"}}]},
    }
    with override_settings(POWERSYNC=config(STREAMS=streams)):
        replicate_now()
        lst = seed("u1", todos=1)
        todo = lst.todos.get()
        lines = sync_once(request({"stream": "same_time", "parameters": {"todo_id": str(todo.id)}}))
    assert checkpoint(lines)["buckets"] == []
