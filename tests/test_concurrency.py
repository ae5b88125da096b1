"""Exactly once and in commit order with concurrent writer PROCESSES on PostgreSQL.

Writer processes save, move, bulk-update and delete shared and own rows, sleeping inside their transactions
so that outbox ids become visible out of order (commit order != sequence order), while two replicators (a
thread here and a ``powersync_replicate`` process) compete for the lease and replicate in small batches.
The replicator process is killed (SIGKILL) while it works and replaced. Every writer logs each committed write;
afterwards the ops must account for each of them exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from django.conf import settings
from django.db import connections, transaction
from django.test import override_settings
from test_replication import check_storage

from demo_project.todos.models import Todo, TodoList
from powersync_django.conf import get_config
from powersync_django.models import BucketOp, Checkpoint, OutboxEntry, ReplicationState
from powersync_django.replication import ReplicatorWorker, replicate_now

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 4
WRITES_PER_WRITER = 100
SHARED_TODOS = 5

# Runs in each writer process: argv = index, writes, log path, shared todo ids (JSON), shared list ids (JSON).
# It touches <log>.ready once set up and starts writing when <dir>/go exists, so all writers overlap.
WRITER = r'''
import json, os, random, sys, time
import django
django.setup()
from django.db import OperationalError, transaction
from demo_project.todos.models import Todo, TodoList
from powersync_django.capture import PowerSyncQuerySet

w, writes, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
shared_todos, shared_lists = json.loads(sys.argv[4]), json.loads(sys.argv[5])
rnd = random.Random(1000 + w)
log = open(log_path, "a")
owner = f"w{w}"


def nap():
    # Mostly short, sometimes long: a long transaction's outbox id stays invisible while later ones commit.
    time.sleep(rnd.random() * (0.02 if rnd.random() < 0.2 else 0.003))


def emit(records):
    for r in records:
        log.write(json.dumps(r) + "\n")
    log.flush()


def todo_rec(pk, list_id, version=None):
    return {"m": "todo", "id": str(pk), "op": "S", "list": str(list_id), "v": version}


class Rollback(Exception):
    pass


own_lists = {}   # list id -> owner
own_todos = {}   # todo id -> list id


def new_list():
    lst = TodoList.objects.create(name=f"{owner} list", owner_id=owner)
    own_lists[str(lst.pk)] = owner
    return [{"m": "list", "id": str(lst.pk), "op": "S", "owner": owner}]


def shared_version():
    # Versioned update under a row lock: versions are the commit order of this row.
    t = Todo.objects.select_for_update().get(pk=rnd.choice(shared_todos))
    v = int(t.description.split(":")[1]) + 1
    t.description = f"v:{v}"
    if rnd.random() < 0.3:
        t.list_id = rnd.choice(shared_lists)
    t.save()
    nap()
    return [todo_rec(t.pk, t.list_id, v)]


def shared_flag():
    # Stale read, no lock, partial save: the snapshot must still be the committed row.
    t = Todo.objects.get(pk=rnd.choice(shared_todos))
    nap()
    t.completed = not t.completed
    t.save(update_fields=["completed"])
    nap()
    return [{"m": "todo", "id": str(t.pk), "op": "S", "list": None, "v": None}]


def own_create():
    list_id = rnd.choice(list(own_lists))
    t = Todo.objects.create(list_id=list_id, description=f"{owner} todo", created_by=owner)
    own_todos[str(t.pk)] = list_id
    nap()
    return [todo_rec(t.pk, list_id)]


def own_edit():
    if not own_todos:
        return own_create()
    pk = rnd.choice(list(own_todos))
    t = Todo.objects.get(pk=pk)
    t.description = f"{owner} edit {rnd.random():.6f}"
    if rnd.random() < 0.5:
        t.list_id = rnd.choice(list(own_lists))
    t.save()
    nap()
    own_todos[pk] = str(t.list_id)
    return [todo_rec(pk, t.list_id)]


def own_delete():
    if not own_todos:
        return []
    pk = rnd.choice(list(own_todos))
    Todo.objects.get(pk=pk).delete()
    nap()
    del own_todos[pk]
    return [{"m": "todo", "id": pk, "op": "D"}]


def own_bulk_exact():
    pks = list(own_todos)
    matching = [str(pk) for pk in Todo.objects.filter(pk__in=pks, completed=False).values_list("pk", flat=True)]
    n = PowerSyncQuerySet(Todo).filter(pk__in=pks, completed=False).update(completed=True)
    assert n == len(matching)
    nap()
    return [todo_rec(pk, own_todos[pk]) for pk in matching]


def own_uncomplete():
    pks = list(own_todos)
    done = [str(pk) for pk in Todo.objects.filter(pk__in=pks, completed=True).values_list("pk", flat=True)]
    objs = list(Todo.objects.filter(pk__in=done))
    for o in objs:
        o.completed = False
    PowerSyncQuerySet(Todo).bulk_update(objs, ["completed"])
    nap()
    return [todo_rec(o.pk, own_todos[str(o.pk)]) for o in objs]


def list_owner():
    list_id = rnd.choice(list(own_lists))
    lst = TodoList.objects.get(pk=list_id)
    lst.owner_id = owner if lst.owner_id != owner else f"{owner}x"
    lst.save()
    nap()
    own_lists[list_id] = lst.owner_id
    return [{"m": "list", "id": list_id, "op": "S", "owner": lst.owner_id}]


def shared_list_rename():
    lst = TodoList.objects.select_for_update().get(pk=rnd.choice(shared_lists))
    lst.name = f"renamed by {owner}"
    lst.save()
    nap()
    return [{"m": "list", "id": str(lst.pk), "op": "S", "owner": lst.owner_id}]


def own_list_delete():
    if len(own_lists) < 2:
        return new_list()
    list_id = rnd.choice(list(own_lists))
    gone = [pk for pk, lid in own_todos.items() if lid == list_id]
    TodoList.objects.get(pk=list_id).delete()
    nap()
    for pk in gone:
        del own_todos[pk]
    del own_lists[list_id]
    return [{"m": "todo", "id": pk, "op": "D"} for pk in gone] + [{"m": "list", "id": list_id, "op": "D"}]


def rolled_back():
    Todo.objects.create(list_id=rnd.choice(shared_lists), description="ROLLBACK")
    t = Todo.objects.select_for_update().get(pk=rnd.choice(shared_todos))
    t.description = "ROLLBACK"
    t.save()
    nap()
    raise Rollback


ACTIONS = [(shared_version, 30), (shared_flag, 12), (own_create, 14), (own_edit, 14), (own_delete, 6),
           (own_bulk_exact, 4), (own_uncomplete, 3), (list_owner, 5), (shared_list_rename, 4),
           (own_list_delete, 3), (new_list, 2), (rolled_back, 3)]
FUNCS = [f for f, _ in ACTIONS]
WEIGHTS = [n for _, n in ACTIONS]

with transaction.atomic():
    records = new_list() + new_list()
emit(records)
open(log_path + ".ready", "w").close()
go = os.path.join(os.path.dirname(log_path), "go")
while not os.path.exists(go):
    time.sleep(0.005)
for _ in range(writes):
    action = rnd.choices(FUNCS, WEIGHTS)[0]
    snapshot = (dict(own_lists), dict(own_todos))
    for attempt in range(5):
        try:
            with transaction.atomic():
                records = action()
            emit(records)
            break
        except Rollback:
            break
        except OperationalError:  # deadlock victim: nothing committed, try again
            own_lists.clear(); own_lists.update(snapshot[0]); own_todos.clear(); own_todos.update(snapshot[1])
            time.sleep(0.01)
    else:
        raise SystemExit("gave up after repeated deadlocks")
print("writer", w, "done")
'''


def _db_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=_db_url(), DJANGO_SETTINGS_MODULE="demo_project.settings", PYTHONPATH=str(ROOT),
               POWERSYNC_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    return env


def _read_logs(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]


def test_concurrent_writer_processes_replicate_exactly_once_in_commit_order(tmp_path):
    replicate_now()
    shared_lists = [TodoList.objects.create(name=f"shared {i}", owner_id=f"s{i}") for i in range(2)]
    shared = [Todo.objects.create(list=shared_lists[i % 2], description="v:0") for i in range(SHARED_TODOS)]
    replicate_now()
    watermark = BucketOp.objects.order_by("-op_id").values_list("op_id", flat=True).first()
    initial_list = {str(t.pk): str(t.list_id) for t in shared}

    env = _env()

    def start_replicator() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "powersync_replicate", "--batch-size", "50"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    killed = start_replicator()
    logs = [tmp_path / f"writer{w}.log" for w in range(WRITERS)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(w), str(WRITES_PER_WRITER), str(logs[w]),
             json.dumps([str(t.pk) for t in shared]), json.dumps([str(lst.pk) for lst in shared_lists])],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for w in range(WRITERS)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{log}.ready").exists() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "go").touch()
    # A second replicator in this process competes for the lease with the worker process.
    with override_settings(POWERSYNC={**get_config(), "REPLICATION_BATCH_SIZE": 20}):
        worker = ReplicatorWorker()
    thread = threading.Thread(target=worker.run)
    thread.start()
    # Kill -9 the replicator process while it works; whatever batch it was in is rolled back by PostgreSQL.
    time.sleep(0.4)
    killed.kill()
    killed.communicate(timeout=30)
    ReplicationState.objects.filter(lease_owner__startswith=f"{killed.pid}-").update(lease_expires=0)  # expiry
    replicator = start_replicator()
    try:
        outputs = [p.communicate(timeout=120)[0] for p in writers]
    finally:
        worker.stop()
        thread.join(30)
        first_line = replicator.stdout.readline()  # signal handlers are installed once it says so
        replicator.send_signal(signal.SIGTERM)
        replicator_out = first_line + replicator.communicate(timeout=30)[0]
    for p, out in zip(writers, outputs, strict=True):
        assert p.returncode == 0, out
    assert replicator.returncode == 0 and "Stopped after replicating" in replicator_out, replicator_out
    checkpoints_during_writes = Checkpoint.objects.count()
    replicate_now()
    connections.close_all()

    # 1. Storage equals the querysets; totals, checksums and memberships are exact.
    check_storage()
    assert not OutboxEntry.objects.exists()
    assert checkpoints_during_writes > 10  # replication really ran while the writers wrote
    assert not BucketOp.objects.filter(data__contains="ROLLBACK").exists()

    # 2. Exactly once: each committed save is one PUT, each departure from a bucket one REMOVE.
    records = _read_logs(logs)
    ops = list(BucketOp.objects.filter(op_id__gt=watermark).order_by("op_id").values_list(
        "op", "bucket", "object_id", "data"))
    puts = Counter(oid for op, _, oid, _ in ops if op == "PUT")
    saves = Counter(r["id"] for r in records if r["op"] == "S")
    assert puts == saves
    removes = Counter(oid for op, _, oid, _ in ops if op == "REMOVE")
    assert removes == _expected_removes(records, initial_list)
    assert len(ops) == sum(saves.values()) + sum(removes.values())
    print(f"{len(records)} committed writes, {len(ops)} ops, {checkpoints_during_writes} checkpoints while writing")

    # 3. Commit order: each shared todo's versions appear in order, every version exactly once.
    versions: dict[str, list[int]] = defaultdict(list)
    for op, _, oid, data in ops:
        if op == "PUT" and oid in initial_list:
            versions[oid].append(int(orjson.loads(data)["description"].split(":")[1]))
    logged = defaultdict(set)
    for r in records:
        if r["m"] == "todo" and r.get("v"):
            logged[r["id"]].add(r["v"])
    assert sum(len(v) for v in logged.values()) > WRITERS * WRITES_PER_WRITER // 5
    for oid, seen in versions.items():
        assert seen == sorted(seen), f"{oid}: versions out of commit order {seen}"
        distinct = sorted(set(seen) - {0})  # a partial save before any versioned one still shows v:0
        assert distinct == list(range(1, len(distinct) + 1)) == sorted(logged[oid])
    # Final rows hold their last version.
    for t in Todo.objects.filter(pk__in=list(initial_list)):
        assert t.description == f"v:{len(logged[str(t.pk)])}"


def _expected_removes(records: list[dict], initial_list: dict[str, str]) -> Counter:
    """REMOVEs each row must have: one per change of bucket between consecutive saves, one per deletion.

    Own rows are written by one process only, so its log order is their commit order. Shared todos only
    change list in versioned saves, whose versions give their commit order.
    """
    out: Counter = Counter()
    by_row: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_row[r["id"]].append(r)
    for oid, rows in by_row.items():
        if oid in initial_list:
            chain = [initial_list[oid]] + [r["list"] for r in sorted((r for r in rows if r.get("v")), key=lambda r: r["v"])]
        else:
            key = "list" if rows[0]["m"] == "todo" else "owner"
            chain = [r[key] for r in rows if r["op"] == "S"]
            if rows[-1]["op"] == "D" and chain:
                out[oid] += 1
        out[oid] += sum(1 for a, b in zip(chain, chain[1:], strict=False) if a != b)
    return +out


def _in_thread(fn) -> threading.Thread:
    def target() -> None:
        try:
            fn()
        finally:
            connections.close_all()

    t = threading.Thread(target=target)
    t.start()
    return t


def test_an_entry_that_commits_late_is_not_skipped():
    """Outbox ids are allocated in one order and committed in another; a later batch picks up the late one."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    replicate_now()
    written, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with transaction.atomic():
            Todo.objects.create(list=lst, description="slow")  # lower outbox id...
            written.set()
            release.wait(10)  # ...committed after the faster writer below

    t = _in_thread(slow_writer)
    assert written.wait(10)
    Todo.objects.create(list=lst, description="fast")
    replicate_now()
    descriptions = set(BucketOp.objects.exclude(data=None).values_list("data", flat=True))
    assert any('"fast"' in d for d in descriptions) and not any('"slow"' in d for d in descriptions)
    release.set()
    t.join(10)
    replicate_now()
    check_storage()
    assert BucketOp.objects.filter(data__contains='"slow"').count() == 1


def test_entries_of_one_row_replicate_in_commit_order():
    """The second writer of a row waits for the first one's row lock: its entry comes after, whatever the ids."""
    replicate_now()
    lst = TodoList.objects.create(name="a", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="v0")
    replicate_now()
    first_saved, release = threading.Event(), threading.Event()

    def first() -> None:
        with transaction.atomic():
            t = Todo.objects.select_for_update().get(pk=todo.pk)
            t.description = "v1"
            t.save()
            first_saved.set()
            release.wait(10)

    def second() -> None:
        t = Todo.objects.get(pk=todo.pk)
        t.description = "v2"
        t.save()  # blocks on the row until the first commits

    a = _in_thread(first)
    assert first_saved.wait(10)
    b = _in_thread(second)
    b.join(0.3)
    assert b.is_alive()
    replicate_now()  # neither entry is visible yet
    release.set()
    a.join(10)
    b.join(10)
    replicate_now()
    puts = [orjson.loads(d)["description"] for d in
            BucketOp.objects.filter(object_id=str(todo.pk)).order_by("op_id").values_list("data", flat=True)]
    assert puts == ["v0", "v1", "v2"]
    check_storage()


def test_writes_committed_during_a_build_are_kept(monkeypatch):
    """A change committed while the build reads rows is in the build or replayed after it, never lost."""
    from powersync_django.replication import Replicator

    replicate_now()
    lists = [TodoList.objects.create(name=f"l{i}", owner_id="u1") for i in range(2)]
    todos = [Todo.objects.create(list=lists[0], description=f"t{i}") for i in range(3)]
    replicate_now()
    created: list[Todo] = []

    def concurrent_writes() -> None:
        todos[0].description = "changed during the build"
        todos[0].save()
        todos[1].delete()
        created.append(Todo.objects.create(list=lists[1], description="created during the build"))
        lists[0].owner_id = "u2"  # lists were already read by the build
        lists[0].save()

    original = Replicator._flush_rebuild
    calls: list[int] = []

    def flush(self, batch, memberships, version):
        calls.append(1)
        if len(calls) == 1:
            _in_thread(concurrent_writes).join(10)
        return original(self, batch, memberships, version)

    monkeypatch.setattr(Replicator, "_flush_rebuild", flush)
    from powersync_django.management.commands.powersync_resync import request_resync

    request_resync()
    replicate_now()
    assert calls and created
    check_storage()
    data = str(BucketOp.objects.values_list("data", flat=True))
    assert "changed during the build" in data and "created during the build" in data


def test_rebuilds_while_writer_processes_write(tmp_path):
    """Definitions rebuilt twice during concurrent writes: storage still ends equal to the querysets."""
    from powersync_django.management.commands.powersync_resync import request_resync

    replicate_now()
    shared_lists = [TodoList.objects.create(name=f"shared {i}", owner_id=f"s{i}") for i in range(2)]
    shared = [Todo.objects.create(list=shared_lists[i % 2], description="v:0") for i in range(SHARED_TODOS)]
    env = _env()
    logs = [tmp_path / f"writer{w}.log" for w in range(3)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(w), "60", str(logs[w]),
             json.dumps([str(t.pk) for t in shared]), json.dumps([str(lst.pk) for lst in shared_lists])],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for w in range(3)
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{log}.ready").exists() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "go").touch()
    with override_settings(POWERSYNC={**get_config(), "REPLICATION_BATCH_SIZE": 20}):
        worker = ReplicatorWorker()
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        for _ in range(2):
            time.sleep(0.3)
            request_resync()
        outputs = [p.communicate(timeout=120)[0] for p in writers]
    finally:
        worker.stop()
        thread.join(30)
    for p, out in zip(writers, outputs, strict=True):
        assert p.returncode == 0, out
    replicate_now()
    connections.close_all()
    assert ReplicationState.objects.get().rules_version == 3
    check_storage()
