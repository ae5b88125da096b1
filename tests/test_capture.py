"""Capture: every committed change of a tracked model has its outbox entry, a rolled-back one has none."""

from __future__ import annotations

import uuid

import orjson
import pytest
from django.contrib.auth.models import User
from django.db import connection, models, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.test import override_settings
from django.test.utils import isolate_apps

from demo_project.todos.models import Todo, TodoList
from powersync_django import capture
from powersync_django.capture import PowerSyncQuerySet, record_changed
from powersync_django.conf import get_config
from powersync_django.models import Checkpoint, OutboxEntry


def entries(model: str | None = None) -> list[tuple[str, str, str]]:
    qs = OutboxEntry.objects.order_by("id")
    if model:
        qs = qs.filter(model=model)
    return [(e.model, e.object_pk, e.op) for e in qs]


def snap(obj: models.Model) -> dict:
    """The snapshot of the newest entry of a row."""
    e = OutboxEntry.objects.filter(object_pk=str(obj.pk), op=OutboxEntry.SAVE).latest("id")
    return orjson.loads(e.snapshot)


def db_row(obj: models.Model) -> dict:
    """The row as the database holds it, encoded like a snapshot."""
    fresh = type(obj)._base_manager.get(pk=obj.pk)
    return orjson.loads(capture.snapshot(fresh))


@pytest.fixture
def todo_list(db) -> TodoList:
    lst = TodoList.objects.create(name="groceries", owner_id="u1")
    OutboxEntry.objects.all().delete()
    return lst


# --- transactions ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_committed_save_has_its_entry():
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="milk")
    assert entries() == [("todos.todolist", str(lst.pk), "S"), ("todos.todo", str(todo.pk), "S")]
    data = snap(todo)
    assert data["description"] == "milk" and data["list_id"] == str(lst.pk) and data["completed"] is False
    assert data == db_row(todo)


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_leaves_no_entry():
    with pytest.raises(RuntimeError), transaction.atomic():
        lst = TodoList.objects.create(name="a", owner_id="u1")
        Todo.objects.create(list=lst, description="milk")
        assert len(entries()) == 2
        raise RuntimeError("abort")
    assert entries() == [] and not TodoList.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_rolled_back_savepoint_drops_only_its_entries():
    with transaction.atomic():
        keep = TodoList.objects.create(name="keep", owner_id="u1")
        with pytest.raises(RuntimeError), transaction.atomic():
            TodoList.objects.create(name="drop", owner_id="u1")
            raise RuntimeError
    assert entries() == [("todos.todolist", str(keep.pk), "S")]


@pytest.mark.django_db(transaction=True)
def test_autocommit_save_is_atomic_with_its_entry(monkeypatch):
    """A save outside a transaction is wrapped in one: if the entry cannot be written, the row is not saved."""
    assert connection.get_autocommit()

    def broken(*args, **kwargs):
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(capture, "write_entries", broken)
    with pytest.raises(RuntimeError):
        TodoList.objects.create(name="lost?", owner_id="u1")
    assert not TodoList.objects.exists()
    lst = TodoList(name="x", owner_id="u1")
    with pytest.raises(RuntimeError):
        lst.save()
    assert not TodoList.objects.exists()
    monkeypatch.undo()
    lst.save()
    assert entries() == [("todos.todolist", str(lst.pk), "S")]
    # Untracked models are not wrapped (no extra transaction for the rest of the project).
    assert not getattr(User.save_base, "_powersync_atomic", False)
    assert getattr(Todo.save_base, "_powersync_atomic", False)


# --- deletions -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_delete_and_cascade_are_captured():
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todos = [Todo.objects.create(list=lst, description=f"t{i}") for i in range(3)]
    OutboxEntry.objects.all().delete()
    first = str(todos[0].pk)
    todos[0].delete()
    assert entries() == [("todos.todo", first, "D")]
    list_pk, rest = str(lst.pk), [str(t.pk) for t in todos[1:]]
    lst.delete()
    got = entries()[1:]
    assert sorted(got) == sorted([("todos.todo", pk, "D") for pk in rest] + [("todos.todolist", list_pk, "D")])
    # Children are deleted (and captured) before the list.
    assert got[-1] == ("todos.todolist", list_pk, "D")


@pytest.mark.django_db
def test_deletes_of_rows_deciding_access_keep_their_values():
    """TodoList rows decide access (list_todos' parameter queryset): their deletes say whose access changed."""
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="x")
    OutboxEntry.objects.all().delete()
    lst.delete()
    by_model = {e.model: e for e in OutboxEntry.objects.all()}
    assert orjson.loads(by_model["todos.todolist"].snapshot)["owner_id"] == "u1"
    assert by_model["todos.todo"].snapshot is None  # only synced: nothing to keep
    assert by_model["todos.todo"].object_pk == str(todo.pk)


@pytest.mark.django_db
def test_queryset_delete_is_captured(todo_list):
    a = Todo.objects.create(list=todo_list, description="a")
    b = Todo.objects.create(list=todo_list, description="b")
    OutboxEntry.objects.all().delete()
    Todo.objects.filter(list=todo_list).delete()
    assert sorted(entries()) == sorted([("todos.todo", str(a.pk), "D"), ("todos.todo", str(b.pk), "D")])


# --- what the snapshot holds -----------------------------------------------------------------------


@pytest.mark.django_db
def test_expression_save_records_the_database_value(todo_list):
    todo = Todo.objects.create(list=todo_list, description="milk")
    todo.description = Concat(F("description"), Value(" and eggs"))
    todo.save()
    assert snap(todo)["description"] == "milk and eggs"
    assert snap(todo) == db_row(todo)


@pytest.mark.django_db
def test_update_fields_save_records_the_database_row(todo_list):
    """Fields changed in memory but not saved must not leak into the snapshot."""
    todo = Todo.objects.create(list=todo_list, description="milk")
    todo.description = "in memory only"
    todo.completed = True
    todo.save(update_fields=["completed"])
    data = snap(todo)
    assert data["completed"] is True and data["description"] == "milk"
    assert data == db_row(todo)


@pytest.mark.django_db
def test_deferred_fields_save_records_the_database_row(todo_list):
    todo = Todo.objects.create(list=todo_list, description="milk")
    Todo.objects.filter(pk=todo.pk).update(description="changed elsewhere")
    partial = Todo.objects.only("id", "completed").get(pk=todo.pk)
    partial.completed = True
    partial.save()
    data = snap(todo)
    assert data["completed"] is True and data["description"] == "changed elsewhere"
    assert data == db_row(todo)


@pytest.mark.django_db
def test_proxy_model_writes_are_captured_as_the_concrete_model(todo_list):
    with isolate_apps("demo_project.todos"):

        class TodoProxy(Todo):
            class Meta:
                proxy = True
                app_label = "todos"

        todo = TodoProxy.objects.create(list=todo_list, description="via proxy")
        todo.description = "edited"
        todo.save()
        pk = todo.pk
        todo.delete()
        assert entries() == [("todos.todo", str(pk), "S"), ("todos.todo", str(pk), "S"), ("todos.todo", str(pk), "D")]
        other = Todo.objects.create(list=todo_list, description="raw")
        OutboxEntry.objects.all().delete()
        assert record_changed(TodoProxy, [other.pk]) == 1
        assert entries() == [("todos.todo", str(other.pk), "S")]


# --- bulk operations -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_powersync_queryset_update(todo_list):
    todos = [Todo.objects.create(list=todo_list, description=f"t{i}") for i in range(3)]
    other = Todo.objects.create(list=todo_list, description="other", completed=True)
    OutboxEntry.objects.all().delete()
    n = PowerSyncQuerySet(Todo).filter(completed=False).update(completed=True, description=Concat(F("description"), Value("!")))
    assert n == 3
    assert sorted(entries()) == sorted(("todos.todo", str(t.pk), "S") for t in todos)
    for t in todos:
        assert snap(t) == db_row(t) and snap(t)["description"].endswith("!")
    assert not OutboxEntry.objects.filter(object_pk=str(other.pk)).exists()
    # Plain QuerySet.update() is not captured: that is what the helper is for.
    Todo.objects.update(completed=False)
    assert len(entries()) == 3


@pytest.mark.django_db
def test_powersync_queryset_update_across_relations_and_distinct(todo_list):
    other = TodoList.objects.create(name="b", owner_id="u2")
    mine = [Todo.objects.create(list=todo_list, description=f"t{i}") for i in range(2)]
    Todo.objects.create(list=other, description="not mine")
    OutboxEntry.objects.all().delete()
    n = PowerSyncQuerySet(Todo).filter(list__owner_id="u1").distinct().update(completed=True)
    assert n == 2
    assert sorted(entries()) == sorted(("todos.todo", str(t.pk), "S") for t in mine)
    # Filtering lists through their todos joins one row per todo: each list is still recorded once.
    OutboxEntry.objects.all().delete()
    assert PowerSyncQuerySet(TodoList).filter(todos__completed=True).update(name="busy") == 1
    assert entries() == [("todos.todolist", str(todo_list.pk), "S")]


@pytest.mark.django_db
def test_powersync_queryset_update_as_manager(todo_list):
    manager = PowerSyncQuerySet.as_manager()
    manager.model = Todo
    t = Todo.objects.create(list=todo_list, description="x")
    OutboxEntry.objects.all().delete()
    assert manager.filter(pk=t.pk).update(completed=True) == 1
    assert entries() == [("todos.todo", str(t.pk), "S")] and snap(t)["completed"] is True


@pytest.mark.django_db
def test_powersync_queryset_bulk_create(todo_list):
    objs = [Todo(list=todo_list, description=f"bulk {i}") for i in range(5)]
    created = PowerSyncQuerySet(Todo).bulk_create(objs, batch_size=2)
    assert len(created) == 5
    assert sorted(entries()) == sorted(("todos.todo", str(o.pk), "S") for o in objs)
    assert all(snap(o) == db_row(o) for o in objs)
    lists = PowerSyncQuerySet(TodoList).bulk_create([TodoList(name=f"l{i}", owner_id="u2") for i in range(2)])
    assert len(entries("todos.todolist")) == 2 and all(snap(lst)["owner_id"] == "u2" for lst in lists)


@pytest.mark.django_db
def test_powersync_queryset_bulk_update(todo_list):
    objs = [Todo.objects.create(list=todo_list, description=f"t{i}") for i in range(4)]
    OutboxEntry.objects.all().delete()
    for o in objs:
        o.completed = True
    assert PowerSyncQuerySet(Todo).bulk_update(objs, ["completed"], batch_size=3) == 4
    assert sorted(entries()) == sorted(("todos.todo", str(o.pk), "S") for o in objs)
    assert all(snap(o)["completed"] is True for o in objs)


@pytest.mark.django_db(transaction=True)
def test_bulk_operations_roll_back_with_their_entries(todo_list):
    with pytest.raises(RuntimeError), transaction.atomic():
        PowerSyncQuerySet(Todo).bulk_create([Todo(list=todo_list, description="x")])
        PowerSyncQuerySet(TodoList).filter(pk=todo_list.pk).update(name="renamed")
        raise RuntimeError
    assert entries() == [] and not Todo.objects.exists()


@pytest.mark.django_db
def test_record_changed_after_raw_sql(todo_list):
    keep = Todo.objects.create(list=todo_list, description="keep")
    gone = Todo.objects.create(list=todo_list, description="gone")
    OutboxEntry.objects.all().delete()
    table = Todo._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET description = %s WHERE id = %s", ["raw", keep.pk.hex if connection.vendor == "sqlite" else keep.pk])
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [gone.pk.hex if connection.vendor == "sqlite" else gone.pk])
        n = record_changed(Todo, [keep.pk, str(gone.pk), keep.pk])
    assert n == 2
    assert entries() == [("todos.todo", str(keep.pk), "S"), ("todos.todo", str(gone.pk), "D")]
    assert snap(keep)["description"] == "raw" and snap(keep) == db_row(keep)
    assert record_changed(Todo, []) == 0


# --- what is not tracked ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_untracked_models_produce_nothing():
    User.objects.create(username="someone")
    User.objects.all().delete()
    assert record_changed(User, [1, 2]) == 0
    assert entries() == []


@pytest.mark.django_db
def test_models_leave_tracking_with_the_definitions():
    buckets = {"lists": {"data": [{"model": "todos.TodoList", "table": "lists"}]}}
    with override_settings(POWERSYNC={**get_config(), "BUCKETS": buckets, "STREAMS": {}}):
        lst = TodoList.objects.create(name="a", owner_id="u1")
        todo = Todo.objects.create(list=lst, description="untracked now")
        todo.delete()
        assert record_changed(Todo, [uuid.uuid4()]) == 0
        assert entries() == [("todos.todolist", str(lst.pk), "S")]


# --- concurrent writers (PostgreSQL) ---------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_bulk_update_racing_a_writer_records_what_it_changed(monkeypatch):
    """A row that starts to match the filter while ``update()`` runs must not be updated unrecorded.

    A concurrent transaction commits between the statements of ``update()``: READ COMMITTED gives every
    statement a new snapshot, so an UPDATE by the original filter would change that row too.
    """
    import threading

    from django.db import connections

    lst = TodoList.objects.create(name="a", owner_id="u1")
    matching = Todo.objects.create(list=lst, description="x", completed=False)
    late = Todo.objects.create(list=lst, description="y", completed=True)
    original = models.QuerySet.update
    fired: list[bool] = []

    def concurrent_writer() -> None:
        try:
            obj = Todo.objects.get(pk=late.pk)
            obj.completed = False
            obj.save()
        finally:
            connections.close_all()

    def racing_update(self: models.QuerySet, **kwargs):
        if self.model is Todo and not fired:
            fired.append(True)
            t = threading.Thread(target=concurrent_writer)
            t.start()
            t.join(10)
        return original(self, **kwargs)

    monkeypatch.setattr(models.QuerySet, "update", racing_update)
    PowerSyncQuerySet(Todo).filter(completed=False).update(description="bulk")
    assert fired
    for row in (matching, late):
        last = OutboxEntry.objects.filter(object_pk=str(row.pk)).latest("id")
        assert orjson.loads(last.snapshot) == db_row(row)
    assert Todo.objects.get(pk=matching.pk).description == "bulk"


@pytest.mark.django_db
def test_deletes_of_untracked_models_stay_fast(django_assert_num_queries):
    """Capture must not turn every QuerySet.delete() of the project into a row-by-row delete."""
    for i in range(50):
        OutboxEntry.objects.create(model="x", object_pk=str(i), op=OutboxEntry.DELETE)
    with django_assert_num_queries(1):
        OutboxEntry.objects.filter(model="x").delete()
    with django_assert_num_queries(1):
        Checkpoint.objects.filter(last_op_id__gt=0).delete()
