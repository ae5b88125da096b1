"""Capture writes a transaction's outbox rows in batches: queued in memory, written before the transaction ends.

Whatever the batching, the outbox stays transactional: a committed change has its entry (in order), a rolled-back
one (transaction or savepoint) has none, and the replicator hears about every commit with entries.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from demo_project.todos.models import Todo, TodoList
from powersync_django import notify, outbox_write
from powersync_django.models import OutboxEntry

TABLE = OutboxEntry._meta.db_table


def entries() -> list[tuple[str, str]]:
    return [(e.object_pk, e.op) for e in OutboxEntry.objects.order_by("id")]


def outbox_statements(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if TABLE in q["sql"] or "pg_notify" in q["sql"]]


@pytest.fixture
def the_list(transactional_db) -> TodoList:
    lst = TodoList.objects.create(name="l", owner_id="u1")
    OutboxEntry.objects.all().delete()
    return lst


@pytest.fixture
def wakeups(monkeypatch) -> list[int]:
    """Calls of the in-process replicator wake-up."""
    calls: list[int] = []
    monkeypatch.setattr(notify, "outbox_changed", lambda: calls.append(1))
    return calls


def test_a_transaction_of_saves_writes_its_entries_in_one_statement(the_list):
    with CaptureQueriesContext(connection) as ctx, transaction.atomic():
        todos = [Todo.objects.create(list=the_list, description=f"t{i}") for i in range(10)]
    statements = outbox_statements(ctx)
    assert len(statements) == 1, statements
    if connection.vendor == "postgresql":
        assert "pg_notify" in statements[0]
    assert entries() == [(str(t.pk), "S") for t in todos]


def test_deleting_many_rows_writes_their_entries_in_one_statement(the_list):
    todos = [Todo.objects.create(list=the_list, description=f"t{i}") for i in range(30)]
    OutboxEntry.objects.all().delete()
    with CaptureQueriesContext(connection) as ctx:
        Todo.objects.filter(list=the_list).delete()  # autocommit: Django's collector opens the transaction
    assert len(outbox_statements(ctx)) == 1
    assert sorted(entries()) == sorted((str(t.pk), "D") for t in todos)


def test_rows_queued_before_a_savepoint_survive_its_rollback(the_list):
    with transaction.atomic():
        a = Todo.objects.create(list=the_list, description="a")
        with pytest.raises(RuntimeError), transaction.atomic():
            Todo.objects.create(list=the_list, description="dropped")
            raise RuntimeError
        b = Todo.objects.create(list=the_list, description="b")
        with transaction.atomic():  # released: its rows commit with the transaction
            c = Todo.objects.create(list=the_list, description="c")
            d = Todo.objects.create(list=the_list, description="d")
        e = Todo.objects.create(list=the_list, description="e")
    assert entries() == [(str(t.pk), "S") for t in (a, b, c, d, e)]


def test_a_deletion_in_a_rolled_back_savepoint_leaves_no_entry(the_list):
    keep = Todo.objects.create(list=the_list, description="keep")
    gone = Todo.objects.create(list=the_list, description="gone")
    OutboxEntry.objects.all().delete()
    gone_pk = str(gone.pk)
    with transaction.atomic():
        gone.delete()
        with pytest.raises(RuntimeError), transaction.atomic():
            Todo.objects.filter(pk=keep.pk).delete()
            raise RuntimeError
    assert entries() == [(gone_pk, "D")]
    assert Todo.objects.filter(pk=keep.pk).exists()


def test_a_rolled_back_transaction_leaves_nothing_queued_for_the_next(the_list):
    with pytest.raises(RuntimeError), transaction.atomic():
        Todo.objects.create(list=the_list, description="dropped")
        raise RuntimeError
    with transaction.atomic():
        kept = Todo.objects.create(list=the_list, description="kept")
    assert entries() == [(str(kept.pk), "S")]


def test_queued_rows_are_visible_to_reads_in_the_same_transaction(the_list):
    with pytest.raises(RuntimeError), transaction.atomic():
        Todo.objects.create(list=the_list, description="t")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(TABLE)}")  # noqa: S608
            assert cursor.fetchone()[0] == 1
        assert OutboxEntry.objects.count() == 1
        raise RuntimeError
    assert entries() == []


def test_a_full_queue_is_written_mid_transaction(the_list, monkeypatch):
    monkeypatch.setattr(outbox_write, "BATCH_ROWS", 3)
    with CaptureQueriesContext(connection) as ctx, transaction.atomic():
        first = [Todo.objects.create(list=the_list, description=f"a{i}") for i in range(4)]
        with pytest.raises(RuntimeError), transaction.atomic():
            [Todo.objects.create(list=the_list, description=f"x{i}") for i in range(4)]
            raise RuntimeError
        last = [Todo.objects.create(list=the_list, description=f"b{i}") for i in range(2)]
    assert entries() == [(str(t.pk), "S") for t in first + last]
    assert len(outbox_statements(ctx)) >= 3


def test_large_batches_are_written_whole_and_in_order(the_list, monkeypatch):
    """Bulk paths write many rows per statement (PostgreSQL: COPY from ``COPY_ROWS`` on, then pg_notify)."""
    from powersync_django.capture import PowerSyncQuerySet

    monkeypatch.setattr(outbox_write, "COPY_ROWS", 50)
    created = PowerSyncQuerySet(Todo).bulk_create([Todo(list=the_list, description=f"t{i}") for i in range(120)])
    assert entries() == [(str(t.pk), "S") for t in created]
    with pytest.raises(RuntimeError), transaction.atomic():
        PowerSyncQuerySet(Todo).bulk_create([Todo(list=the_list, description=f"x{i}") for i in range(60)])
        raise RuntimeError
    assert len(entries()) == 120


def test_the_replicator_is_woken_once_per_committed_transaction(the_list, wakeups):
    with transaction.atomic():
        for i in range(5):
            Todo.objects.create(list=the_list, description=f"t{i}")
        assert wakeups == []  # not before the commit
    assert wakeups == [1]
    wakeups.clear()
    Todo.objects.create(list=the_list, description="autocommit")
    assert wakeups == [1]
    wakeups.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        Todo.objects.create(list=the_list, description="rolled back")
        raise RuntimeError
    assert wakeups == []


def test_a_wake_up_registered_in_a_rolled_back_savepoint_does_not_cover_later_rows(the_list, wakeups):
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            Todo.objects.create(list=the_list, description="dropped")
            raise RuntimeError
        kept = Todo.objects.create(list=the_list, description="kept")
    assert wakeups == [1]
    assert entries() == [(str(kept.pk), "S")]
    wakeups.clear()
    with transaction.atomic():
        with transaction.atomic():
            Todo.objects.create(list=the_list, description="in a released savepoint")
        Todo.objects.create(list=the_list, description="after it")
    assert wakeups == [1]


@pytest.mark.postgres
def test_a_notification_is_delivered_for_each_committed_transaction_with_entries(the_list, monkeypatch):
    import psycopg

    from powersync_django.capture import PowerSyncQuerySet

    settings = connection.settings_dict
    listener = psycopg.connect(host=settings["HOST"] or None, port=settings["PORT"] or None,
                               user=settings["USER"], password=settings["PASSWORD"] or None,
                               dbname=settings["NAME"], autocommit=True)

    def heard() -> int:
        return sum(1 for _ in listener.notifies(timeout=0.3))

    try:
        listener.execute(f"LISTEN {outbox_write.OUTBOX_CHANNEL}")
        with transaction.atomic():
            for i in range(5):
                Todo.objects.create(list=the_list, description=f"t{i}")
        assert heard() == 1
        with pytest.raises(RuntimeError), transaction.atomic():
            Todo.objects.create(list=the_list, description="rolled back")
            raise RuntimeError
        assert heard() == 0
        with transaction.atomic():
            with pytest.raises(RuntimeError), transaction.atomic():
                Todo.objects.create(list=the_list, description="dropped")
                raise RuntimeError
            Todo.objects.create(list=the_list, description="kept")
        assert heard() == 1
        Todo.objects.create(list=the_list, description="autocommit")
        assert heard() == 1
        monkeypatch.setattr(outbox_write, "COPY_ROWS", 50)
        PowerSyncQuerySet(Todo).bulk_create([Todo(list=the_list, description=f"b{i}") for i in range(60)])
        assert heard() == 1
        with pytest.raises(RuntimeError), transaction.atomic():
            PowerSyncQuerySet(Todo).bulk_create([Todo(list=the_list, description=f"x{i}") for i in range(60)])
            raise RuntimeError
        assert heard() == 0
    finally:
        listener.close()
