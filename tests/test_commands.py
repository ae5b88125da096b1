"""Management commands (status, resync, replicate, demo_seed) and the read-only admin."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connections
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from test_replication import check_storage, reduced_storage

from demo_project.todos.models import Todo, TodoList
from demo_project.todos.seed import seed
from powersync_django import storage
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
from powersync_django.replication import Replicator, replicate_now
from powersync_django.status import get_status


def run(*args: str, **kwargs) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


# --- powersync_status ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_before_anything_was_built():
    text = run("powersync_status")
    assert "Outbox pending:        0 entries" in text
    assert "not built yet" in text and "Last checkpoint:       0 at op 0" in text


@pytest.mark.django_db
def test_status_reports_pending_entries_checkpoint_and_storage():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    Todo.objects.create(list=lst, description="x")
    storage.create_write_checkpoint("u1", "c")
    OutboxEntry.objects.update(created_at=timezone.now() - timedelta(seconds=30))
    s = get_status()
    assert s.pending_entries == 3 and 29 < s.lag < 60 and s.write_checkpoints_pending == 1
    text = run("powersync_status")
    assert "Outbox pending:        3 entries (oldest 3" in text and "Replication lag:       3" in text
    with pytest.raises(CommandError, match="lag"):
        run("powersync_status", "--max-lag", "10")
    replicate_now()
    data = json.loads(run("powersync_status", "--json", "--max-lag", "10"))
    cp = Checkpoint.objects.latest("id")
    assert data["pending_entries"] == 0 and data["lag"] == 0
    assert data["last_checkpoint_id"] == cp.id and data["last_op_id"] == cp.last_op_id == 2
    assert data["buckets"] == 2 and data["ops"] == 2 and data["rows"] == 2
    assert data["rules_version"] == 1 and data["rules_current"] is True
    assert data["write_checkpoints_pending"] == 0
    assert 0 <= data["last_checkpoint_age"] < 60
    text = run("powersync_status")
    assert f"Last checkpoint:       {cp.id} at op 2" in text and "Buckets:               2" in text
    with override_settings(POWERSYNC={**get_config(), "DATETIME_FORMAT": "iso"}):
        assert "definitions changed" in run("powersync_status")


@pytest.mark.django_db(transaction=True)
def test_status_shows_the_active_replicator():
    r = Replicator(owner="worker-1")
    assert r.try_acquire()
    assert "Active replicator:     worker-1 (lease expires in" in run("powersync_status")
    r.release()
    assert "Active replicator:     none" in run("powersync_status")


@pytest.mark.django_db
def test_status_reports_dead_letters_and_a_build_in_progress():
    replicate_now()
    assert get_status().dead_letters == 0 and "Dead letters:          0" in run("powersync_status")
    make_dead_letter()
    data = json.loads(run("powersync_status", "--json"))
    assert data["dead_letters"] == 1 and data["last_dead_letter_at"]
    assert "Dead letters:          1 (last at" in run("powersync_status")
    TodoList.objects.create(name="a", owner_id="u1")
    r = Replicator(owner="r")
    r.request_rebuild()
    # The first step that reads rows (on PostgreSQL, steps before it wait for transactions older than the
    # build, of any database of the server: other test runs' too).
    deadline = time.monotonic() + 30
    while not ReplicationState.objects.get(pk=1).build_rows_done and time.monotonic() < deadline:
        r.run_batch()
    r.release()
    data = json.loads(run("powersync_status", "--json"))
    # Models are built in the order the definitions name them: the todo (todos_by_list), then the two lists.
    assert data["building_version"] == 2 and (data["build_rows_done"], data["build_rows_total"]) == (1, 3)
    assert "building version 2: 1 of ~3 rows read" in run("powersync_status")


def make_dead_letter() -> DeadLetter:
    """A todo whose outbox entry cannot be decoded, replicated: it becomes a dead letter."""
    replicate_now()  # storage built (a first build reads the rows and drops the entries it covers)
    lst = TodoList.objects.create(name="dl", owner_id="u9")
    todo = Todo.objects.create(list=lst, description="x")
    OutboxEntry.objects.filter(object_pk=str(todo.pk)).update(snapshot="{broken")
    replicate_now()
    return DeadLetter.objects.get(object_pk=str(todo.pk))


# --- powersync_deadletters -------------------------------------------------------------------------


@pytest.mark.django_db
def test_deadletters_command_lists_retries_and_drops():
    assert "No dead letters." in run("powersync_deadletters")
    letter = make_dead_letter()
    text = run("powersync_deadletters")
    assert f"{letter.id:>6}" in text and "error S todos.todo:" in text and "JSONDecodeError" in text
    [line] = run("powersync_deadletters", "list", "--json").splitlines()
    assert json.loads(line)["snapshot"] == "{broken" and json.loads(line)["entry_id"] == letter.entry_id
    with pytest.raises(CommandError, match="ids or --all"):
        run("powersync_deadletters", "retry")
    # Retried while still broken: back in the outbox, fails again, dead letter again.
    assert "Re-queued 1 dead letters" in run("powersync_deadletters", "retry", str(letter.id))
    assert OutboxEntry.objects.filter(snapshot="{broken").exists() and not DeadLetter.objects.exists()
    replicate_now()
    assert DeadLetter.objects.count() == 1
    assert "Dropped 1 dead letters" in run("powersync_deadletters", "drop", "--all")
    assert not DeadLetter.objects.exists() and not OutboxEntry.objects.exists()


@pytest.mark.django_db
def test_admin_retries_and_drops_dead_letters(admin_client):
    letter = make_dead_letter()
    url = reverse("admin:powersync_django_deadletter_changelist")
    page = admin_client.get(url)
    assert b"JSONDecodeError" in page.content and b"Retry the selected" in page.content
    admin_client.post(url, {"action": "retry", "_selected_action": [letter.id]})
    assert not DeadLetter.objects.exists() and OutboxEntry.objects.filter(snapshot="{broken").exists()
    replicate_now()
    letter = DeadLetter.objects.get()
    admin_client.post(url, {"action": "drop", "_selected_action": [letter.id]})
    assert not DeadLetter.objects.exists()


# --- powersync_resync ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_resync_rebuilds_from_the_querysets():
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    t = Todo.objects.create(list=lst, description="captured")
    replicate_now()
    Todo.objects.filter(pk=t.pk).update(description="not captured")  # plain update: no signal
    assert "not captured" not in str(reduced_storage())
    text = run("powersync_resync")
    assert "Rebuilt bucket storage version 2: 2 buckets" in text
    assert "not captured" in str(reduced_storage())
    assert ReplicationState.objects.get().rules_version == 2
    check_storage()


@pytest.mark.django_db
def test_resync_builds_storage_the_first_time():
    TodoList.objects.create(name="a", owner_id="u1")
    assert "version 1: 1 buckets" in run("powersync_resync")


@pytest.mark.django_db(transaction=True)
def test_resync_rebuilds_itself_once_a_stale_lease_expires(monkeypatch):
    """A lease left by a replicator that stopped (no one renews it): the command waits for it, then rebuilds."""
    from powersync_django import replication
    from powersync_django.management.commands import powersync_resync

    monkeypatch.setattr(replication, "BUILD_ROWS", 2)
    monkeypatch.setattr(powersync_resync, "PROGRESS_EVERY", 0.0)
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    for i in range(5):
        Todo.objects.create(list=lst, description=f"t{i}")
    replicate_now()
    ReplicationState.objects.filter(pk=1).update(lease_owner="dead-server", lease_expires=time.time() + 0.5)
    text = run("powersync_resync", "--timeout", "60")
    assert "'dead-server' holds the lease" in text
    assert "/6 rows (reading rows)" in text and "6/6 rows (replaying the outbox)" in text and "rows/s" in text
    assert "Rebuilt bucket storage version 2: 2 buckets" in text
    assert ReplicationState.objects.get().lease_owner == ""
    check_storage()


@pytest.mark.django_db(transaction=True)
def test_resync_leaves_the_rebuild_to_the_lease_holder():
    holder = Replicator(owner="holder")
    holder.run_batch()
    with pytest.raises(CommandError, match="Timed out"):
        run("powersync_resync", "--timeout", "0.3")
    # The request stays: the holder rebuilds on its next batches.
    holder.drain()
    holder.release()
    assert ReplicationState.objects.get().rules_version == 2


# --- powersync_replicate ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_replicate_once_drains_the_outbox():
    lst = TodoList.objects.create(name="a", owner_id="u1")
    for i in range(5):
        Todo.objects.create(list=lst, description=f"t{i}")
    replicate_now()
    for t in Todo.objects.all():
        t.completed = True
        t.save()
    text = run("powersync_replicate", "--once", "--batch-size", "2")
    assert "Replicated 5 outbox entries" in text
    assert not OutboxEntry.objects.exists()
    assert Checkpoint.objects.count() >= 1 + 3
    check_storage()


@pytest.mark.django_db(transaction=True)
def test_replicate_once_refuses_while_another_replicator_works():
    stop = threading.Event()

    def busy() -> None:
        try:
            r = Replicator(owner="busy")
            while not stop.is_set():
                r.try_acquire()  # a live replicator renews its lease
                stop.wait(0.05)
        finally:
            connections.close_all()

    with override_settings(POWERSYNC={**get_config(), "LEASE_SECONDS": 0.3}):
        t = threading.Thread(target=busy)
        t.start()
        try:
            time.sleep(0.1)
            with pytest.raises(CommandError, match="busy"):
                run("powersync_replicate", "--once")
        finally:
            stop.set()
            t.join()
        # It died without releasing the lease: the lease expires and --once goes ahead.
        assert "Replicated 0 outbox entries" in run("powersync_replicate", "--once")


def test_replicate_rejects_bad_batch_size():
    with pytest.raises(CommandError, match="batch-size"):
        run("powersync_replicate", "--once", "--batch-size", "0")


@pytest.mark.django_db(transaction=True)
def test_replicate_worker_runs_until_sigterm():
    lst = TodoList.objects.create(name="a", owner_id="u1")
    for i in range(7):
        Todo.objects.create(list=lst, description=f"t{i}")

    before = signal.getsignal(signal.SIGTERM)

    def stop_when_drained() -> None:
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if not OutboxEntry.objects.exists() and ReplicationState.objects.filter(last_op_id__gt=0).exists():
                        break
                except OperationalError:  # the test database's shared cache: "table is locked" while a batch writes
                    pass
                time.sleep(0.05)
            # Only while the command's handler is installed: a stray SIGTERM would end the test run.
            while signal.getsignal(signal.SIGTERM) is before and time.monotonic() < deadline:
                time.sleep(0.05)
            if signal.getsignal(signal.SIGTERM) is not before:
                os.kill(os.getpid(), signal.SIGTERM)
        finally:
            connections.close_all()

    stopper = threading.Thread(target=stop_when_drained, daemon=True)
    stopper.start()
    text = run("powersync_replicate", "--batch-size", "3")
    stopper.join(25)
    assert "running; stop with Ctrl-C or SIGTERM" in text and "Stopped after replicating" in text
    assert signal.getsignal(signal.SIGTERM) == before
    assert not OutboxEntry.objects.exists()
    # The worker released its lease on the way out.
    assert ReplicationState.objects.get().lease_owner == ""
    check_storage()


# --- demo_seed -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_demo_seed_creates_lists_and_todos_that_sync():
    replicate_now()
    text = run("demo_seed", "--owner", "alice", "--lists", "3", "--todos-per-list", "4")
    assert "Created 3 lists and 12 todos for 'alice'" in text
    lists = list(TodoList.objects.filter(owner_id="alice"))
    assert len(lists) == 3 and Todo.objects.filter(list__owner_id="alice").count() == 12
    replicate_now()
    reduced = reduced_storage()
    assert len(reduced['1#lists["alice"]']) == 3
    for lst in lists:
        assert len(reduced[f'1#todos_by_list["{lst.pk}"]']) == 4
    check_storage()
    assert "already has lists" in run("demo_seed", "--owner", "alice", "--if-empty")
    assert TodoList.objects.count() == 3
    text = run("demo_seed", "--owner", "bob", "--lists", "1", "--todos-per-list", "2", "--if-empty", "--replicate")
    assert "Replicated 3 outbox entries" in text and len(reduced_storage()['1#lists["bob"]']) == 1


@pytest.mark.django_db
def test_demo_seed_is_bulk(django_assert_max_num_queries):
    """2,500 todos take a few dozen queries (chunks of 1000), not one per row."""
    with django_assert_max_num_queries(100):
        made, todos = seed("carol", 5, 500)
    assert len(made) == 5 and todos == 2500
    assert OutboxEntry.objects.count() == 2505


@pytest.mark.django_db
def test_demo_seed_rejects_bad_input():
    with pytest.raises(CommandError):
        run("demo_seed", "--owner", "x", "--lists", "-1")
    with pytest.raises(CommandError):
        run("demo_seed", "--owner", "")


# --- admin -----------------------------------------------------------------------------------------

SYNC_MODELS = [ReplicationState, Checkpoint, BucketState, BucketOp, RowBuckets, OutboxEntry, WriteCheckpoint,
               DeadLetter]


@pytest.mark.django_db
def test_admin_shows_sync_tables_read_only(admin_client):
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    storage.create_write_checkpoint("u1", "c")
    replicate_now()
    make_dead_letter()
    TodoList.objects.create(name="pending", owner_id="u1")
    bucket = BucketState.objects.first()
    for model in SYNC_MODELS:
        name = f"admin:powersync_django_{model._meta.model_name}"
        page = admin_client.get(reverse(f"{name}_changelist"))
        assert page.status_code == 200, model
        assert admin_client.get(reverse(f"{name}_add")).status_code == 403
        obj = model.objects.first()
        assert obj is not None, model
        url = reverse(f"{name}_change", args=[obj.pk])
        assert admin_client.get(url).status_code == 200
        assert admin_client.post(url, {}).status_code == 403
        assert admin_client.post(reverse(f"{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
    found = admin_client.get(reverse("admin:powersync_django_bucketop_changelist"), {"q": bucket.bucket})
    assert str(lst.pk).encode() in found.content
    assert BucketOp.objects.count() == 2  # lst and the list of the dead letter's todo
