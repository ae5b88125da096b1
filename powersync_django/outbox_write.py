"""Writing outbox rows: one multi-row INSERT per batch, the replicator's notification in the same statement.

On PostgreSQL the INSERT runs inside ``WITH ... SELECT pg_notify(...)``: a write of any number of rows (up to
:data:`BATCH_ROWS`) is one round trip, and the notification is queued by the very statement that writes the
rows, so it is delivered exactly when they commit and dropped with them (a rolled-back savepoint drops both).
PostgreSQL merges identical notifications of one transaction into one.

The in-process wake-up (:func:`notify.outbox_changed`) is registered with ``on_commit`` at most once per
transaction and savepoint level (see :func:`_wake_on_commit`).

:func:`deferring` lets a caller that sends many signals in a row (Django's deletion collector) collect the rows
and write them in batches before its transaction ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

from django.db import connections, transaction
from django.utils import timezone

from . import notify
from .models import OutboxEntry

OUTBOX_CHANNEL = "powersync_outbox"

# (model label, object primary key text, op, snapshot JSON text or None)
Row = tuple[str, str, str, "str | None"]

COLUMNS = ("model", "object_pk", "op", "snapshot", "created_at")
BATCH_ROWS = 1000  # rows per INSERT (5 parameters each); SQLite: limited by its parameter count


@lru_cache(maxsize=64)
def _insert_sql(vendor: str, quoted_table: str, quoted_columns: str, rows: int) -> str:
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * rows)
    sql = f"INSERT INTO {quoted_table} ({quoted_columns}) VALUES {values}"  # noqa: S608 (names from the model)
    if vendor == "postgresql":
        return f"WITH written AS ({sql}) SELECT pg_notify('{OUTBOX_CHANNEL}', '')"
    return sql


def _batch_rows(connection: object) -> int:
    limit = getattr(connection.features, "max_query_params", None) or 65535  # type: ignore[attr-defined]
    return max(1, min(BATCH_ROWS, limit // len(COLUMNS)))


def insert_rows(rows: Sequence[Row], using: str) -> None:
    """Insert outbox rows now (in the caller's transaction) and wake this process's replicator at commit."""
    if not rows:
        return
    connection = connections[using]
    opts = OutboxEntry._meta
    quote = connection.ops.quote_name
    table = quote(opts.db_table)
    columns = ", ".join(quote(opts.get_field(name).column) for name in COLUMNS)
    created = opts.get_field("created_at").get_db_prep_value(timezone.now(), connection)
    size = _batch_rows(connection)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            params: list[object] = []
            for model, pk, op, snapshot in chunk:
                params += (model, pk, op, snapshot, created)
            cursor.execute(_insert_sql(connection.vendor, table, columns, len(chunk)), params)
    _wake_on_commit(using)


def _wake_on_commit(using: str) -> None:
    """``on_commit(notify.outbox_changed)``, unless already registered where it survives every rollback that
    would drop the rows just written: a callback registered at savepoints S survives unless one of S is rolled
    back, which also drops anything written inside S, so it covers writes made at any deeper level."""
    connection = connections[using]
    if connection.in_atomic_block:
        current = set(connection.savepoint_ids)
        for sids, func, _robust in reversed(connection.run_on_commit):
            if func is notify.outbox_changed and sids <= current:
                return
    transaction.on_commit(notify.outbox_changed, using=using)


# --- deferred writes (deletion collector) ---------------------------------------------------------------

_deferred = threading.local()


def _pending(using: str) -> list[Row] | None:
    return getattr(_deferred, "rows", {}).get(using)


def flush(using: str) -> None:
    """Write the rows deferred on ``using`` so far (before anything else writes to the outbox there)."""
    rows = _pending(using)
    if rows:
        batch = rows[:]
        rows.clear()
        insert_rows(batch, using)


def defer(row: Row, using: str) -> bool:
    """Queue a row if a :func:`deferring` block is open on ``using``; False: write it yourself."""
    rows = _pending(using)
    if rows is None:
        return False
    rows.append(row)
    if len(rows) >= BATCH_ROWS:
        flush(using)
    return True


@contextmanager
def deferring(using: str) -> Iterator[None]:
    """Queue the rows :func:`defer` is given on ``using`` and write them when the block ends without error.

    The block must run inside the transaction the rows belong to (the caller's ``atomic``). Rows queued by an
    enclosing block are written first, so rows keep the order of the changes; so are queued rows before a
    savepoint is created in the block (code run by a signal receiver): rolling that savepoint back must not
    drop them. On error the queued rows are discarded: the transaction of the changes does not commit either.
    """
    flush(using)
    stacks = getattr(_deferred, "rows", None)
    if stacks is None:
        stacks = _deferred.rows = {}
    outer = stacks.get(using)
    stacks[using] = []

    def before_savepoint(execute, sql, params, many, context):  # noqa: ANN001, ANN202
        if isinstance(sql, str) and sql.lstrip()[:9].upper() == "SAVEPOINT":
            flush(using)
        return execute(sql, params, many, context)

    try:
        with connections[using].execute_wrapper(before_savepoint):
            yield
            flush(using)
    finally:
        if outer is None:
            del stacks[using]
        else:
            stacks[using] = outer
