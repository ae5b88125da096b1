"""Database thread pools (executors.py): writes waiting for a lock never hold up stream reads, and full
queues answer 503 with Retry-After instead of queueing without bound."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.test import AsyncClient, override_settings

from demo_project.todos.models import Todo, TodoList
from powersync_django import executors, storage
from powersync_django.auth import make_token
from powersync_django.conf import get_config
from powersync_django.models import WriteCheckpoint
from powersync_django.replication import replicate_now

pytestmark = pytest.mark.django_db(transaction=True)

GUARD_SECONDS = 20  # only against a hang; nothing is asserted about durations


_gate = threading.Event()
_sqlite_writer = threading.Lock()


@contextmanager
def writes_blocked(key: str) -> Iterator[None]:
    """Write checkpoints of ``key`` cannot complete until the block exits.

    PostgreSQL: another connection holds the row's lock, as another process or a rebuild would.
    SQLite: the test database is in memory with a shared cache, where a lock makes a writer fail at once
    instead of waiting for it, so the writes wait on an event just before their transaction.
    """
    if connection.vendor == "sqlite":
        _gate.clear()
        try:
            yield
        finally:
            _gate.set()
        return
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                WriteCheckpoint.objects.filter(key=key).update(issued=F("issued"))
                locked.set()
                release.wait(60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join(10)


def write_checkpoint(user: str, client: str) -> int:
    """storage.create_write_checkpoint, behind the SQLite gate of :func:`writes_blocked`.

    The in-memory SQLite test database cannot make concurrent writers wait either: they take turns here.
    """
    if connection.vendor == "sqlite":
        assert _gate.wait(60)
        with _sqlite_writer:
            return storage.create_write_checkpoint(user, client)
    return storage.create_write_checkpoint(user, client)


@pytest.fixture
def fresh_pools() -> Iterator[None]:
    """Pools built from the current settings, and rebuilt from the defaults afterwards."""
    executors.shutdown()
    yield
    executors.shutdown()


def seed_bucket() -> str:
    lst = TodoList.objects.create(name="list", owner_id="u1")
    Todo.objects.create(list=lst, description="a todo", created_by="u1")
    replicate_now()
    storage.create_write_checkpoint("u1", "phone")  # the row the lock is taken on
    return f"todos_by_list[\"{lst.id}\"]"


def submit_blocked_writes(n: int) -> list[asyncio.Future]:
    return [asyncio.ensure_future(storage.run_write(write_checkpoint, "u1", "phone"))
            for _ in range(n)]


def test_stream_reads_proceed_while_every_write_thread_waits_for_a_lock(fresh_pools):
    seed_bucket()
    key = storage.write_checkpoint_key("u1", "phone")
    # Enough blocked writes to fill the read pool too, had they shared it.
    blocked = get_config()["READ_THREADS"] + get_config()["WRITE_THREADS"]

    async def reads_while_writes_wait() -> tuple:
        writes = submit_blocked_writes(blocked)
        await asyncio.sleep(0)  # the writes are submitted (and block on the lock) before the reads
        async with asyncio.timeout(GUARD_SECONDS):
            state = await storage.run(storage.read_checkpoint, [])
            latest = await storage.run(storage.latest_checkpoint_id)
        return writes, state, latest

    loop = asyncio.new_event_loop()
    try:
        with writes_blocked(key):
            writes, state, latest = loop.run_until_complete(reads_while_writes_wait())
            waiting = sum(not w.done() for w in writes)
        counters = loop.run_until_complete(asyncio.gather(*writes))
    finally:
        loop.close()
    assert state.last_op_id > 0 and latest > 0
    assert waiting == blocked  # the reads completed while every write was still blocked
    assert sorted(counters) == list(range(2, blocked + 2))


def test_write_checkpoint_answers_503_with_retry_after_when_the_write_queue_is_full(fresh_pools):
    seed_bucket()
    key = storage.write_checkpoint_key("u1", "phone")
    config = {**settings.POWERSYNC, "WRITE_THREADS": 1, "MAX_QUEUED_WRITES": 1, "RETRY_AFTER_SECONDS": 7}

    async def request_with_full_queue() -> tuple:
        writes = submit_blocked_writes(2)  # one runs (blocked by the lock), one waits: the queue is full
        await asyncio.sleep(0)
        response = await AsyncClient().get("/write-checkpoint2.json?client_id=phone",
                                           headers={"Authorization": f"Token {make_token('u1')}"})
        return writes, response

    loop = asyncio.new_event_loop()
    try:
        with override_settings(POWERSYNC=config):
            with writes_blocked(key):
                writes, response = loop.run_until_complete(request_with_full_queue())
                waiting = sum(not w.done() for w in writes)
            counters = loop.run_until_complete(asyncio.gather(*writes))
    finally:
        loop.close()
    assert response.status_code == 503
    assert response["Retry-After"] == "7"
    error = orjson.loads(response.content)["error"]
    assert (error["code"], error["status"]) == ("PSYNC_S2003", 503)
    assert waiting == 2
    assert sorted(counters) == [2, 3]  # the refused request issued nothing
    assert executors.writes.queued == 0


def test_new_streams_answer_503_when_the_read_queue_is_full(fresh_pools):
    seed_bucket()
    with override_settings(POWERSYNC={**settings.POWERSYNC, "MAX_QUEUED_READS": 0}):

        async def run():
            return await AsyncClient().post("/sync/stream", data=b"{}", content_type="application/json",
                                            headers={"Authorization": f"Token {make_token('u1')}"})

        response = asyncio.run(run())
    assert response.status_code == 503
    assert response["Retry-After"] == str(get_config()["RETRY_AFTER_SECONDS"])
    assert orjson.loads(response.content)["error"]["code"] == "PSYNC_S2003"


_upload_gate = threading.Event()
_upload_entered = threading.Event()


def gated_permission(*args, **kwargs) -> bool:
    """An UPLOAD permission hook that holds its upload until the test opens the gate."""
    _upload_entered.set()
    assert _upload_gate.wait(30)
    return True


def test_uploads_beyond_the_concurrency_cap_answer_503(fresh_pools):
    lst = TodoList.objects.create(name="list", owner_id="u1")
    config = {**settings.POWERSYNC, "MAX_CONCURRENT_UPLOADS": 1, "RETRY_AFTER_SECONDS": 3,
              "UPLOAD": {**settings.POWERSYNC.get("UPLOAD", {}),
                         "PERMISSIONS": {"todos": "test_executors.gated_permission"}}}

    def batch(description: str) -> bytes:
        return orjson.dumps({"batch": [{"op": "PUT", "type": "todos", "id": str(uuid.uuid4()),
                                        "data": {"list_id": str(lst.id), "description": description}}]})

    async def post(description: str):
        async with ThreadSensitiveContext():  # a thread per request for sync code, as Django's ASGIHandler does
            return await AsyncClient().post("/api/upload", data=batch(description), content_type="application/json",
                                            headers={"Authorization": f"Token {make_token('u1')}"})

    async def scenario():
        first = asyncio.ensure_future(post("first"))
        # Until the first upload is inside its transaction, holding the slot.
        await asyncio.wait([first, asyncio.ensure_future(asyncio.to_thread(_upload_entered.wait, 30))],
                           return_when=asyncio.FIRST_COMPLETED)
        assert not first.done(), first.result().content
        refused = await post("second")
        _upload_gate.set()
        return await first, refused

    _upload_gate.clear()
    _upload_entered.clear()
    with override_settings(POWERSYNC=config):
        async def guarded():
            async with asyncio.timeout(GUARD_SECONDS):
                return await scenario()

        first, refused = asyncio.run(guarded())
    assert first.status_code == 200, first.content
    assert refused.status_code == 503
    assert refused["Retry-After"] == "3"
    assert orjson.loads(refused.content)["error"]["code"] == "PSYNC_S2003"
    assert list(Todo.objects.filter(list=lst).values_list("description", flat=True)) == ["first"]
    assert executors.uploads.active == 0
