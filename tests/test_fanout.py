"""One read per change shared by all streams of the process (fanout.py): the same lines as each stream's own
reads, and a number of reads per change that does not grow with the number of streams."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.test import override_settings
from sync_client import ClientModel
from test_snapshot import FrozenHub
from test_sync import claims

from demo_project.todos.models import Todo, TodoList
from powersync_django import fanout, storage, views
from powersync_django.notify import get_hub
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

def in_thread(fn):
    """Run blocking ORM code from async tests in a worker thread that closes its connections afterwards."""

    def call(*args):
        try:
            return fn(*args)
        finally:
            connections.close_all()

    return sync_to_async(call, thread_sensitive=False)


READS = ("read_checkpoint", "read_ops", "max_compacted_to", "read_shared")


class Streams:
    """Sync sessions consumed by tasks that record their lines."""

    def __init__(self) -> None:
        self.sessions: list[SyncSession] = []
        self.lines: list[list[dict]] = []
        self.tasks: list[asyncio.Task] = []
        self.progress = asyncio.Event()

    async def open(self, session: SyncSession) -> None:
        await session.prepare()
        index = len(self.sessions)
        self.sessions.append(session)
        self.lines.append([])
        self.tasks.append(asyncio.create_task(self._consume(index, session)))

    async def _consume(self, index: int, session: SyncSession) -> None:
        async for line in session.lines():
            self.lines[index].append(line)
            self.progress.set()

    def completes(self, index: int) -> int:
        return sum("checkpoint_complete" in line for line in self.lines[index])

    async def until(self, condition, seconds: float = 60) -> None:
        try:
            async with asyncio.timeout(seconds):
                while not condition():
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            print([self.completes(i) for i in range(len(self.sessions))], self.lines[0][-3:], self.tasks[0])
            raise

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class ReadCounter:
    """Counts the storage reads sessions and shared reads run (calls to ``storage.run`` by function)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: Counter[str] = Counter()
        run = storage.run

        async def counted(fn, *args, **kwargs):
            self.calls[getattr(fn, "__name__", "?")] += 1
            return await run(fn, *args, **kwargs)

        monkeypatch.setattr(storage, "run", counted)

    def reads(self) -> int:
        return sum(self.calls[name] for name in READS)


async def replicated(hub: FrozenHub, change) -> None:
    """Commit ``change`` and replicate it; streams see the checkpoint only once the replicator is done (on
    SQLite's in-memory test database, a read while it releases its lease would fail: the table is locked)."""
    await in_thread(hub.close)()
    await in_thread(change)()
    await in_thread(replicate_now)()
    hub.open()


def shared_reads(on: bool):
    return override_settings(POWERSYNC={**settings.POWERSYNC, "SHARED_READS": on, "SHARED_READ_MAX_OPS": 5,
                                        "OPS_PER_DATA_LINE": 3, "KEEPALIVE_SECONDS": 3600,
                                        "MAX_STREAMS_PER_USER": None})


def test_shared_reads_send_the_same_lines_as_own_reads(monkeypatch):  # noqa: F811
    """Streams served by shared reads and streams reading their own, side by side through the same changes:
    new ops, a write checkpoint, a batch larger than a shared read keeps (paged), a list gained (re-evaluation,
    a new bucket), a list deleted (a removed bucket), a stream resuming from old positions."""
    first = TodoList.objects.create(name="first", owner_id="u1")
    Todo.objects.create(list=first, description="a")
    replicate_now()
    early = storage.read_checkpoint([f'1#todos_by_list["{first.id}"]'])
    second = TodoList.objects.create(name="second", owner_id="u1")
    Todo.objects.create(list=second, description="b")
    TodoList.objects.create(name="other", owner_id="u2")
    replicate_now()
    counter = ReadCounter(monkeypatch)
    requests = [SyncRequest(client_id="c0"), SyncRequest(client_id="c1"),
                SyncRequest(client_id="c2", buckets={b: cs.last_op_id for b, cs in early.buckets.items()})]

    def steps():
        def one() -> None:
            Todo.objects.create(list=first, description="c")

        def write_checkpoint() -> None:
            Todo.objects.create(list=second, description="d")
            storage.create_write_checkpoint("u1", "c0")

        def big() -> None:
            for i in range(8):
                Todo.objects.create(list=second, description=f"many {i}")
            Todo.objects.create(list=first, description="e")

        def gain() -> None:
            third = TodoList.objects.create(name="third", owner_id="u1")
            Todo.objects.create(list=third, description="f")
            Todo.objects.create(list=first, description="g")

        def lose() -> None:
            first.delete()

        def update() -> None:
            todo = Todo.objects.filter(list=second).first()
            todo.description = "changed"
            todo.save()

        return [one, write_checkpoint, big, gain, lose, update]

    hub = FrozenHub(monkeypatch)

    async def run() -> tuple[list[list[dict]], list[list[dict]], int]:
        streams = Streams()
        for on in (True, False):
            with shared_reads(on):
                for request in requests:
                    await streams.open(SyncSession(claims("u1"), request))
        n = len(streams.sessions)
        await streams.until(lambda: all(streams.completes(i) == 1 for i in range(n)))
        for done, step in enumerate(steps(), start=2):
            await replicated(hub, step)
            await streams.until(lambda d=done: all(streams.completes(i) == d for i in range(n)))
        hub_reads = fanout.of(get_hub()).reads
        await streams.close()
        half = len(requests)
        return streams.lines[:half], streams.lines[half:], hub_reads

    shared, own, hub_reads = asyncio.run(run())
    for a, b in zip(shared, own, strict=True):
        assert [orjson.dumps(line) for line in a] == [orjson.dumps(line) for line in b]
    for lines in shared[:2]:  # the fresh clients (the third resumed from positions this model does not have)
        client = ClientModel()
        for line in lines:
            client.apply(line)
        assert client.mismatches == [] and client.completed == 7
    diffs = [line["checkpoint_diff"] for line in shared[0] if "checkpoint_diff" in line]
    assert diffs[1].get("write_checkpoint") == "1"
    assert any(diff["removed_buckets"] for diff in diffs)
    assert any(len(line["data"]["data"]) == 3 and line["data"]["has_more"] for line in shared[0] if "data" in line)
    assert hub_reads == len(steps())  # one shared read per change for the three shared streams
    assert counter.calls["read_shared"] == hub_reads


TRANSPORTS = [  # (body, Accept, Accept-Encoding); legacy NDJSON (raw_data false) first: it nests row data
    ({"raw_data": False}, "application/x-ndjson", ""),
    ({"raw_data": True}, "application/x-ndjson", ""),
    ({"raw_data": True}, "application/vnd.powersync.bson-stream", ""),
    ({"raw_data": True}, "application/x-ndjson", "gzip"),
    ({"raw_data": False}, "application/vnd.powersync.bson-stream", "gzip"),
]


def test_streams_sharing_lines_send_the_bytes_of_their_own_reads(monkeypatch):  # noqa: F811
    """HTTP bodies in every encoding, of streams that take their lines from each other (one shared read, lines
    built and encoded once) and of streams reading their own: byte for byte the same, through new ops, a
    write checkpoint, a paged batch, an update."""
    lst = TodoList.objects.create(name="first", owner_id="u1")
    Todo.objects.create(list=lst, description="a")
    replicate_now()
    hub = FrozenHub(monkeypatch)

    def steps():
        def one() -> None:
            Todo.objects.create(list=lst, description="b")

        def write_checkpoint() -> None:
            Todo.objects.create(list=lst, description="c")
            storage.create_write_checkpoint("u1", "shared-0-0")
            storage.create_write_checkpoint("u1", "own-0-0")

        def big() -> None:
            for i in range(7):
                Todo.objects.create(list=lst, description=f"many {i}")

        def update() -> None:
            todo = Todo.objects.filter(list=lst).first()
            todo.description = "changed"
            todo.save()

        return [one, write_checkpoint, big, update]

    async def run() -> tuple[dict, int]:
        bodies: dict[tuple, bytearray] = {}
        inflaters: dict[tuple, object] = {}
        progress = asyncio.Event()
        tasks = []

        async def consume(key: tuple, prepared) -> None:
            async for chunk in prepared.chunks():
                inflate = inflaters.get(key)
                bodies[key] += inflate.decompress(chunk) if inflate is not None else chunk
                progress.set()

        for on in (True, False):
            with shared_reads(on):
                for t, (body, accept, encoding) in enumerate(TRANSPORTS):
                    for copy in range(3 if on else 2):
                        key = ("shared" if on else "own", t, copy)
                        request = orjson.dumps({**body, "client_id": f"{key[0]}-{t}-{copy}"})
                        prepared = await views.prepare_stream(claims("u1"), request, accept, encoding)
                        bodies[key] = bytearray()
                        if encoding:
                            inflaters[key] = zlib.decompressobj(31)
                        tasks.append(asyncio.create_task(consume(key, prepared)))

        async def until(done: int) -> None:
            async with asyncio.timeout(60):
                while not all(b.count(b"checkpoint_complete") == done for b in bodies.values()):
                    progress.clear()
                    await progress.wait()

        await until(1)
        for done, step in enumerate(steps(), start=2):
            await replicated(hub, step)
            await until(done)
        replayed = fanout.of(get_hub()).replayed
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return bodies, replayed

    bodies, replayed = asyncio.run(run())
    for (kind, t, copy), body in bodies.items():
        if kind == "shared":  # copy 0 of the first transport has a write checkpoint, as its "own" copy 0
            assert bytes(body) == bytes(bodies[("own", t, min(copy, 1))]), (t, copy)
    assert b'"description\\":\\"many 6' in bodies[("own", 1, 0)]  # raw: row data as JSON strings
    assert b'"description":"many 6' in bodies[("own", 0, 0)]  # legacy: nested
    # All shared streams but the one whose write checkpoint changed take the others' lines, every change.
    assert replayed >= (3 * len(TRANSPORTS) - 2) * len(steps())


def _fanout_run(monkeypatch, n: int) -> tuple[int, int, int, dict]:
    """``n`` streams of one list's bucket, then one change: (streams that got it, reads during the change,
    shared reads, read calls by function)."""
    lst = TodoList.objects.create(name="shared", owner_id="u1")
    Todo.objects.create(list=lst, description="before")
    replicate_now()
    counter = ReadCounter(monkeypatch)
    hub = FrozenHub(monkeypatch)

    async def run() -> tuple[int, int, int, dict]:
        streams = Streams()
        for i in range(n):
            await streams.open(SyncSession(claims("u1"), SyncRequest(client_id=f"c{i}")))
        await streams.until(lambda: all(streams.completes(i) == 1 for i in range(n)), seconds=120)
        before, calls_before = counter.reads(), Counter(counter.calls)
        reads_before = fanout.of(get_hub()).reads
        await replicated(hub, lambda: Todo.objects.create(list=lst, description="the change"))

        def received(i: int) -> bool:
            return any("data" in line and any("the change" in (op.get("data") or "") for op in line["data"]["data"])
                       for line in streams.lines[i][-4:])

        await streams.until(lambda: all(streams.completes(i) == 2 for i in range(n)), seconds=120)
        got = sum(received(i) for i in range(n))
        calls = dict(counter.calls - calls_before)
        out = got, counter.reads() - before, fanout.of(get_hub()).reads - reads_before, calls
        await streams.close()
        return out

    with override_settings(POWERSYNC={**settings.POWERSYNC, "KEEPALIVE_SECONDS": 3600}):
        return asyncio.run(run())


def test_a_change_reaches_2000_streams_with_a_bounded_number_of_reads(monkeypatch):  # noqa: F811
    n = 2000
    started = time.monotonic()
    got, reads, shared, calls = _fanout_run(monkeypatch, n)
    print(f"{n} streams: change received by {got}, {reads} storage reads ({calls}), "
          f"{time.monotonic() - started:.1f} s in all")
    assert got == n
    assert shared == 1
    assert reads == 1, calls  # the shared read; no stream reads its own


def test_bounded_reads_do_not_depend_on_the_number_of_streams(monkeypatch):  # noqa: F811
    got, reads, shared, _ = _fanout_run(monkeypatch, 20)
    assert (got, reads, shared) == (20, 1, 1)


def test_batches_kept_for_replay_are_bounded_in_number_and_ops():
    read = storage.SharedRead(storage.CheckpointState(10, 1, {}, 3, None, 0), {}, {}, {}, {})
    with override_settings(POWERSYNC={**settings.POWERSYNC, "SHARED_READ_MAX_OPS": 100}):
        shared = fanout.Shared(read, [])
        for i in range(150):  # 30 ops each: at most twice SHARED_READ_MAX_OPS in all
            shared.keep(("big", i), fanout.Batch([], (), 3, 30))
        assert len(shared.batches) == 6 and shared.batch_ops == 180
        for i in range(2 * fanout.MAX_BATCHES):  # no lines: no ops, but a bounded number
            shared.keep(("empty", i), fanout.Batch([], (), None, 0))
        assert len(shared.batches) == fanout.MAX_BATCHES


def test_a_stream_closing_while_it_waits_for_a_shared_read_does_not_cancel_it():
    async def run():
        release = asyncio.Event()

        async def read() -> str:
            await release.wait()
            return "shared"

        entry = fanout._Entry(asyncio.create_task(read()))
        leaves, stays = asyncio.create_task(entry.result()), asyncio.create_task(entry.result())
        await asyncio.sleep(0.01)
        leaves.cancel()
        await asyncio.gather(leaves, return_exceptions=True)
        release.set()
        assert await asyncio.wait_for(stays, 5) == "shared"
        assert leaves.cancelled() and not entry.task.cancelled() and entry.waiters == []
        assert await entry.result() == "shared"  # done: no waiting

    asyncio.run(run())
