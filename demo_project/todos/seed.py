"""Demo data: lists and todos for one owner, written in bulk through the capture helpers so they sync."""

from __future__ import annotations

from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, transaction

from powersync_django.capture import PowerSyncQuerySet

from .models import Todo, TodoList

CHUNK = 1000
WORDS = ["milk", "bread", "call mum", "fix bike", "book flights", "water plants", "pay rent", "read", "run", "tea"]


def seed(owner: str, lists: int, todos_per_list: int, using: str = DEFAULT_DB_ALIAS,
         progress: Callable[[int, int], None] | None = None) -> tuple[list[TodoList], int]:
    """Create ``lists`` lists of ``owner`` with ``todos_per_list`` todos each; return (lists, todos created).

    Rows are bulk-inserted with :class:`PowerSyncQuerySet`, which records them in the outbox in the same
    transaction, so the replicator syncs them like any other change. One transaction per chunk of rows.
    """
    if lists < 0 or todos_per_list < 0:
        raise ValueError("counts must not be negative")
    made: list[TodoList] = []
    for start in range(0, lists, CHUNK):
        batch = [TodoList(name=f"List {i + 1}", owner_id=owner) for i in range(start, min(lists, start + CHUNK))]
        made += PowerSyncQuerySet(TodoList, using=using).bulk_create(batch)
    total = lists * todos_per_list
    done = 0
    pending: list[Todo] = []
    for lst in made:
        for i in range(todos_per_list):
            pending.append(Todo(list=lst, description=f"{WORDS[i % len(WORDS)]} #{i + 1}", completed=i % 3 == 0,
                                created_by=owner))
            if len(pending) >= CHUNK:
                done += _flush(pending, using)
                if progress:
                    progress(done, total)
    done += _flush(pending, using)
    if progress:
        progress(done, total)
    return made, done


def _flush(todos: list[Todo], using: str) -> int:
    if not todos:
        return 0
    with transaction.atomic(using=using):
        PowerSyncQuerySet(Todo, using=using).bulk_create(todos)
    n = len(todos)
    todos.clear()
    return n
