"""The checkpoint hub and the LISTEN waits: no lost wake-ups, no polling while idle."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.conf import settings
from django.test import override_settings

from demo_project.todos.models import TodoList
from powersync_django import notify, storage
from powersync_django.replication import replicate_now


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_committed_while_the_hub_reads_wakes_it_at_once(monkeypatch):
    """The poke of a checkpoint committed during the hub's read must not be cleared with the read's own."""
    monkeypatch.setattr(notify, "LISTEN_POLL_SECONDS", 600)
    monkeypatch.setattr(notify.CheckpointHub, "_listen", lambda self, loop: None)  # pokes come only from here
    replicate_now()
    real = storage.latest_checkpoint_id
    reads = []

    def read_then_commit(using="default"):
        newest = real(using)
        if not reads:
            TodoList.objects.using(using).create(name="during the read", owner_id="u1")
            replicate_now(using)  # pokes the hub (checkpoint_committed) before this read returns
        reads.append(newest)
        return newest

    monkeypatch.setattr(storage, "latest_checkpoint_id", read_then_commit)

    async def run():
        with override_settings(POWERSYNC={**settings.POWERSYNC, "POLL_INTERVAL": 600}):
            hub = notify.get_hub()
            baseline = await hub.ready()
            try:
                return baseline, await hub.wait_changes(baseline, 20)
            finally:
                await hub.close()

    baseline, changes = asyncio.run(run())
    assert changes is not None and changes.last_id == baseline + 1
    assert any(m.startswith("todos.todolist") for m in changes.models)


class CountingConnection:
    """A psycopg connection that counts the ``notifies`` calls (one per wake-up of the waiting thread)."""

    def __init__(self, conn) -> None:
        self.conn, self.calls = conn, 0

    def notifies(self, **kwargs):
        self.calls += 1
        return self.conn.notifies(**kwargs)

    def __getattr__(self, name):
        return getattr(self.conn, name)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_idle_outbox_listener_sleeps_until_notified_or_woken():
    from powersync_django.replication import _OutboxListener

    listener = _OutboxListener("default")
    wake = notify.Waker()
    try:
        counting = listener.conn = CountingConnection(listener.conn)
        assert listener.wait(wake, 1.0) == "timeout"
        assert counting.calls <= 2  # one look before sleeping, one after: no 50 ms polling

        timer = threading.Timer(0.2, wake.set)  # a commit of this process (outbox_changed) or stop()
        timer.start()
        assert listener.wait(wake, 60) == "woken"
        timer.join()
        wake.clear()
        assert not wake.is_set()

        threading.Timer(0.2, lambda: TodoList.objects.create(name="other process", owner_id="u1")).start()
        assert listener.wait(wake, 60) == "notified"
    finally:
        listener.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_hub_listener_thread_stops_at_once(monkeypatch):
    """It sleeps in one select for up to LISTENER_CHECK_SECONDS; stop_listener wakes it through its pipe."""
    monkeypatch.setattr(notify, "LISTENER_CHECK_SECONDS", 600)

    async def run():
        hub = notify.get_hub()
        await hub.ready()
        await asyncio.sleep(0.3)  # the listener is connected and waiting
        started = time.monotonic()
        hub.stop_listener(wait=30)
        stopped = time.monotonic() - started
        alive = hub._listener.is_alive()
        await hub.close()
        return alive, stopped

    alive, stopped = asyncio.run(run())
    assert not alive and stopped < 30


def test_a_waker_is_an_event_with_a_pipe():
    import selectors

    wake = notify.Waker()
    with selectors.DefaultSelector() as selector:
        selector.register(wake.fileno(), selectors.EVENT_READ)
        assert selector.select(0) == [] and not wake.is_set()
        wake.set()
        wake.set()
        assert selector.select(0) and wake.is_set() and wake.wait(0)
        wake.clear()
        assert selector.select(0) == [] and not wake.is_set()


@pytest.mark.django_db(transaction=True)
def test_the_sqlite_replicator_poll_queries_the_outbox_only_after_a_commit_elsewhere():
    """Idle, the SQLite poll reads PRAGMA data_version; the outbox is queried again only once another
    connection (another process or thread) committed."""
    from django.db import connection, connections
    from django.test.utils import CaptureQueriesContext

    from powersync_django.replication import ReplicatorWorker

    if connection.vendor != "sqlite":
        pytest.skip("SQLite poll")
    worker = ReplicatorWorker()

    def outbox_queries(queries) -> int:
        return sum("outboxentry" in q["sql"].lower() for q in queries.captured_queries)

    with CaptureQueriesContext(connection) as idle:
        worker._wait(None, 0)  # up to min(LEASE_SECONDS / 3, 1) s, nothing committed anywhere
    assert outbox_queries(idle) == 1  # polled every POLL_INTERVAL before: about 50

    def commit_elsewhere() -> None:
        TodoList.objects.create(name="another thread", owner_id="u1")
        connections.close_all()

    timer = threading.Timer(0.2, commit_elsewhere)
    with CaptureQueriesContext(connection) as changed:
        timer.start()
        worker._wait(None, 0)
    timer.join()
    assert outbox_queries(changed) == 2  # the look before, and the one that found the new entry


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_stale_byte_in_the_wake_pipe_does_not_make_the_wait_spin():
    """``set`` and ``clear`` racing can leave a byte in the pipe with the flag clear: the wait drains it
    and sleeps instead of returning from select again and again."""
    from powersync_django.replication import _OutboxListener

    listener = _OutboxListener("default")
    wake = notify.Waker()
    try:
        threading.Event.clear(wake)  # the flag cleared, the byte of a set() still in the pipe:
        import os

        os.write(wake._write, b"x")
        counting = listener.conn = CountingConnection(listener.conn)
        assert listener.wait(wake, 1.0) == "timeout"
        assert counting.calls <= 3
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_the_sqlite_hub_reads_checkpoints_only_after_a_commit_elsewhere(monkeypatch):
    """Idle, the SQLite hub polls PRAGMA data_version, not the checkpoint table; a checkpoint committed by
    another connection (another process: no poke) is still read within a poll."""
    from django.db import connection, connections

    if connection.vendor != "sqlite":
        pytest.skip("SQLite poll")
    replicate_now()
    monkeypatch.setattr(notify, "checkpoint_committed", lambda checkpoint_id: None)  # as from another process
    real = storage.latest_checkpoint_id
    reads = []
    monkeypatch.setattr(storage, "latest_checkpoint_id", lambda using="default": reads.append(1) or real(using))

    def commit_elsewhere() -> None:
        TodoList.objects.create(name="elsewhere", owner_id="u1")
        replicate_now()
        connections.close_all()

    async def run():
        hub = notify.get_hub()
        baseline = await hub.ready()
        before = len(reads)
        await asyncio.sleep(1.0)  # 50 polls of POLL_INTERVAL
        idle = len(reads) - before
        await asyncio.to_thread(commit_elsewhere)
        try:
            return idle, baseline, await hub.wait_changes(baseline, 20)
        finally:
            await hub.close()

    idle, baseline, changes = asyncio.run(run())
    assert idle <= 1  # a read every POLL_INTERVAL before: about 50
    assert changes is not None and changes.last_id == baseline + 1
