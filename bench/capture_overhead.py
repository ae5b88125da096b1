"""Benchmark: what capture adds to writes of a tracked model, as ratios against an untracked twin.

``.venv/bin/python bench/capture_overhead.py [--database-url postgres://...] [--runs 5] [--rows 20000]``
(SQLite in a temporary file by default; for PostgreSQL a scratch database named after this process is created
next to the one in the URL and dropped at the end). The tracked model is the demo's ``todos.Todo`` (a synced
data model); the untracked twin is a model with the same fields and table shape, created here at runtime and
not named by any bucket definition (its saves still pass the global capture receivers, as in a real project).
Measured in each run, tracked and untracked interleaved:

- ``save()`` of a new todo in autocommit;
- ``save()`` of a new todo inside ``transaction.atomic()`` of 100 saves (time per save, the commit included);
- ``save()`` of an existing list (``todos.TodoList``: read by parameter queries, its owner is a targeted
  field, so capture reads the earlier value) in autocommit;
- ``bulk_create`` of N rows (``PowerSyncQuerySet`` vs plain), ``update()`` and ``delete()`` of those N rows.

Prints per-run figures and, at the end, the medians and the ratios tracked / untracked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAVES = int(os.environ.get("BENCH_SAVES", "20"))  # saves per block in autocommit
BLOCKS = int(os.environ.get("BENCH_BLOCKS", "20"))  # blocks (tracked and untracked each) per run and measurement


def _scratch_database(url: str) -> tuple[str, Callable[[], None]]:
    """Create a uniquely named PostgreSQL database next to ``url``'s; returns its URL and a drop function."""
    import psycopg

    parsed = urlparse(url)
    name = f"bench_capture_{os.getpid()}"
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunparse(parsed._replace(path=f"/{name}")), drop


def _twins() -> tuple[type, type]:
    """Untracked models shaped like TodoList and Todo (tables created by the caller)."""
    from django.db import models

    class BenchList(models.Model):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
        name = models.CharField(max_length=200)
        owner_id = models.CharField(max_length=200, db_index=True)
        created_at = models.DateTimeField(auto_now_add=True)

        class Meta:
            app_label = "todos"
            db_table = "bench_untracked_list"

        def __str__(self) -> str:
            return self.name

    class BenchTodo(models.Model):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
        list = models.ForeignKey(BenchList, on_delete=models.CASCADE, related_name="todos")
        description = models.TextField()
        completed = models.BooleanField(default=False)
        created_by = models.CharField(max_length=200, blank=True, default="")
        created_at = models.DateTimeField(auto_now_add=True)
        completed_at = models.DateTimeField(null=True, blank=True)

        class Meta:
            app_label = "todos"
            db_table = "bench_untracked_todo"

        def __str__(self) -> str:
            return self.description

    return BenchList, BenchTodo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--only", default="", help="comma-separated measurement names (default: all)")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    drop: Callable[[], None] | None = None
    if args.database_url:
        url, drop = _scratch_database(args.database_url)
    else:
        url = f"sqlite:///{tmp.name}/bench.sqlite3"
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
    os.environ["POWERSYNC_LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_DEBUG"] = "0"
    try:
        _run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if drop:
            drop()
        tmp.cleanup()


def _run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from demo_project.todos.models import Todo, TodoList
    from powersync_django.capture import PowerSyncQuerySet, is_tracked
    from powersync_django.models import OutboxEntry

    call_command("migrate", verbosity=0)
    BenchList, BenchTodo = _twins()
    with connection.schema_editor() as editor:
        editor.create_model(BenchList)
        editor.create_model(BenchTodo)
    assert is_tracked(Todo) and is_tracked(TodoList) and not is_tracked(BenchTodo) and not is_tracked(BenchList)
    only = set(filter(None, args.only.split(",")))

    pairs = {"tracked": (TodoList, Todo, PowerSyncQuerySet), "untracked": (BenchList, BenchTodo, None)}
    lists = {k: lst.objects.create(name="bench", owner_id="bench") for k, (lst, _t, _q) in pairs.items()}
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def measure(name: str, kind: str, seconds: float, per: int) -> None:
        results[name][kind].append(seconds / per)

    def wanted(name: str) -> bool:
        return not only or name in only

    def save_new(kind: str, n: int) -> None:
        todo_model, the_list = pairs[kind][1], lists[kind]
        for i in range(n):
            todo_model(list=the_list, description=f"todo {i}").save()

    def save_in_atomic(kind: str, n: int) -> None:
        with transaction.atomic():
            save_new(kind, n)

    def save_list(kind: str, n: int) -> None:
        the_list = lists[kind]
        for i in range(n):
            the_list.name = f"bench {i}"
            the_list.save()

    # Saves: short blocks, tracked and untracked alternating (which goes first too), so that both see the same
    # machine load; the ratio is the median of the blocks' ratios.
    saves = {"save_autocommit": (save_new, SAVES), "save_atomic100": (save_in_atomic, 100),
             "save_list_update": (save_list, SAVES)}
    for run in range(args.runs):
        for name, (func, per_block) in saves.items():
            if not wanted(name):
                continue
            for block in range(BLOCKS):
                order = ("tracked", "untracked") if block % 2 else ("untracked", "tracked")
                for kind in order:
                    started = time.perf_counter()
                    func(kind, per_block)
                    measure(name, kind, time.perf_counter() - started, per_block)
        for kind, (_list, todo_model, captured_qs) in pairs.items():
            the_list = lists[kind]
            todo_model.objects.all()._raw_delete("default")  # not measured
            if not (wanted("bulk_create") or wanted("update") or wanted("delete")):
                continue
            qs = captured_qs(todo_model) if captured_qs else todo_model.objects.all()
            objs = [todo_model(list=the_list, description=f"bulk todo number {i}") for i in range(args.rows)]
            started = time.perf_counter()
            qs.bulk_create(objs)
            measure("bulk_create", kind, time.perf_counter() - started, 1)
            if wanted("update"):
                started = time.perf_counter()
                qs.filter(list=the_list).update(completed=True)
                measure("update", kind, time.perf_counter() - started, 1)
            started = time.perf_counter()
            qs.filter(list=the_list).delete()
            measure("delete", kind, time.perf_counter() - started, 1)
        OutboxEntry.objects.all()._raw_delete("default")  # what a replicator would have consumed
        line = ", ".join(f"{name} {_ratio(v):.2f}x" for name, v in results.items())
        print(f"run {run + 1}: {line}", flush=True)

    print(f"\n{connection.vendor}, {args.runs} runs, {args.rows} rows for the bulk operations; medians:")
    print(f"{'measurement':<18} {'untracked':>12} {'tracked':>12} {'ratio':>7}")
    for name, v in results.items():
        unit, scale = ("ms", 1000) if name in ("bulk_create", "update", "delete") else ("us", 1e6)
        u, t = statistics.median(v["untracked"]), statistics.median(v["tracked"])
        print(f"{name:<18} {u * scale:>9.1f} {unit} {t * scale:>9.1f} {unit} {_ratio(v):>6.2f}x")


def _ratio(v: dict[str, list[float]]) -> float:
    """Median of the ratios tracked / untracked of paired measurements."""
    return statistics.median(a / b for a, b in zip(v["tracked"], v["untracked"], strict=True))


if __name__ == "__main__":
    main()
