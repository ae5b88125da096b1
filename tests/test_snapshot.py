"""Checkpoints read from one snapshot, diffs computed as of their own checkpoint, and the hub's gaps.

Interleavings are injected deterministically: a replication batch commits between two reads of the same
checkpoint (a statement hook on the reading connection), or between the hub publishing a checkpoint and a
stream reading it (a wrapper around ``storage.read_checkpoint``). On SQLite these run on a WAL database file,
as deployed (the test database is an in-memory shared cache, whose table locks make a reader block writers).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from django.test import override_settings
from sync_client import ClientModel
from test_sync import claims, in_thread, take_until

from demo_project.todos.models import Todo, TodoList
from powersync_django import notify, storage
from powersync_django.compaction import compact
from powersync_django.models import BucketOp, BucketState, Checkpoint, ReplicationState
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

WAL_ALIAS = "snapshot_wal"


@pytest.fixture
def using(tmp_path):
    """The database alias to test on: PostgreSQL's default, or a fresh SQLite WAL file."""
    if connection.vendor != "sqlite":
        yield "default"
        return
    cfg = dict(connections.settings["default"])
    cfg.update(ENGINE="unlisted_sqlite", NAME=str(tmp_path / "wal.sqlite3"),
               TEST={**cfg["TEST"], "NAME": None})
    connections.settings[WAL_ALIAS] = cfg
    try:
        call_command("migrate", database=WAL_ALIAS, verbosity=0)
        yield WAL_ALIAS
    finally:
        storage.shutdown()  # storage threads may hold connections to it
        connections[WAL_ALIAS].close()
        del connections[WAL_ALIAS]  # this thread's wrapper (other threads' ended)
        del connections.settings[WAL_ALIAS]


def todos_bucket(lst: TodoList) -> str:
    return f'1#todos_by_list["{lst.id}"]'


def state_at(bucket: str, last_op_id: int, using: str) -> tuple[int, int]:
    """Checksum and count of a bucket's ops up to ``last_op_id``, by brute force."""
    ops = BucketOp.objects.using(using).filter(bucket=bucket, op_id__lte=last_op_id)
    return sum(ops.values_list("checksum", flat=True)) & 0xFFFFFFFF, ops.count()


def in_other_thread(fn) -> None:
    """Run ``fn`` to completion on another thread (its own connection), as another process would commit."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller)
            errors.append(e)
        finally:
            connections.close_all()

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]


# --- 1. one snapshot -----------------------------------------------------------------------------


def test_checkpoint_read_is_one_snapshot_while_batches_commit_between_its_reads(using):
    lst = TodoList.objects.using(using).create(name="l", owner_id="u1")
    for i in range(3):
        Todo.objects.using(using).create(list=lst, description=f"t{i}")
    storage.create_write_checkpoint("u1", "c1", using=using)
    replicate_now(using)
    bucket = todos_bucket(lst)
    before = storage.read_checkpoint([bucket], using, wc_key=storage.write_checkpoint_key("u1", "c1"))
    assert before.write_checkpoint == 1
    assert (before.buckets[bucket].checksum, before.buckets[bucket].count) == state_at(bucket, before.last_op_id,
                                                                                      using)

    def batch(n: int, marker: bool) -> None:
        for i in range(n):
            Todo.objects.using(using).create(list_id=lst.id, description=f"later {i}")
        if marker:
            storage.create_write_checkpoint("u1", "c1", using=using)
        replicate_now(using)

    # A batch commits right after the replication state is read, another right after the bucket totals are.
    plan = [("replicationstate", lambda: batch(1, False)), ("bucketstate", lambda: batch(2, True))]

    def hook(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if plan and plan[0][0] in sql.lower():
            in_other_thread(plan.pop(0)[1])
        return result

    with connections[using].execute_wrapper(hook):
        read = storage.read_checkpoint([bucket], using, wc_key=storage.write_checkpoint_key("u1", "c1"))
    assert plan == []  # both batches committed during the read
    assert read == before  # exactly the checkpoint of the first read: totals, write checkpoint
    newest = storage.read_checkpoint([bucket], using, wc_key=storage.write_checkpoint_key("u1", "c1"))
    assert newest.last_op_id == before.last_op_id + 3 and newest.write_checkpoint == 2
    assert (newest.buckets[bucket].checksum, newest.buckets[bucket].count) == state_at(bucket, newest.last_op_id,
                                                                                      using)


def test_read_as_of_an_older_checkpoint(using):
    lst = TodoList.objects.using(using).create(name="l", owner_id="u1")
    Todo.objects.using(using).create(list=lst, description="a")
    replicate_now(using)
    first = storage.read_checkpoint([todos_bucket(lst)], using, wc_key=storage.write_checkpoint_key("u1", "c1"))
    Todo.objects.using(using).create(list=lst, description="b")
    storage.create_write_checkpoint("u1", "c1", using=using)
    replicate_now(using)
    old = storage.read_checkpoint([todos_bucket(lst)], using, at=first.checkpoint_id, wc_key=storage.write_checkpoint_key("u1", "c1"))
    assert old.buckets == first.buckets and old.last_op_id == first.last_op_id
    assert old.write_checkpoint is None  # advanced after that checkpoint: not reportable with it
    Checkpoint.objects.using(using).filter(id__lte=first.checkpoint_id).delete()  # pruned
    newest = storage.read_checkpoint([todos_bucket(lst)], using, at=first.checkpoint_id, wc_key=storage.write_checkpoint_key("u1", "c1"))
    assert newest.checkpoint_id > first.checkpoint_id and newest.write_checkpoint == 1


# --- 2. a diff is computed as of its own checkpoint ------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared-read", "own-reads"])
def test_diff_never_claims_a_checkpoint_newer_than_its_changes(monkeypatch, shared, request):
    override = override_settings(POWERSYNC={**settings.POWERSYNC, "SHARED_READS": shared})
    override.enable()
    request.addfinalizer(override.disable)
    a = TodoList.objects.create(name="a", owner_id="u1")
    b = TodoList.objects.create(name="b", owner_id="u1")
    replicate_now()
    read_checkpoint, read_shared = storage.read_checkpoint, storage.read_shared
    armed = threading.Event()

    def batch(lst: TodoList) -> int:
        Todo.objects.create(list=lst, description=f"in {lst.name}")
        replicate_now()
        return ReplicationState.objects.get().last_op_id

    ops: dict[str, int] = {}

    def after_batch_2(read):
        def wrapped(*args, **kwargs):
            # The stream has batch 1's changes from the hub; batch 2 commits before it reads the checkpoint
            # (its own read, or the read it shares with the process's other streams).
            if armed.is_set():
                armed.clear()
                ops["2"] = batch(b)
            return read(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(storage, "read_checkpoint", after_batch_2(read_checkpoint))
    monkeypatch.setattr(storage, "read_shared", after_batch_2(read_shared))
    client = ClientModel()

    async def run() -> tuple[list[dict], list[dict]]:
        session = SyncSession(claims("u1"), SyncRequest())
        await session.prepare()
        gen = session.lines()
        for line in await take_until(gen, "checkpoint_complete"):
            client.apply(line)
        armed.set()
        ops["1"] = await in_thread(batch)(a)
        first = await take_until(gen, "checkpoint_complete")
        second = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return first, second

    first, second = asyncio.run(run())
    for line in first + second:
        client.apply(line)
    diff1, diff2 = first[0]["checkpoint_diff"], second[0]["checkpoint_diff"]
    assert diff1["last_op_id"] == str(ops["1"])
    assert [u["bucket"] for u in diff1["updated_buckets"]] == [todos_bucket(a)]
    assert diff2["last_op_id"] == str(ops["2"])
    assert [u["bucket"] for u in diff2["updated_buckets"]] == [todos_bucket(b)]
    assert client.mismatches == [] and client.completed == 3
    assert client.positions[todos_bucket(b)] == ops["2"]


# --- 3. the very first checkpoint ------------------------------------------------------------------


def test_stream_opened_before_the_first_checkpoint_is_woken_by_it():
    assert not Checkpoint.objects.exists()

    async def run() -> tuple[list[dict], list[dict]]:
        session = SyncSession(claims("u1"), SyncRequest())
        await session.prepare()
        gen = session.lines()
        first = await take_until(gen, "checkpoint_complete")
        waiting = asyncio.ensure_future(anext(gen, None))  # the stream waits for a checkpoint
        await asyncio.sleep(0)
        await in_thread(replicate_now)()  # the first checkpoint: bucket storage built (version 1)
        async with asyncio.timeout(10):  # no keepalive wake-up before (an hour); the hub must wake it
            rest = [await waiting] + [line async for line in gen]
        return first, rest

    with override_settings(POWERSYNC={**settings.POWERSYNC, "KEEPALIVE_SECONDS": 3600}):
        first, rest = asyncio.run(run())
    assert first[0]["checkpoint"]["last_op_id"] == "0"
    assert rest == [None]  # definitions version changed: the stream ended so the client reconnects


# --- 4. checkpoints the hub missed ------------------------------------------------------------------


class FrozenHub:
    """Makes hubs see no new checkpoint while closed, as a process whose hub fell behind."""

    def __init__(self, monkeypatch) -> None:
        self.frozen: int | None = None
        latest = storage.latest_checkpoint_id
        monkeypatch.setattr(storage, "latest_checkpoint_id",
                            lambda using="default": latest(using) if self.frozen is None else self.frozen)

    def close(self) -> None:
        self.frozen = storage.latest_checkpoint_id()

    def open(self) -> None:
        self.frozen = None
        notify.checkpoint_committed(0)


def _missed_checkpoints(monkeypatch, prune: bool) -> tuple[list[TodoList], list[dict], ClientModel]:
    lists = [TodoList.objects.create(name=n, owner_id="u1") for n in "abc"]
    replicate_now()
    hub = FrozenHub(monkeypatch)
    client = ClientModel()

    def batches() -> None:
        first = None
        for lst in lists:
            Todo.objects.create(list=lst, description=f"in {lst.name}")
            replicate_now()
            first = first or Checkpoint.objects.order_by("-id").first().id
        if prune:  # as the replicator prunes old checkpoint rows
            Checkpoint.objects.filter(id__lte=first).delete()

    async def run() -> list[dict]:
        session = SyncSession(claims("u1"), SyncRequest())
        await session.prepare()
        gen = session.lines()
        for line in await take_until(gen, "checkpoint_complete"):
            client.apply(line)
        await in_thread(hub.close)()
        await in_thread(batches)()
        hub.open()
        lines = await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return lines

    lines = asyncio.run(run())
    for line in lines:
        client.apply(line)
    return lists, lines, client


def test_checkpoints_pruned_before_the_hub_read_them_resync_streams(monkeypatch):
    lists, lines, client = _missed_checkpoints(monkeypatch, prune=True)
    diff = lines[0]["checkpoint_diff"]
    assert sorted(u["bucket"] for u in diff["updated_buckets"] if "todos_by_list" in u["bucket"]) == sorted(
        todos_bucket(lst) for lst in lists)
    assert client.mismatches == [] and client.completed == 2
    assert {b for b in client.received if "todos_by_list" in b} == {todos_bucket(lst) for lst in lists}


def test_events_dropped_from_the_hub_resync_streams(monkeypatch):
    monkeypatch.setattr(notify, "RECENT_EVENTS", 2)
    lists, lines, client = _missed_checkpoints(monkeypatch, prune=False)
    diff = lines[0]["checkpoint_diff"]
    assert sorted(u["bucket"] for u in diff["updated_buckets"] if "todos_by_list" in u["bucket"]) == sorted(
        todos_bucket(lst) for lst in lists)
    assert client.mismatches == [] and client.completed == 2


# --- compaction guard ------------------------------------------------------------------------------


def test_compaction_guard_covers_buckets_without_data_to_send():
    lst = TodoList.objects.create(name="l", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="v0")
    replicate_now()
    state = storage.read_checkpoint([todos_bucket(lst), '1#user_lists["u1"]'])
    # A client that has everything: nothing to send at the first checkpoint.
    positions = {b: cs.last_op_id for b, cs in state.buckets.items()}

    def change_and_compact() -> None:
        for i in range(1, 4):
            todo.description = f"v{i}"
            todo.save()
        replicate_now()
        compact(min_share=0)

    async def run() -> list[dict]:
        session = SyncSession(claims("u1"), SyncRequest(buckets=positions))
        await session.prepare()
        gen = session.lines()
        lines = [await gen.__anext__()]  # the checkpoint, read; compaction moves past it before it completes
        await in_thread(change_and_compact)()
        lines += await take_until(gen, "checkpoint_complete")
        await gen.aclose()
        return lines

    lines = asyncio.run(run())
    assert lines[0]["checkpoint"]["last_op_id"] == str(state.last_op_id)
    assert BucketState.objects.get(bucket=todos_bucket(lst)).compacted_to > state.last_op_id
    completes = [line["checkpoint_complete"]["last_op_id"] for line in lines if "checkpoint_complete" in line]
    assert completes and completes[0] != str(state.last_op_id)  # withheld; the next checkpoint completes
    client = ClientModel(positions=dict(positions), received={b: (cs.checksum, cs.count)
                                                               for b, cs in state.buckets.items()})
    for line in lines:
        client.apply(line)
    assert client.mismatches == []


# --- stress (PostgreSQL) -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_stress_reconnecting_streams_validate_every_checkpoint():
    import sync_stress

    result = sync_stress.run(seconds=12, sessions=20)
    print(result.summary())
    assert result.mismatches == [] and result.omitted == [] and result.regressions == []
    assert result.checkpoints_validated > 0 and result.connections > 20
