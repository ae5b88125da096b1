"""Attacks on the fast replication path (bulk statements, snapshot rendering, caches)."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection
from storage_checks import check_storage

from demo_project.todos.models import Todo, TodoList
from powersync_django.models import BucketOp, DeadLetter, OutboxEntry
from powersync_django.replication import Replicator, replicate_now


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_transient_error_inside_copy_is_retried_not_dead_lettered():
    """A serialization failure (or disk full, statement timeout...) raised while COPY writes the ops is not
    caused by an entry: the batch fails and is retried later, nothing is dead-lettered (as with INSERT)."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    Todo.objects.create(list=lst, description="x")
    table = BucketOp._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("CREATE FUNCTION attack_fail() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'try again' USING ERRCODE = 'serialization_failure'; END $$")
        cursor.execute(f"CREATE TRIGGER attack_fail BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION attack_fail()")
    try:
        with pytest.raises(OperationalError):
            Replicator(owner="x").run_batch()
        assert not DeadLetter.objects.exists() and OutboxEntry.objects.count() == 2
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER attack_fail ON {table}")
            cursor.execute("DROP FUNCTION attack_fail()")
    replicate_now()
    assert not DeadLetter.objects.exists()
    check_storage()
