"""Writing outbox rows: queued in memory during a transaction, written by one multi-row INSERT before it ends.

Inside an ``atomic`` block, rows are queued on the connection and written (in the transaction, in order):

- just before the transaction commits (Django's ``_commit``, wrapped by :func:`install`, and that of a backend
  class overriding it, wrapped when it first queues rows);
- before any savepoint statement (``SAVEPOINT``, ``RELEASE``: rows queued inside a savepoint then live or
  die with it, rows queued before it are not dropped by its rollback), and before any statement that names
  the outbox table (code reading the outbox in the same transaction sees its rows), through an execute
  wrapper;
- when :data:`BATCH_ROWS` are queued.

A rolled-back transaction discards them (Django's ``rollback``, wrapped too), so do a connection closed or
replaced meanwhile (``connect`` is wrapped too: a pool may hand back the same DB-API connection), and so
does ``ROLLBACK TO SAVEPOINT``: every savepoint statement writes the queue, so the rows still queued were all
queued after the savepoint being rolled back to was set. (Writing them instead would fail on PostgreSQL when
the savepoint is rolled back because a statement failed, the transaction being aborted until then, and doom
the enclosing transaction.) Outside ``atomic`` blocks rows are written at once. Commits must go through
Django: a ``COMMIT`` sent through the DB-API connection itself would commit the changes before their rows.

On PostgreSQL each INSERT runs inside ``WITH ... SELECT pg_notify(...)``: the notification is queued by the very
statement that writes the rows, so it is delivered exactly when they commit and dropped with them; PostgreSQL
merges identical notifications of one transaction. Large batches go by ``COPY`` followed by ``pg_notify`` in
the same transaction. With psycopg 3's client-side binding (Django's default) the last statement before
Django's own commit carries the ``COMMIT`` too: a captured autocommit save costs BEGIN, its INSERT, and
INSERT+COMMIT. A transaction of 100 captured saves thus costs one extra statement, not 100 INSERTs and 100
``pg_notify``.

The in-process wake-up (:func:`notify.outbox_changed`) is registered with ``on_commit`` once per transaction
(see :func:`_wake_on_commit`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from . import notify
from .models import OutboxEntry

OUTBOX_CHANNEL = "powersync_outbox"

# (model label, object primary key text, op, snapshot JSON text or None)
Row = tuple[str, str, str, "str | None"]

COLUMNS = ("model", "object_pk", "op", "snapshot", "created_at")
BATCH_ROWS = 1000  # rows per INSERT (5 parameters each); SQLite: limited by its parameter count
COPY_ROWS = 200  # PostgreSQL: from this many rows on, COPY (formatted in C) and a separate pg_notify


@lru_cache(maxsize=64)
def _insert_sql(vendor: str, quoted_table: str, quoted_columns: str, rows: int) -> str:
    """SQLite: a multi-row VALUES list. PostgreSQL: four array parameters whatever the number of rows (a long
    list of placeholders costs more to build and parse than the rows), and the notification."""
    if vendor == "postgresql":
        return (f"WITH written AS (INSERT INTO {quoted_table} ({quoted_columns}) "  # noqa: S608 (model names)
                "SELECT r.*, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS r) "
                f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')")
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * rows)
    return f"INSERT INTO {quoted_table} ({quoted_columns}) VALUES {values}"  # noqa: S608 (names from the model)


def _batch_rows(connection: BaseDatabaseWrapper) -> int:
    if connection.vendor == "postgresql":
        return 10 * BATCH_ROWS
    limit = connection.features.max_query_params or 65535
    return max(1, min(BATCH_ROWS, limit // len(COLUMNS)))


_QUEUE = "_powersync_outbox_queue"  # connection attribute: (DB-API connection, rows)
_FLUSH_BEFORE = ("SAVEPOINT", "RELEASE", "COMMIT", "END", "PREPARE")


def insert_rows(rows: Sequence[Row], using: str) -> None:
    """Write outbox rows in the caller's transaction (queued until before it ends, see the module) and wake
    this process's replicator once it commits."""
    if not rows:
        return
    connection = connections[using]
    if connection.in_atomic_block:
        connection.ensure_connection()
        queued = connection.__dict__.get(_QUEUE)
        if queued is None or queued[0] is not connection.connection:
            queued = connection.__dict__[_QUEUE] = (connection.connection, [])
        _install_wrapper(connection)  # every time: code may have reset ``execute_wrappers`` meanwhile
        if not getattr(type(connection)._commit, "_powersync_outbox", False):
            _wrap_commit(type(connection))  # a backend may override ``_commit`` without calling Django's
        queued[1].extend(rows)
        if len(queued[1]) >= BATCH_ROWS:
            flush(connection)
    else:
        _write(connection, rows)
    _wake_on_commit(using)


def flush(connection: BaseDatabaseWrapper, commit: bool = False) -> None:
    """Write the rows queued on a connection now (``commit``: and commit, where one round trip can do both)."""
    queued = connection.__dict__.get(_QUEUE)
    if not queued or not queued[1]:
        return
    rows = queued[1][:]
    queued[1].clear()
    if queued[0] is connection.connection:  # else: that transaction is gone with its connection
        try:
            _write(connection, rows, commit=commit and _can_append_commit(connection))
        except BaseException:
            # The rows are gone: the transaction must not commit the changes they record, even if the caller
            # swallows the error (SQLite goes on after a failed statement; no savepoint undoes the changes).
            if connection.in_atomic_block:
                connection.needs_rollback = True
            raise


def _can_append_commit(connection: BaseDatabaseWrapper) -> bool:
    """Whether a statement and ``COMMIT`` can go in one round trip: psycopg 3 with client-side binding sends
    them as one simple query, and its ``commit()`` then finds the connection idle and sends nothing."""
    return (connection.vendor == "postgresql" and getattr(connection.Database, "__name__", "") == "psycopg"
            and connection.settings_dict.get("OPTIONS", {}).get("server_side_binding") is not True)


def discard(connection: BaseDatabaseWrapper) -> None:
    """Forget the rows queued on a connection (its transaction rolled back)."""
    queued = connection.__dict__.get(_QUEUE)
    if queued:
        queued[1].clear()


def _write(connection: BaseDatabaseWrapper, rows: Sequence[Row], commit: bool = False) -> None:
    """Insert rows; ``commit``: end the last statement with ``COMMIT`` (only where :func:`_can_append_commit`)."""
    opts = OutboxEntry._meta
    quote = connection.ops.quote_name
    table = quote(opts.db_table)
    columns = ", ".join(quote(opts.get_field(name).column) for name in COLUMNS)
    created = opts.get_field("created_at").get_db_prep_value(timezone.now(), connection)
    size = _batch_rows(connection)
    postgresql = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            params: list[object]
            if postgresql and len(chunk) >= COPY_ROWS:
                # The DB-API cursor's own COPY: its errors must still reach Django as Django's (its commit
                # and ``atomic`` roll back on ``DatabaseError`` only).
                with connection.wrap_database_errors, \
                        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row((*row, created))
                last = commit and start + size >= len(rows)
                cursor.execute(f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')" + ("; COMMIT" if last else ""))
                continue
            if postgresql:
                params = [created, *(list(column) for column in zip(*chunk, strict=True))]
                sql = _insert_sql(connection.vendor, table, columns, 0)
                if commit and start + size >= len(rows):
                    sql += "; COMMIT"
            else:
                params = []
                for model, pk, op, snapshot in chunk:
                    params += (model, pk, op, snapshot, created)
                sql = _insert_sql(connection.vendor, table, columns, len(chunk))
            cursor.execute(sql, params)


def _flush_first(execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Execute wrapper: write queued rows before savepoint and transaction statements and statements naming
    the outbox table; drop them before a rollback (to a savepoint or whole)."""
    connection = context["connection"]
    queued = connection.__dict__.get(_QUEUE)
    if queued and queued[1] and isinstance(sql, str):
        head = sql.lstrip()[:9].upper()
        if head.startswith("ROLLBACK"):
            discard(connection)
        elif head.startswith(_FLUSH_BEFORE) or OutboxEntry._meta.db_table in sql:
            flush(connection)
    return execute(sql, params, many, context)


def _install_wrapper(connection: BaseDatabaseWrapper) -> None:
    # First in the list: called first (the outermost, it sees the SQL as issued), and
    # ``connection.execute_wrapper()`` blocks pop the last one on exit.
    if _flush_first not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, _flush_first)


def install() -> None:
    """Wrap Django's commit (write queued rows first), rollback and connect (discard them), once."""
    _wrap_commit(BaseDatabaseWrapper)
    if not getattr(BaseDatabaseWrapper.connect, "_powersync_outbox", False):
        original_connect = BaseDatabaseWrapper.connect

        @functools.wraps(original_connect)
        def connect(self: BaseDatabaseWrapper) -> Any:
            # A (re)connection starts without a transaction of ours: a pool can hand back the very DB-API
            # connection whose transaction was lost when it was closed inside ``atomic``.
            self.__dict__.pop(_QUEUE, None)
            return original_connect(self)

        connect._powersync_outbox = True  # type: ignore[attr-defined]
        BaseDatabaseWrapper.connect = connect  # type: ignore[method-assign]


def _wrap_commit(cls: type[BaseDatabaseWrapper]) -> None:
    """Wrap ``cls._commit`` and ``cls._rollback`` unless what ``cls`` resolves them to is wrapped already."""
    if not getattr(cls._commit, "_powersync_outbox", False):
        original_commit = cls._commit

        # Django's own commit may send the COMMIT with the last INSERT (see _can_append_commit); a backend's
        # override of it may do more than commit, so its queued rows are written first, without one.
        append_commit = cls is BaseDatabaseWrapper

        @functools.wraps(original_commit)
        def _commit(self: BaseDatabaseWrapper) -> Any:
            flush(self, commit=append_commit)
            return original_commit(self)

        _commit._powersync_outbox = True  # type: ignore[attr-defined]
        cls._commit = _commit  # type: ignore[method-assign]
    if not getattr(cls._rollback, "_powersync_outbox", False):
        original_rollback = cls._rollback

        @functools.wraps(original_rollback)
        def _rollback(self: BaseDatabaseWrapper) -> Any:
            discard(self)
            return original_rollback(self)

        _rollback._powersync_outbox = True  # type: ignore[attr-defined]
        cls._rollback = _rollback  # type: ignore[method-assign]


def _wake_on_commit(using: str) -> None:
    """``on_commit(notify.outbox_changed)``, unless the transaction already has it registered.

    A registration still listed survives every rollback that would drop the rows just written: Django drops
    a callback when a savepoint it was registered in is rolled back; those of its savepoints that are still
    open are on the current savepoint stack, so rolling one back drops the new rows too (released ones can no
    longer be rolled back).
    """
    connection = connections[using]
    if connection.in_atomic_block:
        for _sids, func, _robust in connection.run_on_commit:
            if func is notify.outbox_changed:
                return
    transaction.on_commit(notify.outbox_changed, using=using)
