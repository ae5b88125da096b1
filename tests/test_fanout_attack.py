"""Attacks on the shared fan-out path (fanout.py, sync.SyncSession._replay): streams that take their lines
from a shared read or from another stream's lines must send exactly what they would compute alone.

Each test runs the same set of streams twice side by side, with shared reads (and replay) on and off, through
the same changes, and compares every stream's lines with its twin's."""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest
from django.conf import settings
from django.db import transaction
from django.test import override_settings
from sync_client import ClientModel
from test_fanout import in_thread, replicated
from test_snapshot import FrozenHub
from test_sync import claims

from demo_project.todos.models import Todo, TodoList
from powersync_django import compaction, fanout, storage, views, waiting
from powersync_django.notify import get_hub
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

# A bucket every user holds (all lists, priority 0) beside each user's own: two users share one bucket and
# differ in the others.
BUCKETS = {
    "everyone": {"data": [{"model": "todos.TodoList", "table": "all_lists"}], "priority": 0},
    **settings.POWERSYNC["BUCKETS"],
}


def config(on: bool, **extra) -> dict:
    return {**settings.POWERSYNC, "BUCKETS": BUCKETS, "SHARED_READS": on, "SHARED_READ_MAX_OPS": 6,
            "OPS_PER_DATA_LINE": 3, "KEEPALIVE_SECONDS": 3600, "MAX_STREAMS_PER_USER": None, **extra}


class Twins:
    """Sync sessions consumed by tasks; waits until every one of them waits for the next checkpoint."""

    def __init__(self) -> None:
        self.sessions: list[SyncSession] = []
        self.lines: list[list[dict]] = []
        self.tasks: list[asyncio.Task] = []

    async def open(self, session: SyncSession) -> None:
        await session.prepare()
        self.sessions.append(session)
        self.lines.append([])
        index = len(self.lines) - 1
        self.tasks.append(asyncio.create_task(self._consume(index, session)))

    async def _consume(self, index: int, session: SyncSession) -> None:
        async for line in session.lines():
            self.lines[index].append(line)

    async def settle(self) -> None:
        await settled(self.sessions, self.tasks)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def settled(sessions: list[SyncSession], tasks: list[asyncio.Task], seconds: float = 60) -> None:
    """Until every stream handled the newest checkpoint and waits for the next one."""
    hub = get_hub()
    newest = await in_thread(storage.latest_checkpoint_id)()
    async with asyncio.timeout(seconds):
        while True:
            await asyncio.sleep(0.02)
            for t in tasks:
                if t.done():
                    t.result()
                    raise AssertionError("a stream ended")
            if (hub.latest_id >= newest and all(s.cursor >= hub.latest_id for s in sessions)
                    and len(waiting.of(hub).waiters) == len(sessions)):
                return


def _requests(first: TodoList, early: dict[str, int]) -> list[tuple[str, SyncRequest]]:
    sub = {"stream": "list_todos", "parameters": {"list_id": str(first.id)}}
    return [
        ("u1", SyncRequest(client_id="c0")),  # uploads: its write checkpoint changes
        ("u1", SyncRequest(client_id="c1")),
        ("u1", SyncRequest(client_id="c2", buckets=early)),  # resumed from old positions
        ("u1", SyncRequest(client_id="c3", include_defaults=False, subscriptions=[sub])),
        ("u1", SyncRequest(client_id="c4", subscriptions=[sub])),
        ("u1", SyncRequest(client_id="c5", raw_data=False)),
        ("u2", SyncRequest(client_id="c0")),  # another user, the same client id and write checkpoint number
        ("u2", SyncRequest(client_id="c7")),
        ("u2", SyncRequest(client_id="c8")),
    ]


def test_streams_of_two_users_with_shared_and_own_buckets_send_what_they_compute_alone(monkeypatch):
    """Two users holding one bucket in common and others of their own, streams at different positions, with
    subscriptions, write checkpoints of one user or of both (the same number), a list gained and lost
    (re-evaluation), a batch larger than a shared read, compaction between checkpoints."""
    with override_settings(POWERSYNC=config(True)):
        first = TodoList.objects.create(name="first", owner_id="u1")
        Todo.objects.create(list=first, description="a")
        other = TodoList.objects.create(name="theirs", owner_id="u2")
        Todo.objects.create(list=other, description="x")
        replicate_now()
        early = {b: cs.last_op_id for b, cs in storage.read_checkpoint([f'1#todos_by_list["{first.id}"]',
                                                                      "1#everyone[]"]).buckets.items()}
        Todo.objects.create(list=first, description="b")
        TodoList.objects.create(name="second", owner_id="u1")
        replicate_now()
    requests = _requests(first, early)

    def steps():
        def everyone() -> None:  # the shared bucket only
            other.name = "renamed"
            other.save()

        def mine() -> None:
            Todo.objects.create(list=first, description="c")

        def theirs_and_upload() -> None:
            Todo.objects.create(list=other, description="y")
            storage.create_write_checkpoint("u1", "c0")
            storage.create_write_checkpoint("u2", "c0")

        def one_upload() -> None:
            other.name = "again"
            other.save()
            storage.create_write_checkpoint("u2", "c0")

        def big() -> None:
            for i in range(9):
                Todo.objects.create(list=first, description=f"many {i}")
            other.name = "big"
            other.save()

        def gain() -> None:
            third = TodoList.objects.create(name="third", owner_id="u2")
            Todo.objects.create(list=third, description="z")
            Todo.objects.create(list=first, description="d")

        def compacted() -> None:
            todo = Todo.objects.filter(list=first).first()
            for i in range(3):
                todo.description = f"edit {i}"
                todo.save()
            replicate_now()
            compaction.compact(min_share=0)
            Todo.objects.create(list=first, description="after compaction")
            first.name = "first renamed"
            first.save()

        def lose() -> None:
            TodoList.objects.filter(name="third").delete()
            Todo.objects.create(list=other, description="w")

        return [everyone, mine, theirs_and_upload, one_upload, big, gain, compacted, lose]

    hub = FrozenHub(monkeypatch)

    async def run() -> tuple[list[list[dict]], list[list[dict]], int]:
        twins = Twins()
        for on in (True, False):
            with override_settings(POWERSYNC=config(on)):
                for user, request in requests:
                    await twins.open(SyncSession(claims(user), request))
        with override_settings(POWERSYNC=config(True)):
            await twins.settle()
            for step in steps():
                await replicated(hub, step)
                await twins.settle()
        replayed = fanout.of(get_hub()).replayed
        await twins.close()
        half = len(requests)
        return twins.lines[:half], twins.lines[half:], replayed

    shared, own, replayed = asyncio.run(run())
    for i, (a, b) in enumerate(zip(shared, own, strict=True)):
        assert [orjson.dumps(line) for line in a] == [orjson.dumps(line) for line in b], (i, requests[i])
    for i, lines in enumerate(shared):
        if i == 2:
            continue  # resumed from positions the model does not know
        client = ClientModel()
        for line in lines:
            client.apply(line)
        assert client.mismatches == [], (i, client.mismatches)
    assert replayed > 0


def test_gzip_bodies_of_many_changes_are_one_valid_gzip_member(monkeypatch):
    """A gzip body that splices shared lines between its own, over many changes and a write checkpoint of
    its own, decoded whole by a standard gzip reader (CRC and length checked) once the stream ends."""
    with override_settings(POWERSYNC=config(True)):
        lst = TodoList.objects.create(name="first", owner_id="u1")
        Todo.objects.create(list=lst, description="a")
        replicate_now()
    hub = FrozenHub(monkeypatch)

    async def run() -> dict[str, bytes]:
        bodies: dict[str, bytearray] = {}
        tasks = []
        sessions = []

        async def consume(key: str, prepared) -> None:
            async for chunk in prepared.chunks():
                bodies[key] += chunk

        with override_settings(POWERSYNC=config(True)):
            for i in range(4):
                key = f"g{i}"
                request = orjson.dumps({"client_id": key, "raw_data": i % 2 == 0})
                prepared = await views.prepare_stream(claims("u1", ttl=120), request, "application/x-ndjson",
                                                      "gzip")
                sessions.append(prepared.session)
                bodies[key] = bytearray()
                tasks.append(asyncio.create_task(consume(key, prepared)))
            await settled(sessions, tasks)
            for n in range(12):
                def change(n=n) -> None:
                    Todo.objects.create(list=lst, description=f"change {n} " + "x" * (n * 50))
                    if n % 4 == 1:
                        storage.create_write_checkpoint("u1", "g1")
                await replicated(hub, change)
                await settled(sessions, tasks)
            # End the streams as the token expiry would: the session ends, the body is finished.
            for s in sessions:
                s.claims = claims("u1", ttl=-1)
            for w in list(waiting.of(get_hub()).waiters):
                w.set_result(None)
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)
        return {k: bytes(v) for k, v in bodies.items()}

    bodies = asyncio.run(run())
    for key, body in bodies.items():
        text = gzip.decompress(body)
        lines = [orjson.loads(line) for line in text.splitlines()]
        assert lines[-1] == {"token_expires_in": 0}, key
        assert sum("checkpoint_complete" in line for line in lines) == 13, key
        assert b"change 11" in text, key


def test_a_checkpoint_that_interrupts_another_does_not_shrink_the_shared_read_of_streams_behind(monkeypatch):
    """A stream whose data is interrupted by a newer checkpoint (INTERRUPT_AFTER_OPS) reads that checkpoint's
    changes since its own cursor: a shared read keyed by the cursor before (its ``_base``) would hold only
    those buckets, and every stream still at that cursor, seeing more changed buckets, would find the read
    lacking one and read its own (one read per stream instead of one shared)."""
    from test_fanout import ReadCounter, shared_reads
    from test_sync import take_until

    from powersync_django import sync

    monkeypatch.setattr(sync, "INTERRUPT_AFTER_OPS", 1)
    big = TodoList.objects.create(name="big", owner_id="u1")
    small = TodoList.objects.create(name="small", owner_id="u1")
    Todo.objects.create(list=big, description="a")
    replicate_now()
    hub = FrozenHub(monkeypatch)
    counter = ReadCounter(monkeypatch)

    async def caught_up() -> None:
        newest = await in_thread(storage.latest_checkpoint_id)()
        async with asyncio.timeout(30):
            while True:
                if get_hub().latest_id >= newest:
                    return
                await asyncio.sleep(0.02)

    async def run() -> tuple[int, dict]:
        with shared_reads(True):
            interrupted = SyncSession(claims("u1"), SyncRequest(client_id="a"))
            behind = SyncSession(claims("u1"), SyncRequest(client_id="b"))
            await interrupted.prepare()
            await behind.prepare()
            lines_a, lines_b = interrupted.lines(), behind.lines()
            await take_until(lines_a, "checkpoint_complete")
            await take_until(lines_b, "checkpoint_complete")

            def first() -> None:  # more ops than a shared read keeps: paged from the stream's own reads
                for i in range(8):
                    Todo.objects.create(list=big, description=f"many {i}")
                Todo.objects.create(list=small, description="b")

            await replicated(hub, first)
            await caught_up()
            assert "checkpoint_diff" in await anext(lines_a)
            assert "data" in await anext(lines_a)
            await replicated(hub, lambda: Todo.objects.create(list=big, description="c"))
            await caught_up()
            assert "checkpoint_diff" in await anext(lines_a)  # the newer checkpoint interrupts the data
            before = counter.calls["read_checkpoint"]
            assert "checkpoint_diff" in await anext(lines_b)  # both changes at once
            own = counter.calls["read_checkpoint"] - before
            entries = {k: sorted(e.task.result().requested) for k, e in fanout.of(get_hub()).entries.items()
                       if e.task.done() and e.task.result() is not None}
            for gen in (lines_a, lines_b):
                await gen.aclose()
            return own, entries

    own, entries = asyncio.run(run())
    assert own == 0, entries  # the stream behind took its checkpoint from a shared read


def test_a_checkpoint_published_before_the_watcher_first_runs_wakes_the_streams_waiting():
    """The watcher of the hub starts as a task: a checkpoint published between a stream's wait (which created
    the watcher) and the watcher's first step must still wake that stream (not at its deadline only)."""
    from test_waiting import FakeHub

    async def run():
        hub = FakeHub()
        waits = waiting.of(hub)
        stream = asyncio.create_task(waits.wait_changes(1, 3600))
        await asyncio.sleep(0)  # the stream waits; the watcher task is created but has not run yet
        assert waits.waiters and not stream.done()
        hub.publish()
        changes = await asyncio.wait_for(stream, 3)
        assert changes is not None and changes.last_id == 2

    asyncio.run(run())


def test_a_10000_op_change_larger_than_a_shared_read_sends_what_streams_compute_alone(monkeypatch):
    """One change of 10,000 ops in one bucket (more than a shared read keeps) and a few in another, to streams
    at the same cursor with shared reads and without: the same lines; every client's checksums match."""
    big_config = {"SHARED_READ_MAX_OPS": 4000, "OPS_PER_DATA_LINE": 700}
    with override_settings(POWERSYNC=config(True, **big_config)):
        big = TodoList.objects.create(name="big", owner_id="u1")
        small = TodoList.objects.create(name="small", owner_id="u1")
        Todo.objects.create(list=big, description="a")
        replicate_now()
    hub = FrozenHub(monkeypatch)

    def change() -> None:
        with transaction.atomic():
            for i in range(10000):
                Todo.objects.create(list=big, description=f"bulk {i}")
            Todo.objects.create(list=small, description="b")
            big.name = "big renamed"
            big.save()

    async def run() -> tuple[list[list[dict]], int]:
        twins = Twins()
        for on in (True, False):
            with override_settings(POWERSYNC=config(on, **big_config)):
                for client in ("a", "b", "c"):
                    await twins.open(SyncSession(claims("u1"), SyncRequest(client_id=client)))
        with override_settings(POWERSYNC=config(True, **big_config)):
            await twins.settle()
            await replicated(hub, change)
            await settled(twins.sessions, twins.tasks, seconds=120)
        replayed = fanout.of(get_hub()).replayed
        await twins.close()
        return twins.lines, replayed

    lines, _ = asyncio.run(run())
    ops = sum(len(line["data"]["data"]) for line in lines[0] if "data" in line)
    assert ops >= 10001, ops
    for i in range(3):
        assert [orjson.dumps(line) for line in lines[i]] == [orjson.dumps(line) for line in lines[i + 3]], i
        client = ClientModel()
        for line in lines[i]:
            client.apply(line)
        assert client.mismatches == [] and client.completed == 2


def test_the_testing_helper_run_beside_open_streams_leaves_their_hub_open(monkeypatch):
    """``powersync_django.testing.sync`` called from a thread of the event loop (``sync_to_async``: asgiref
    runs its coroutine on that loop) shares the loop's checkpoint hub with the open streams: closing it would
    leave them without changes until they reconnect."""
    from asgiref.sync import sync_to_async
    from test_sync import take_until

    from powersync_django import testing

    with override_settings(POWERSYNC=config(True)):
        lst = TodoList.objects.create(name="mine", owner_id="u1")
        replicate_now()

    async def run() -> list[dict]:
        with override_settings(POWERSYNC=config(True)):
            session = SyncSession(claims("u1"), SyncRequest(client_id="open"))
            await session.prepare()
            gen = session.lines()
            await take_until(gen, "checkpoint_complete")
            result = await sync_to_async(testing.sync)(sub="u1")
            assert result.buckets
            await in_thread(lambda: (Todo.objects.create(list=lst, description="after"), replicate_now()))()
            try:
                return await take_until(gen, "checkpoint_complete", seconds=5)
            finally:
                await gen.aclose()

    lines = asyncio.run(run())
    assert any("checkpoint_diff" in line for line in lines), lines
    assert any(op.get("data") and "after" in op["data"] for line in lines if "data" in line
               for op in line["data"]["data"])
