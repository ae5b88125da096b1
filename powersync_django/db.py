"""Database connection setup: SQLite made safe for concurrent use, and busy-database errors recognised.

SQLite as ``django-admin startproject`` configures it (no ``OPTIONS``) uses a rollback journal (readers and
the writer block each other), Python's 5 s busy timeout, and deferred transactions, whose first write fails
at once with ``database is locked`` when another connection wrote since their first read. This module:

- :func:`configure_connection` (a ``connection_created`` receiver): on each new SQLite connection, sets a
  busy timeout of :data:`BUSY_TIMEOUT_SECONDS` unless ``OPTIONS["timeout"]`` is set, and switches the
  database to WAL (readers never wait for the writer) unless ``OPTIONS["init_command"]`` sets a
  ``journal_mode``. In-memory databases are left alone.
- :func:`write_transaction`: ``transaction.atomic`` that, on SQLite, starts with ``BEGIN IMMEDIATE`` (the
  write lock is taken up front, waiting for it under the busy timeout) whatever ``transaction_mode`` the
  project uses. powersync_django's read-then-write transactions (replication, uploads, write checkpoints,
  compaction) use it. The project's own transactions keep its settings: ``checks.py`` warns about them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 20
# What ``manage.py check`` recommends (powersync_django.W020): the settings this module cannot apply to the
# project's own transactions.
RECOMMENDED_SQLITE_OPTIONS: dict[str, Any] = {
    "transaction_mode": "IMMEDIATE",
    "timeout": BUSY_TIMEOUT_SECONDS,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}
# PostgreSQL SQLSTATEs of a transaction that lost a race and may simply be retried.
_RETRYABLE_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
})
_IMMEDIATE = "_powersync_begin_immediate"


def _sets_journal_mode(options: dict[str, Any]) -> bool:
    return "journal_mode" in str(options.get("init_command") or "").lower()


def configure_connection(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """``connection_created`` receiver: busy timeout and WAL for SQLite connections that lack them."""
    if connection.vendor != "sqlite":
        return
    if getattr(connection, _IMMEDIATE, False):
        connection.transaction_mode = "IMMEDIATE"  # reconnected inside write_transaction
    options = connection.settings_dict.get("OPTIONS") or {}
    raw = connection.connection
    try:
        if "timeout" not in options:
            raw.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        if _sets_journal_mode(options) or connection.is_in_memory_db():
            return
        if str(raw.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return  # WAL is stored in the database file: usually another connection switched it already
        mode = str(raw.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if mode != "wal":
            logger.warning("powersync: could not switch SQLite database %r to WAL (journal mode stays %r)",
                           connection.alias, mode)
    except connection.Database.Error as exc:
        # e.g. another process holds a lock for longer than the timeout: the next connection tries again.
        logger.warning("powersync: could not configure SQLite connection %r: %s", connection.alias, exc)


@contextmanager
def write_transaction(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """``transaction.atomic(using=using)``; on SQLite the outermost block begins with ``BEGIN IMMEDIATE``.

    A deferred SQLite transaction that reads and then writes fails with ``database is locked`` when another
    connection committed a write in between (no busy wait can help it); an immediate one waits for the
    write lock when it begins, under the busy timeout, and then cannot fail that way.
    """
    conn = connections[using]
    if conn.vendor != "sqlite" or conn.in_atomic_block:
        with transaction.atomic(using=using):
            yield
        return
    with ExitStack() as stack:
        conn.ensure_connection()
        previous = conn.transaction_mode
        # Django's SQLite backend begins atomic blocks with f"BEGIN {connection.transaction_mode}".
        conn.transaction_mode = "IMMEDIATE"
        setattr(conn, _IMMEDIATE, True)
        try:
            stack.enter_context(transaction.atomic(using=using))
        finally:
            setattr(conn, _IMMEDIATE, False)
            conn.transaction_mode = previous
        yield


def is_busy_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that goes away by retrying: a locked SQLite database, a
    PostgreSQL deadlock, serialization failure or lock timeout."""
    if not isinstance(exc, DatabaseError):
        return False
    message = str(exc).lower()
    if "database is locked" in message or "database table is locked" in message:
        return True
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) in _RETRYABLE_SQLSTATES
