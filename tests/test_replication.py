"""Replication: outbox -> bucket ops, totals, memberships and checkpoints; exactly once; lease; rebuilds."""

from __future__ import annotations

import datetime
import time
import uuid

import orjson
import pytest
from django.db import OperationalError, transaction
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_checks import check_storage, expected_storage, reduced_storage  # noqa: F401  (used by other test modules)

from demo_project.todos.models import Todo, TodoList
from powersync_django import checksums, replication, storage
from powersync_django.capture import PowerSyncQuerySet, record_changed
from powersync_django.conf import get_config
from powersync_django.models import (
    BucketOp,
    BucketState,
    Checkpoint,
    DeadLetter,
    OutboxEntry,
    ReplicationState,
    RowBuckets,
    WriteCheckpoint,
)
from powersync_django.replication import LeaseLost, Replicator, replicate_now
from powersync_django.rules import get_rules


def ops_of(object_id: object) -> list[tuple[str, str]]:
    return list(BucketOp.objects.filter(object_id=str(object_id)).order_by("op_id").values_list("op", "bucket"))


def state() -> ReplicationState:
    return ReplicationState.objects.get(pk=1)


def lists_bucket(owner: str, version: int = 1) -> str:
    return f'{version}#lists["{owner}"]'


def todos_bucket(lst: TodoList, version: int = 1) -> str:
    return f'{version}#todos_by_list["{lst.pk}"]'


# --- basic replication ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_existing_rows_are_built_on_first_replication():
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todos = [Todo.objects.create(list=lst, description=f"t{i}") for i in range(3)]
    OutboxEntry.objects.all().delete()  # as if the rows predate the app: nothing captured
    Todo.objects.create(list=lst, description="captured")
    assert not ReplicationState.objects.exists()
    replicate_now()
    st_ = state()
    assert st_.rules_version == 1 and st_.rules_hash == get_rules().hash
    check_storage()
    assert set(reduced_storage()) == {lists_bucket("u1"), todos_bucket(lst)}
    assert len(reduced_storage()[todos_bucket(lst)]) == 4
    # One PUT per row: the pending entry was committed before the build read rows, so it is not replayed.
    assert BucketOp.objects.count() == 5
    assert ops_of(todos[0].pk) == [("PUT", todos_bucket(lst))]


@pytest.mark.django_db
def test_ops_checksums_and_counts_match_recomputation():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    t = Todo.objects.create(list=lst, description="milk")
    replicate_now()
    t.completed = True
    t.save()
    Todo.objects.create(list=lst, description="eggs").delete()
    replicate_now()
    check_storage()
    [bucket_state] = BucketState.objects.filter(bucket=todos_bucket(lst))
    # PUT milk, PUT milk (completed), PUT eggs, REMOVE eggs.
    assert bucket_state.count == 4
    ops = list(BucketOp.objects.filter(bucket=todos_bucket(lst)).order_by("op_id"))
    assert [o.op for o in ops] == ["PUT", "PUT", "PUT", "REMOVE"]
    assert orjson.loads(ops[1].data)["completed"] == 1 and ops[1].object_type == "todos"
    assert bucket_state.checksum == checksums.total(o.checksum for o in ops)
    # The read side reports exactly these totals at the current checkpoint.
    cp = storage.read_checkpoint([todos_bucket(lst)])
    got = cp.buckets[todos_bucket(lst)]
    assert (got.checksum, got.count, got.last_op_id) == (bucket_state.checksum, 4, ops[-1].op_id)


@pytest.mark.django_db
def test_op_ids_are_global_and_increasing():
    replicate_now()
    a = TodoList.objects.create(name="a", owner_id="u1")
    b = TodoList.objects.create(name="b", owner_id="u2")
    Todo.objects.create(list=a, description="x")
    Todo.objects.create(list=b, description="y")
    replicate_now()
    ids = list(BucketOp.objects.order_by("op_id").values_list("op_id", flat=True))
    assert ids == list(range(ids[0], ids[0] + 4))
    assert state().last_op_id == ids[-1]


@pytest.mark.django_db
def test_moving_a_todo_removes_it_from_the_old_bucket():
    replicate_now()
    a = TodoList.objects.create(name="a", owner_id="u1")
    b = TodoList.objects.create(name="b", owner_id="u1")
    t = Todo.objects.create(list=a, description="x")
    replicate_now()
    t.list = b
    t.save()
    replicate_now()
    assert ops_of(t.pk) == [("PUT", todos_bucket(a)), ("PUT", todos_bucket(b)), ("REMOVE", todos_bucket(a))]
    assert orjson.loads(RowBuckets.objects.get(source=f"todos.todo:{t.pk}").buckets) == [[todos_bucket(b), "todos", str(t.pk)]]
    check_storage()


@pytest.mark.django_db
def test_changing_a_list_owner_moves_the_list_bucket():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    Todo.objects.create(list=lst, description="x")
    replicate_now()
    lst.owner_id = "u2"
    lst.save()
    replicate_now()
    assert ops_of(lst.pk) == [("PUT", lists_bucket("u1")), ("PUT", lists_bucket("u2")), ("REMOVE", lists_bucket("u1"))]
    assert lists_bucket("u1") not in reduced_storage()
    # The todos' bucket is keyed by the list, not the owner: unchanged.
    assert BucketOp.objects.filter(bucket=todos_bucket(lst)).count() == 1
    check_storage()


@pytest.mark.django_db
def test_deletes_and_cascades_remove_rows():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todos = [Todo.objects.create(list=lst, description=f"t{i}") for i in range(2)]
    replicate_now()
    pks = [t.pk for t in todos]
    list_pk = lst.pk
    lst.delete()
    replicate_now()
    for pk in pks:
        assert ops_of(pk)[-1] == ("REMOVE", f'1#todos_by_list["{list_pk}"]')
    assert ops_of(list_pk)[-1] == ("REMOVE", lists_bucket("u1"))
    assert reduced_storage() == {} and not RowBuckets.objects.exists()
    check_storage()
    # A deletion of a row that never was in a bucket writes nothing.
    before = BucketOp.objects.count()
    record_changed(Todo, [uuid.uuid4()])
    replicate_now()
    assert BucketOp.objects.count() == before


@pytest.mark.django_db
def test_rows_outside_every_bucket_get_no_ops():
    buckets = {"open": {"data": [{"model": "todos.Todo", "table": "open", "filter": {"completed": False}}]}}
    with override_settings(POWERSYNC={**get_config(), "BUCKETS": buckets, "STREAMS": {}}):
        replicate_now()
        lst = TodoList.objects.create(name="a", owner_id="u1")  # not tracked by these definitions
        done = Todo.objects.create(list=lst, description="done", completed=True)
        t = Todo.objects.create(list=lst, description="open")
        replicate_now()
        assert ops_of(done.pk) == [] and ops_of(lst.pk) == []
        t.completed = True
        t.save()
        done.completed = False
        done.save()
        replicate_now()
        assert ops_of(t.pk) == [("PUT", "1#open[]"), ("REMOVE", "1#open[]")]
        assert ops_of(done.pk) == [("PUT", "1#open[]")]
        check_storage()


@pytest.mark.django_db
def test_bulk_helpers_replicate():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    objs = PowerSyncQuerySet(Todo).bulk_create([Todo(list=lst, description=f"b{i}") for i in range(5)])
    replicate_now()
    PowerSyncQuerySet(Todo).filter(description__in=["b0", "b1"]).update(completed=True)
    for o in objs[2:]:
        o.description += "!"
    PowerSyncQuerySet(Todo).bulk_update(objs[2:], ["description"])
    replicate_now()
    assert BucketOp.objects.filter(bucket=todos_bucket(lst)).count() == 10
    check_storage()


# --- checkpoints and write checkpoints -------------------------------------------------------------


@pytest.mark.django_db
def test_each_batch_commits_a_checkpoint_with_what_changed():
    replicate_now()
    first = Checkpoint.objects.latest("id")
    # The build's checkpoint says "any bucket may have changed".
    assert first.changed_buckets is None and "todos.todo" in orjson.loads(first.changed_models)
    lst = TodoList.objects.create(name="a", owner_id="u1")
    Todo.objects.create(list=lst, description="x")
    replicate_now()
    cp = Checkpoint.objects.latest("id")
    assert cp.id > first.id and cp.last_op_id == state().last_op_id
    assert sorted(orjson.loads(cp.changed_buckets)) == sorted([lists_bucket("u1"), todos_bucket(lst)])
    # Only rows read by parameter querysets are listed, with the values that say whose streams they concern:
    # the owner's, and those subscribed to this list (the list_todos stream filters on the list id).
    assert sorted(orjson.loads(cp.changed_models)) == [f"todos.todolist|id={lst.id}", "todos.todolist|owner_id=u1"]
    assert storage.latest_checkpoint_id() == cp.id
    # Nothing pending: no new checkpoint.
    replicate_now()
    assert Checkpoint.objects.latest("id").id == cp.id


@pytest.mark.django_db
def test_write_checkpoint_is_replicated_only_after_replication():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    assert storage.create_write_checkpoint("u1", "c1") == 1
    assert storage.create_write_checkpoint("u1", "c1") == 2
    key = storage.write_checkpoint_key("u1", "c1")
    wc = WriteCheckpoint.objects.get(key=key)
    assert (wc.issued, wc.replicated) == (2, 0)
    assert storage.replicated_write_checkpoint(key) == 0
    replicate_now()
    assert storage.replicated_write_checkpoint(key) == 2
    cp = Checkpoint.objects.latest("id")
    assert orjson.loads(cp.write_checkpoints) == [key]
    # The checkpoint that reports the write checkpoint contains the change made before it.
    assert BucketOp.objects.filter(object_id=str(lst.pk), op_id__lte=cp.last_op_id).exists()
    assert not OutboxEntry.objects.exists()


@pytest.mark.django_db
def test_write_checkpoint_never_goes_back():
    replicate_now()
    storage.create_write_checkpoint("u1", None)
    storage.create_write_checkpoint("u1", None)
    replicate_now()
    # A stale marker (lower counter) arriving later must not lower the reported value.
    key = storage.write_checkpoint_key("u1", None)
    OutboxEntry.objects.create(model="", object_pk=key, op=OutboxEntry.MARKER, snapshot="1")
    replicate_now()
    assert storage.replicated_write_checkpoint(key) == 2


# --- crash injection ---------------------------------------------------------------------------------


class Crash(OperationalError):
    """A failure that is not about the data (as a lost connection): the batch is retried as a whole."""


def crash_once(monkeypatch: pytest.MonkeyPatch, name: str, after: bool = False) -> list[bool]:
    """Make ``Replicator.<name>`` raise once (before or after doing its work)."""
    original = getattr(Replicator, name)
    fired: list[bool] = []

    def wrapper(self, *args, **kwargs):
        if fired:
            return original(self, *args, **kwargs)
        fired.append(True)
        if after:
            original(self, *args, **kwargs)
        raise Crash(name)

    monkeypatch.setattr(Replicator, name, wrapper)
    return fired


def snapshot_storage() -> tuple:
    return (
        list(BucketOp.objects.order_by("op_id").values_list("op_id", "bucket", "op", "object_id", "data")),
        list(BucketState.objects.order_by("bucket").values_list()),
        list(RowBuckets.objects.order_by("source").values_list()),
        list(OutboxEntry.objects.order_by("id").values_list("id")),
        list(Checkpoint.objects.order_by("id").values_list("id", "last_op_id")),
        list(ReplicationState.objects.values_list("last_op_id", "outbox_position", "rules_hash", "rules_version")),
        list(WriteCheckpoint.objects.values_list("key", "replicated")),
    )


def make_changes() -> tuple[TodoList, TodoList, list[Todo]]:
    a = TodoList.objects.create(name="a", owner_id="u1")
    b = TodoList.objects.create(name="b", owner_id="u2")
    todos = [Todo.objects.create(list=a, description=f"t{i}") for i in range(4)]
    return a, b, todos


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("point", "after"),
    [
        ("_write_ops", False),
        ("_write_ops", True),
        ("_write_memberships", False),
        ("_write_memberships", True),
        ("_apply_markers", False),
        ("_apply_markers", True),
        ("_checkpoint", True),
    ],
)
def test_crash_inside_a_batch_loses_and_duplicates_nothing(monkeypatch, point, after):
    replicate_now()
    a, b, todos = make_changes()
    replicate_now()
    # Changes of every kind: save, move, owner change, delete, write checkpoint.
    todos[0].completed = True
    todos[0].save()
    todos[1].list = b
    todos[1].save()
    a.owner_id = "u3"
    a.save()
    todos[2].delete()
    storage.create_write_checkpoint("u1", "c")
    before = snapshot_storage()
    fired = crash_once(monkeypatch, point, after)
    replicator = Replicator(owner="crashing")
    with pytest.raises(Crash):
        replicator.run_batch()
    assert fired
    assert snapshot_storage() == before
    # The same replicator (it still holds its lease) or a fresh one finishes the work exactly once.
    replicator.run_batch()
    replicator.release()
    check_storage()
    assert ops_of(todos[0].pk)[-2:] == [("PUT", todos_bucket(a)), ("PUT", todos_bucket(a))]
    assert ops_of(todos[1].pk) == [("PUT", todos_bucket(a)), ("PUT", todos_bucket(b)), ("REMOVE", todos_bucket(a))]
    assert ops_of(a.pk) == [("PUT", lists_bucket("u1")), ("PUT", lists_bucket("u3")), ("REMOVE", lists_bucket("u1"))]
    assert storage.replicated_write_checkpoint(storage.write_checkpoint_key("u1", "c")) == 1
    assert BucketOp.objects.count() == 6 + 6


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("point", "after"), [
    ("_start_build", True), ("_flush_rebuild", False), ("_flush_rebuild", True), ("_switch", True),
    ("_checkpoint", False), ("_cleanup_step", False), ("_apply_markers", False),
])
def test_crash_during_a_build_loses_nothing(monkeypatch, point, after):
    """A crash at any step of a (multi-transaction) build: the step rolls back, the build resumes from there."""
    monkeypatch.setattr(replication, "BUILD_ROWS", 2)
    monkeypatch.setattr(replication, "CLEANUP_ROWS", 2)
    replicate_now()
    make_changes()
    storage.create_write_checkpoint("u1", "c")
    replicate_now()
    Replicator(owner="x").request_rebuild()
    Replicator(owner="x").release()
    TodoList.objects.create(name="pending", owner_id="u1")
    storage.create_write_checkpoint("u1", "c")
    fired = crash_once(monkeypatch, point, after)
    replicator = Replicator(owner="x")
    with pytest.raises(Crash):
        for _ in range(100):
            before = snapshot_storage()
            replicator.run_batch()
    assert fired
    assert snapshot_storage() == before
    replicator.drain()
    replicator.release()
    check_storage()
    assert state().rules_version == 2 and state().building_version == 0
    assert storage.replicated_write_checkpoint(storage.write_checkpoint_key("u1", "c")) == 2


# --- lease ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_only_the_lease_holder_replicates():
    first, second = Replicator(owner="first"), Replicator(owner="second")
    assert first.try_acquire()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    assert not second.try_acquire()
    with pytest.raises(LeaseLost):
        second.run_batch()
    with pytest.raises(LeaseLost):
        second.request_rebuild()
    assert OutboxEntry.objects.count() == 1
    first.drain()  # build, then the entries
    assert not OutboxEntry.objects.exists() and ops_of(lst.pk)
    # The lease expires when the holder stops renewing it: the other one takes over.
    ReplicationState.objects.filter(pk=1).update(lease_expires=time.time() - 1)
    Todo.objects.create(list=lst, description="x")
    assert second.run_batch() == 1
    assert state().lease_owner == "second"
    with pytest.raises(LeaseLost):
        first.run_batch()
    # Releasing hands it over at once.
    second.release()
    assert first.try_acquire()
    first.release()
    check_storage()


@pytest.mark.django_db(transaction=True)
def test_lease_is_renewed_by_every_batch():
    r = Replicator(owner="r")
    r.run_batch()
    ReplicationState.objects.filter(pk=1).update(lease_expires=time.time() + 0.5)
    r.run_batch()
    assert state().lease_expires > time.time() + get_config()["LEASE_SECONDS"] - 5


# --- rebuilds ------------------------------------------------------------------------------------


OTHER_BUCKETS = {
    "lists_by_owner": {
        "parameters": {"owner_id": "token.sub"},
        "data": [{"model": "todos.TodoList", "table": "lists", "filter": {"owner_id": "bucket.owner_id"}}],
    },
    "open_todos": {"data": [{"model": "todos.Todo", "table": "todos", "filter": {"completed": False}}]},
}


@pytest.mark.django_db
def test_changed_definitions_rebuild_under_a_new_version():
    replicate_now()
    a, _b, todos = make_changes()
    todos[0].completed = True
    todos[0].save()
    replicate_now()
    assert state().rules_version == 1
    old_ops = BucketOp.objects.count()
    with override_settings(POWERSYNC={**get_config(), "BUCKETS": OTHER_BUCKETS, "STREAMS": {}}):
        Todo.objects.create(list=a, description="pending at the build")
        replicate_now()
        st_ = state()
        assert st_.rules_version == 2 and st_.last_op_id > old_ops
        assert set(reduced_storage()) == {'2#lists_by_owner["u1"]', '2#lists_by_owner["u2"]', "2#open_todos[]"}
        assert len(reduced_storage()["2#open_todos[]"]) == 4
        assert not BucketOp.objects.filter(bucket__startswith="1#").exists()
        assert not BucketState.objects.filter(bucket__startswith="1#").exists()
        check_storage()
        # Incremental replication goes on under the new version.
        todos[1].completed = True
        todos[1].save()
        replicate_now()
        assert ops_of(todos[1].pk)[-1] == ("REMOVE", "2#open_todos[]")
        check_storage()
    # Back to the old definitions: another version (clients drop the buckets they had and converge).
    replicate_now()
    assert state().rules_version == 3
    assert todos_bucket(a, 3) in reduced_storage()
    check_storage()


@pytest.mark.django_db
def test_datetime_format_change_rebuilds():
    replicate_now()
    TodoList.objects.create(name="a", owner_id="u1")
    replicate_now()
    with override_settings(POWERSYNC={**get_config(), "DATETIME_FORMAT": "iso"}):
        replicate_now()
        assert state().rules_version == 2
        [data] = reduced_storage()[lists_bucket("u1", 2)].values()
        assert "T" in orjson.loads(data)["created_at"]
        check_storage()


@pytest.mark.django_db
def test_requested_rebuild_reproduces_the_same_rows():
    replicate_now()
    a, b, todos = make_changes()
    todos[3].list = b
    todos[3].save()
    replicate_now()
    before = {bucket.split("#", 1)[1]: rows for bucket, rows in reduced_storage().items()}
    r = Replicator(owner="resync")
    r.request_rebuild()
    r.drain()
    r.release()
    assert state().rules_version == 2
    after = {bucket.split("#", 1)[1]: rows for bucket, rows in reduced_storage().items()}
    assert after == before
    assert BucketOp.objects.count() == 6  # one PUT per row and bucket
    check_storage()


@pytest.mark.django_db
def test_build_applies_pending_write_checkpoints():
    make_changes()
    storage.create_write_checkpoint("u1", "c")
    replicate_now()
    key = storage.write_checkpoint_key("u1", "c")
    assert storage.replicated_write_checkpoint(key) == 1
    assert orjson.loads(Checkpoint.objects.latest("id").write_checkpoints) == [key]


# --- batches -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_small_batches_give_the_same_result():
    replicate_now()
    a, b, todos = make_changes()
    for i, t in enumerate(todos):
        t.description = f"v{i}"
        t.list = b if i % 2 else a
        t.save()
    todos[0].delete()
    with override_settings(POWERSYNC={**get_config(), "REPLICATION_BATCH_SIZE": 3}):
        r = Replicator(owner="small")
        n = r.drain()
        r.release()
    assert n == 2 + 4 + 4 + 1
    assert Checkpoint.objects.count() >= 1 + 4
    check_storage()


@pytest.mark.django_db
def test_entries_of_models_no_longer_tracked_are_dropped():
    replicate_now()
    OutboxEntry.objects.create(model="auth.user", object_pk="1", op=OutboxEntry.SAVE, snapshot="{}")
    OutboxEntry.objects.create(model="todos.todo", object_pk=str(uuid.uuid4()), op=OutboxEntry.DELETE)
    assert replicate_now() == 2
    assert not OutboxEntry.objects.exists() and not BucketOp.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_rolled_back_writes_never_reach_buckets():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    with pytest.raises(Crash), transaction.atomic():
        Todo.objects.create(list=lst, description="rolled back")
        lst.owner_id = "u2"
        lst.save()
        raise Crash
    replicate_now()
    assert not BucketOp.objects.filter(data__contains="rolled back").exists()
    assert ops_of(lst.pk) == [("PUT", lists_bucket("u1"))]
    check_storage()


# --- property: any interleaving of writes, batches and crashes ---------------------------------------

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["new_list", "new_todo", "edit", "move", "owner", "delete_todo", "delete_list", "bulk",
                         "replicate", "crash"]),
        st.integers(0, 1000),
        st.integers(1, 4),
    ),
    max_size=25,
)


@pytest.mark.django_db
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_any_history_replicates_to_the_querysets(monkeypatch, actions):
    for model in (Todo, TodoList, BucketOp, BucketState, RowBuckets, Checkpoint, OutboxEntry, ReplicationState,
                  WriteCheckpoint):
        model.objects.all().delete()
    owners = ["u1", "u2", "u3"]
    for kind, n, size in actions:
        lists = list(TodoList.objects.order_by("pk"))
        todos = list(Todo.objects.order_by("pk"))
        if kind == "new_list" or (not lists and kind != "replicate"):
            TodoList.objects.create(name=f"l{n}", owner_id=owners[n % 3])
        elif kind == "new_todo":
            Todo.objects.create(list=lists[n % len(lists)], description=f"t{n}", completed=bool(n % 2))
        elif kind in ("edit", "move", "delete_todo") and todos:
            t = todos[n % len(todos)]
            if kind == "delete_todo":
                t.delete()
            else:
                t.description = f"e{n}"
                if kind == "move":
                    t.list = lists[n % len(lists)]
                t.save()
        elif kind == "owner":
            lst = lists[n % len(lists)]
            lst.owner_id = owners[(n + 1) % 3]
            lst.save()
        elif kind == "delete_list" and len(lists) > 1:
            lists[n % len(lists)].delete()
        elif kind == "bulk":
            PowerSyncQuerySet(Todo).filter(completed=bool(n % 2)).update(completed=not n % 2)
        elif kind == "replicate":
            with override_settings(POWERSYNC={**get_config(), "REPLICATION_BATCH_SIZE": size}):
                r = Replicator(owner="p")
                r.drain(max_batches=size)
                r.release()
        elif kind == "crash":
            with monkeypatch.context() as m:
                crash_once(m, ["_write_ops", "_write_memberships", "_apply_markers", "_checkpoint"][size - 1],
                           after=bool(n % 2))
                r = Replicator(owner="p")
                try:
                    r.drain()
                except Crash:
                    pass
                r.release()
    replicate_now()
    check_storage()


@pytest.mark.django_db
def test_a_batch_costs_a_bounded_number_of_queries(django_assert_max_num_queries):
    """1000 entries in one batch: bulk reads and writes, no per-entry queries (the outbox delete included)."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    PowerSyncQuerySet(Todo).bulk_create([Todo(list=lst, description=f"b{i}") for i in range(999)])
    with django_assert_max_num_queries(25):  # one of them: the dead letters of the batch's rows
        assert Replicator(owner="q").run_batch() == 1000
    r = Replicator(owner="q")
    r.request_rebuild()
    r.more = True
    while r.more:  # every step of a rebuild too
        with django_assert_max_num_queries(30):
            r.run_batch()
    check_storage()


# --- poison entries --------------------------------------------------------------------------------


def poison(todo: Todo, snapshot: str = "{not json") -> OutboxEntry:
    """The latest outbox entry of a todo, made impossible to replicate (a snapshot that cannot be decoded)."""
    entry = OutboxEntry.objects.filter(object_pk=str(todo.pk)).latest("id")
    entry.snapshot = snapshot
    entry.save()
    return entry


@pytest.mark.django_db
def test_a_poison_entry_is_dead_lettered_and_the_rest_replicates():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    replicate_now()
    todos = [Todo.objects.create(list=lst, description=f"t{i}") for i in range(10)]
    bad = poison(todos[4])
    todos[4].description = "later change of the poisoned row"
    todos[4].save()
    storage.create_write_checkpoint("u1", "c")
    replicate_now()
    assert not OutboxEntry.objects.exists()
    # Only the culprit and the later entry of its row; every other todo replicated (none overtook it).
    letters = list(DeadLetter.objects.order_by("id"))
    assert [(x.entry_id, x.reason) for x in letters] == [(bad.id, "error"), (letters[1].entry_id, "held")]
    assert letters[1].entry_id > bad.id and "later change" in letters[1].snapshot
    assert letters[0].object_pk == str(todos[4].pk) and letters[0].snapshot == "{not json"
    assert "JSONDecodeError" in letters[0].error and letters[0].model == "todos.todo"
    assert {t.pk for t in todos} - {t.pk for t in todos[4:5]} == {
        uuid.UUID(o) for o in BucketOp.objects.filter(bucket=todos_bucket(lst)).values_list("object_id", flat=True)}
    assert not ops_of(todos[4].pk)
    assert storage.replicated_write_checkpoint(storage.write_checkpoint_key("u1", "c")) == 1
    # Later changes of the row are held back too, until the dead letters are retried or dropped.
    todos[4].description = "third change"
    todos[4].save()
    replicate_now()
    assert DeadLetter.objects.count() == 3 and not ops_of(todos[4].pk)


@pytest.mark.django_db
@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_isolation_dead_letters_only_the_culprit(monkeypatch, size):
    """A failing batch is split until the entry that fails alone: innocent entries are never dead-lettered."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    replicate_now()
    todos = PowerSyncQuerySet(Todo).bulk_create([Todo(list=lst, description=f"t{i}") for i in range(size)])
    culprit = todos[size // 2]
    original = replication.decode_snapshot

    def decode(model, text):
        if orjson.loads(text)["id"] == str(culprit.pk):
            raise ValueError("undecodable")
        return original(model, text)

    monkeypatch.setattr(replication, "decode_snapshot", decode)
    replicate_now()
    assert list(DeadLetter.objects.values_list("object_pk", "reason", "error")) == [
        (str(culprit.pk), "error", "ValueError: undecodable")]
    assert BucketOp.objects.filter(bucket=todos_bucket(lst)).count() == size - 1
    # The cause fixed, a retry replicates the row; storage then equals the querysets.
    monkeypatch.setattr(replication, "decode_snapshot", original)
    from powersync_django import deadletters

    assert deadletters.retry() == 1
    replicate_now()
    assert not DeadLetter.objects.exists()
    check_storage()


@pytest.mark.django_db
def test_retry_requeues_a_rows_dead_letters_in_order_before_its_newer_entries(monkeypatch):
    from powersync_django import deadletters

    replicate_now()
    a = TodoList.objects.create(name="a", owner_id="u1")
    b = TodoList.objects.create(name="b", owner_id="u2")
    todo = Todo.objects.create(list=a, description="v1")
    poison(todo, snapshot=orjson.dumps({"id": str(todo.pk), "list_id": str(a.pk), "description": "v1",
                                        "completed": "not a boolean", "created_at": "bad date"}).decode())
    todo.list = b
    todo.description = "v2"
    todo.save()
    original = replication.decode_snapshot
    monkeypatch.setattr(replication, "decode_snapshot",
                        lambda m, t: (_ for _ in ()).throw(ValueError("bad")) if "bad date" in t else original(m, t))
    replicate_now()
    assert DeadLetter.objects.count() == 2
    todo.description = "v3"  # pending in the outbox when the retry happens
    todo.save()
    monkeypatch.setattr(replication, "decode_snapshot", original)
    ids = list(DeadLetter.objects.filter(reason="error").values_list("id", flat=True))
    with pytest.raises(Exception):  # noqa: B017  (the poisoned snapshot itself is still not decodable)
        dict(original(Todo, DeadLetter.objects.get(id=ids[0]).snapshot))  # every field decoded
    DeadLetter.objects.filter(id=ids[0]).update(snapshot=None, op=OutboxEntry.DELETE)  # "fixed" by hand
    assert deadletters.retry(ids) == 2  # the whole row: the failed entry and the one held behind it
    assert [e.snapshot is None for e in OutboxEntry.objects.order_by("id")] == [True, False, False]
    assert "v3" in OutboxEntry.objects.order_by("id").last().snapshot
    replicate_now()
    assert not DeadLetter.objects.exists()
    check_storage()
    assert orjson.loads(BucketOp.objects.filter(object_id=str(todo.pk)).latest("op_id").data)["description"] == "v3"


@pytest.mark.django_db
def test_dropped_dead_letters_release_the_row():
    from powersync_django import deadletters

    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="v1")
    poison(todo)
    todo.description = "v2"
    todo.save()
    replicate_now()
    assert DeadLetter.objects.count() == 2
    assert deadletters.drop([DeadLetter.objects.get(reason="held").id]) == 2  # per row
    todo.description = "v3"
    todo.save()
    replicate_now()
    check_storage()


@pytest.mark.django_db(transaction=True)
def test_connection_errors_are_retried_not_dead_lettered(monkeypatch):
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    Todo.objects.create(list=lst, description="x")
    crash_once(monkeypatch, "_write_ops")
    with pytest.raises(Crash):
        Replicator(owner="x").run_batch()
    assert not DeadLetter.objects.exists() and OutboxEntry.objects.count() == 2
    replicate_now()
    check_storage()


@pytest.mark.django_db(transaction=True)
def test_a_value_the_database_rejects_is_dead_lettered(vendor):
    """A value the database rejects (PostgreSQL: numeric out of range, a DataError) only stops its entry."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    good = Todo.objects.create(list=lst, description="fine")
    # The database rejects what the replicator writes: a checksum outside BIGINT (Python-side it is fine).
    original = checksums.put_checksum

    def checksum(table, object_id, data):
        return 2**70 if "poison" in data else original(table, object_id, data)

    bad = Todo.objects.create(list=lst, description="poison")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checksums, "put_checksum", checksum)
        replicate_now()
    [letter] = DeadLetter.objects.all()
    assert letter.object_pk == str(bad.pk) and letter.reason == "error"
    assert ops_of(good.pk) and not ops_of(bad.pk)


# --- PostgreSQL LISTEN ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_outbox_listener_reconnects_after_its_backend_is_terminated():
    import threading

    from django.db import connection

    from powersync_django.replication import _OutboxListener

    listener = _OutboxListener("default")
    wake = threading.Event()
    try:
        old_pid = listener.conn.info.backend_pid
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [old_pid])
        # The next wait notices, reconnects and returns at once (notifications may have been missed).
        assert listener.wait(wake, 30) == "reconnected"
        assert listener.conn.info.backend_pid != old_pid
        # A change committed now wakes the listener through the new connection.
        TodoList.objects.create(name="after reconnect", owner_id="u1")
        assert listener.wait(wake, 30) == "notified"
    finally:
        listener.close()


# --- bounded rebuilds ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_rebuild_runs_in_bounded_steps_while_the_live_version_serves_and_writes_go_on(monkeypatch):
    """Each step is its own short transaction; clients keep the old version until the switch; writes made
    between steps (saves, moves, deletes, creations) end up in the new version; old data is removed after."""
    monkeypatch.setattr(replication, "BUILD_ROWS", 3)
    monkeypatch.setattr(replication, "CLEANUP_ROWS", 4)
    replicate_now()
    lists = [TodoList.objects.create(name=f"l{i}", owner_id=f"u{i}") for i in range(4)]
    todos = [Todo.objects.create(list=lists[i % 4], description=f"t{i}") for i in range(20)]
    replicate_now()
    old_bucket = todos_bucket(lists[0], 1)
    old_state = storage.read_checkpoint([old_bucket])
    r = Replicator(owner="builder")
    r.request_rebuild()
    steps = 0
    while state().building_version or steps == 0:
        r.run_batch()
        steps += 1
        if state().building_version:
            # Still serving version 1, unchanged, while version 2 is built.
            assert storage.read_checkpoint([old_bucket]) == old_state
            i = steps % 20
            todos[i].description = f"changed during step {steps}"
            todos[i].list = lists[(i + 1) % 4]
            todos[i].save()
            if steps == 3:
                todos[19].delete()
                lists[3].owner_id = "moved"
                lists[3].save()
            if steps == 5:
                Todo.objects.create(list=lists[2], description="created during the build")
    assert steps >= 10  # lists in 2 transactions, todos in 7 (3 rows each), then the replay and switch
    assert state().rules_version == 2
    r.drain()  # the rest of the outbox, then cleanup of version 1 in batches
    r.release()
    assert not BucketOp.objects.filter(bucket__startswith="1#").exists()
    assert not RowBuckets.objects.exclude(version=2).exists()
    check_storage()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("give_up", [False, True])
def test_a_build_waits_for_transactions_older_than_its_start(monkeypatch, give_up):
    """PostgreSQL: an entry whose id is below the build's start may commit later. Rows are read only once
    every older transaction ended (then early entries are not replayed), or after SUBSUME_WAIT (then all are)."""
    import threading

    from django.db import connections

    if give_up:
        monkeypatch.setattr(replication, "SUBSUME_WAIT", 0.0)
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="before")
    replicate_now()
    written, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                Todo.objects.filter(pk=todo.pk).update(description="committed late")
                record_changed(Todo, [todo.pk])
                written.set()
                release.wait(30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert written.wait(30)
    other = Todo.objects.create(list=lst, description="committed first, larger id")
    r = Replicator(owner="b")
    r.request_rebuild()
    r.run_batch()  # starts the build
    r.run_batch()
    assert state().build_rows_done == (3 if give_up else 0)
    release.set()
    thread.join(30)
    r.drain()
    r.release()
    check_storage()
    assert '"committed late"' in BucketOp.objects.filter(object_id=str(todo.pk)).latest("op_id").data
    assert ops_of(other.pk)


@pytest.mark.django_db
def test_a_row_the_build_cannot_render_is_dead_lettered_and_retried_from_the_table(monkeypatch):
    from powersync_django import deadletters
    from powersync_django.rules import Rules

    lst = TodoList.objects.create(name="a", owner_id="u1")
    todos = [Todo.objects.create(list=lst, description=f"t{i}") for i in range(3)]
    original = Rules.row_buckets

    def row_buckets(self, label, row, version):
        if row and row.get("id") == todos[1].pk:
            raise ValueError("cannot render")
        return original(self, label, row, version)

    monkeypatch.setattr(Rules, "row_buckets", row_buckets)
    replicate_now()  # the first build
    [letter] = DeadLetter.objects.all()
    assert (letter.entry_id, letter.object_pk, letter.snapshot, letter.error) == (
        0, str(todos[1].pk), None, "ValueError: cannot render")
    assert state().rules_version == 1 and len(reduced_storage()[todos_bucket(lst)]) == 2
    monkeypatch.setattr(Rules, "row_buckets", original)
    todos[1].description = "fixed"
    todos[1].save()  # held behind the dead letter
    replicate_now()
    assert DeadLetter.objects.count() == 2
    assert deadletters.retry() == 2
    replicate_now()
    check_storage()
    assert '"fixed"' in BucketOp.objects.filter(object_id=str(todos[1].pk)).latest("op_id").data


@pytest.mark.django_db
def test_a_locked_database_means_the_lease_is_not_taken_yet(monkeypatch):
    """SQLite busy / PostgreSQL lock errors while taking the lease: not taken, the caller tries again later."""

    def locked(self):
        raise OperationalError("database table is locked")

    monkeypatch.setattr(Replicator, "_state_for_update", locked)
    assert Replicator(owner="x").try_acquire() is False


@pytest.mark.django_db
def test_snapshot_values_are_rendered_or_rejected_like_the_fields_do():
    """Rendering from snapshot values (encoding.client_converter): an invalid value of a synced column still
    makes the entry a dead letter; a valid value in another form than capture writes renders canonically."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    replicate_now()
    bad, odd = Todo.objects.create(list=lst, description="bad"), Todo.objects.create(list=lst, description="odd")
    raw = orjson.loads(OutboxEntry.objects.filter(object_pk=str(bad.pk)).latest("id").snapshot)
    poison(bad, snapshot=orjson.dumps({**raw, "completed": "not a boolean"}).decode())
    raw = orjson.loads(OutboxEntry.objects.filter(object_pk=str(odd.pk)).latest("id").snapshot)
    poison(odd, snapshot=orjson.dumps({**raw, "id": str(odd.pk).upper(), "list_id": lst.pk.hex,
                                       "created_at": odd.created_at.astimezone(datetime.timezone(
                                           datetime.timedelta(hours=2))).isoformat()}).decode())
    replicate_now()
    assert list(DeadLetter.objects.values_list("object_pk", flat=True)) == [str(bad.pk)]
    assert "not a boolean" in DeadLetter.objects.get().error
    [(data,)] = BucketOp.objects.filter(object_id=str(odd.pk)).values_list("data")
    odd.refresh_from_db()
    assert orjson.loads(data) == orjson.loads(get_rules().by_model["todos.todo"][0].render(
        {f.attname: getattr(odd, f.attname) for f in Todo._meta.concrete_fields})[1])
