"""Attacks on the queued outbox write path (:mod:`powersync_django.outbox_write`).

Each test is a way a queued row could be lost, kept after a rollback, reordered, or miss its notification.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.db import DatabaseError, IntegrityError, connection, connections, transaction

from demo_project.todos.models import Todo, TodoList
from powersync_django import outbox_write
from powersync_django.models import OutboxEntry


def entries() -> list[tuple[str, str, str | None]]:
    return [(e.object_pk, e.op, e.snapshot) for e in OutboxEntry.objects.order_by("id")]


@pytest.fixture
def the_list(transactional_db) -> TodoList:
    lst = TodoList.objects.create(name="l", owner_id="u1")
    OutboxEntry.objects.all().delete()
    return lst


def test_a_failed_statement_in_a_savepoint_does_not_doom_the_outer_transaction(the_list):
    """The usual ``try: with atomic(): ... except IntegrityError`` inside a transaction: the savepoint is
    rolled back and the outer transaction goes on. Rows queued in the failed savepoint must be dropped, not
    written first (on PostgreSQL the transaction is aborted until ROLLBACK TO, so writing them fails and
    Django marks the whole outer transaction for rollback: its committed work would be lost)."""
    with transaction.atomic():
        kept = Todo.objects.create(list=the_list, description="kept")
        try:
            with transaction.atomic():
                Todo.objects.create(list=the_list, description="dropped")
                Todo.objects.create(id=kept.id, list=the_list, description="duplicate key")
        except IntegrityError:
            pass
        later = Todo.objects.create(list=the_list, description="after the failed savepoint")
    assert set(Todo.objects.values_list("description", flat=True)) == {"kept", "after the failed savepoint"}
    assert [(pk, op) for pk, op, _s in entries()] == [(str(kept.pk), "S"), (str(later.pk), "S")]


def test_a_failed_raw_statement_in_a_savepoint_does_not_doom_the_outer_transaction(the_list):
    with transaction.atomic():
        kept = Todo.objects.create(list=the_list, description="kept")
        with pytest.raises(DatabaseError), transaction.atomic():
            Todo.objects.create(list=the_list, description="dropped")
            with connection.cursor() as cursor:
                cursor.execute("SELECT * FROM no_such_table_powersync")
        kept.description = "kept, edited"
        kept.save()
    assert list(Todo.objects.values_list("description", flat=True)) == ["kept, edited"]
    assert [(pk, op) for pk, op, _s in entries()] == [(str(kept.pk), "S"), (str(kept.pk), "S")]
    assert '"kept, edited"' in entries()[-1][2]


def test_entries_of_a_manual_transaction_keep_their_order_across_an_atomic_block_without_savepoint(the_list):
    """``set_autocommit(False)`` + ``atomic(savepoint=False)``: the block queues its rows and does not commit;
    a later save of the same row outside it, still in the manual transaction, must not be written before them
    (the replicator would apply the older snapshot last)."""
    todo = Todo.objects.create(list=the_list, description="v0")
    OutboxEntry.objects.all().delete()
    transaction.set_autocommit(False)
    try:
        with transaction.atomic(savepoint=False):
            todo.description = "v1"
            todo.save()
        todo.description = "v2"
        todo.save()
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    snapshots = [s for _pk, _op, s in entries()]
    assert len(snapshots) == 2
    assert '"v1"' in snapshots[0] and '"v2"' in snapshots[1], snapshots


def test_a_backend_that_overrides_commit_still_writes_the_queue(the_list, monkeypatch):
    """A database backend subclass whose ``_commit`` commits the DB-API connection itself (without calling
    Django's): the queued rows must still be written before it, not left behind (and then written into the
    connection's next transaction, or lost)."""
    real = connections["default"]
    base = type(real)

    class OwnCommit(base):  # type: ignore[misc, valid-type]
        def _commit(self) -> None:
            if self.connection is not None:
                with self.wrap_database_errors:
                    self.connection.commit()

    monkeypatch.setattr(real, "__class__", OwnCommit)
    with transaction.atomic():
        todo = Todo.objects.create(list=the_list, description="committed by the backend's own _commit")
    monkeypatch.setattr(real, "__class__", base)
    with transaction.atomic():  # reads the outbox, then rolls back: must not take the committed entry with it
        OutboxEntry.objects.count()
        transaction.set_rollback(True)
    assert Todo.objects.filter(pk=todo.pk).exists()
    assert [(pk, op) for pk, op, _s in entries()] == [(str(todo.pk), "S")]


@pytest.mark.postgres
def test_a_failed_copy_at_commit_rolls_back_cleanly_with_a_django_error(the_list, monkeypatch):
    """The COPY path (>= COPY_ROWS rows) fails at commit (here: lock_timeout while the outbox table is locked
    by a migration): Django's commit must see a Django ``DatabaseError`` so it rolls the transaction back, and
    the connection must stay usable."""
    import psycopg

    from powersync_django.capture import PowerSyncQuerySet

    settings = connection.settings_dict
    locker = psycopg.connect(host=settings["HOST"] or None, port=settings["PORT"] or None,
                             user=settings["USER"], password=settings["PASSWORD"] or None,
                             dbname=settings["NAME"])
    monkeypatch.setattr(outbox_write, "COPY_ROWS", 5)
    try:
        locker.execute(f"LOCK TABLE {OutboxEntry._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            PowerSyncQuerySet(Todo).bulk_create([Todo(list=the_list, description=f"b{i}") for i in range(10)])
        locker.rollback()
    finally:
        locker.close()
    assert not connection.in_atomic_block and connection.get_autocommit()
    assert Todo.objects.count() == 0
    todo = Todo.objects.create(list=the_list, description="after")
    assert [(pk, op) for pk, op, _s in entries()] == [(str(todo.pk), "S")]


def test_writes_made_by_signal_receivers_and_commit_callbacks_are_captured(the_list):
    """A post_save receiver saving another tracked row (same transaction) and an ``on_commit`` callback that
    saves one (after the commit, a transaction of its own): all committed, all captured, in order."""
    from django.db.models.signals import post_save

    def touch_list(sender, instance, created, **kwargs) -> None:
        if created and instance.description.startswith("with receiver"):
            TodoList.objects.filter(pk=instance.list_id).first().save()

    post_save.connect(touch_list, sender=Todo)
    try:
        with transaction.atomic():
            todo = Todo.objects.create(list=the_list, description="with receiver")
            transaction.on_commit(lambda: Todo.objects.create(list=the_list, description="from on_commit"))
    finally:
        post_save.disconnect(touch_list, sender=Todo)
    later = Todo.objects.get(description="from on_commit")
    assert [(pk, op) for pk, op, _s in entries()] == [
        (str(todo.pk), "S"), (str(the_list.pk), "S"), (str(later.pk), "S")]


@pytest.mark.postgres
def test_a_savepoint_rolled_back_after_a_failed_statement_keeps_the_notification(the_list):
    import psycopg

    settings = connection.settings_dict
    listener = psycopg.connect(host=settings["HOST"] or None, port=settings["PORT"] or None,
                               user=settings["USER"], password=settings["PASSWORD"] or None,
                               dbname=settings["NAME"], autocommit=True)
    try:
        listener.execute(f"LISTEN {outbox_write.OUTBOX_CHANNEL}")
        with transaction.atomic():
            with pytest.raises(DatabaseError), transaction.atomic():
                Todo.objects.create(list=the_list, description="dropped")
                with connection.cursor() as cursor:
                    cursor.execute("SELECT * FROM no_such_table_powersync")
            Todo.objects.create(list=the_list, description="kept")
        assert sum(1 for _ in listener.notifies(timeout=0.5)) == 1
    finally:
        listener.close()
    assert [op for _pk, op, _s in entries()] == ["S"]


@pytest.mark.postgres
def test_concurrent_updates_of_one_row_get_entry_ids_in_commit_order(the_list):
    """replication.py's invariant: for one row, outbox id order is commit order. The first transaction holds
    the row while a second one waits for it; the second commits last and must have the larger id, although
    its rows are queued in memory until its commit."""
    import threading
    import time

    todo = Todo.objects.create(list=the_list, description="v0")
    OutboxEntry.objects.all().delete()
    second_started = threading.Event()

    def second() -> None:
        try:
            second_started.set()
            with transaction.atomic():
                row = Todo.objects.get(pk=todo.pk)
                row.description = "second"
                row.save()  # waits for the first transaction's lock
        finally:
            connections.close_all()

    with transaction.atomic():
        todo.description = "first"
        todo.save()
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(5)
        time.sleep(0.5)  # the second transaction is now blocked on the row
    thread.join(10)
    snapshots = [s for _pk, _op, s in entries()]
    assert Todo.objects.get(pk=todo.pk).description == "second"
    assert len(snapshots) == 2 and '"first"' in snapshots[0] and '"second"' in snapshots[1], snapshots


@pytest.mark.postgres  # Django's connection pool is PostgreSQL's; closing an in-memory SQLite test DB is a no-op
def test_rows_of_a_transaction_lost_with_its_pooled_connection_are_not_written_by_the_next(the_list, monkeypatch):
    """A connection closed inside ``atomic`` (``close_old_connections``, an unusable connection...) loses its
    transaction. With a connection pool (Django's PostgreSQL ``"pool"`` option) the same DB-API connection
    object comes back for the next transaction: the lost transaction's queued rows must not be written by it
    (an entry for a change that never committed)."""
    import types

    real = connections["default"]
    pool: list[Any] = []
    get_new_connection = real.get_new_connection

    def checkout(self, params):
        return pool.pop() if pool else get_new_connection(params)

    def putconn(self) -> None:  # like psycopg_pool's putconn: reset the connection, keep it
        self.connection.rollback()
        pool.append(self.connection)

    monkeypatch.setattr(real, "get_new_connection", types.MethodType(checkout, real))
    monkeypatch.setattr(real, "_close", types.MethodType(putconn, real))
    before = real.connection
    with transaction.atomic():
        Todo.objects.create(list=the_list, description="lost with the connection")
        real.close()
    kept = Todo.objects.create(list=the_list, description="next transaction")
    assert real.connection is before  # the pool gave the same connection back
    assert list(Todo.objects.values_list("description", flat=True)) == ["next transaction"]
    assert [(pk, op) for pk, op, _s in entries()] == [(str(kept.pk), "S")]
    for leftover in pool:
        leftover.close()


@pytest.fixture
def poisoned_outbox(transactional_db):
    """A trigger rejecting outbox rows whose snapshot mentions ``poison``: a write of queued rows that fails."""
    table = OutboxEntry._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("CREATE FUNCTION powersync_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                           "IF NEW.snapshot LIKE '%%poison%%' THEN RAISE EXCEPTION 'poison'; END IF; "
                           "RETURN NEW; END $$")
            cursor.execute(f"CREATE TRIGGER powersync_poison BEFORE INSERT ON {table} FOR EACH ROW "
                           "EXECUTE FUNCTION powersync_poison()")
        else:
            cursor.execute(f"CREATE TRIGGER powersync_poison BEFORE INSERT ON {table} "
                           "WHEN NEW.snapshot LIKE '%%poison%%' BEGIN SELECT RAISE(ABORT, 'poison'); END")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER powersync_poison{' ON ' + table if connection.vendor == 'postgresql' else ''}")
        if connection.vendor == "postgresql":
            cursor.execute("DROP FUNCTION powersync_poison()")


def test_a_failed_write_of_queued_rows_dooms_the_transaction(the_list, poisoned_outbox):
    """Queued rows are written before a savepoint; if that write fails and the caller swallows the error (the
    savepoint was never set, so nothing rolls back), the transaction must not commit the changes whose entries
    were lost (SQLite keeps a transaction going after a failed statement)."""
    with transaction.atomic():
        Todo.objects.create(list=the_list, description="poison")
        try:
            with transaction.atomic():
                Todo.objects.create(list=the_list, description="inner")
        except DatabaseError:
            pass
    committed = set(Todo.objects.values_list("description", flat=True))
    captured = {orjson.loads(s)["description"] for _pk, _op, s in entries()}
    assert committed == captured, (committed, captured)
