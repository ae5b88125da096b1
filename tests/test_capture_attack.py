"""Attacks on the queued outbox write path (:mod:`powersync_django.outbox_write`).

Each test is a way a queued row could be lost, kept after a rollback, reordered, or miss its notification.
"""

from __future__ import annotations

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from demo_project.todos.models import Todo, TodoList
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
