"""Bulk statements on the package's own tables, cheaper than the ORM for thousands of rows per batch.

PostgreSQL: inserts use ``COPY ... FROM STDIN`` (psycopg 3), upserts COPY into a temporary table and one
``INSERT ... SELECT ... ON CONFLICT``, key lookups and deletions ``= ANY(<array>)``: no statement has a
parameter per value (psycopg's client-side binding parses and quotes each one, and dumps arrays in Python:
both cost more than the database's work). SQLite: ``executemany`` of one-row
statements and chunked ``IN (...)`` lookups, both prepared once by sqlite3.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db import connections, models, transaction

# Values per ``IN (...)`` on SQLite (its default limit on host parameters is 32766; older builds 999).
SQLITE_IN_CHUNK = 900


class Table:
    """Bulk statements on one model's table with a fixed list of fields."""

    def __init__(self, model: type[models.Model], fields: Sequence[str], conflict: str = "",
                 updates: str = "") -> None:
        """``conflict``: the key column of an upsert; ``updates``: its SET clause (``{t}`` is the table)."""
        self.model, self.fields, self.conflict, self.updates = model, list(fields), conflict, updates

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    def _columns(self) -> list[str]:
        return [self.model._meta.get_field(f).column for f in self.fields]

    def _tail(self) -> str:
        if not self.conflict:
            return ""
        return f" ON CONFLICT ({self.conflict}) DO UPDATE SET {self.updates.format(t=self.table)}"

    def write(self, using: str, rows: list[tuple]) -> None:
        """Insert (or upsert, with ``conflict``) ``rows``: tuples of values in the order of ``fields``."""
        if not rows:
            return
        connection = connections[using]
        columns = ", ".join(self._columns())
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                if not self.conflict:
                    _copy(connection, cursor, f"COPY {self.table} ({columns}) FROM STDIN", rows)
                    return
                if _may_create_temp_tables(connection, cursor):
                    # Upsert: COPY into a temporary table with the same columns, then one INSERT ... SELECT, in
                    # one transaction (the table is emptied at every commit).
                    stage = f"powersync_stage_{self.table}"
                    with transaction.atomic(using=using, savepoint=False):
                        self._upsert_via(cursor, stage, columns, rows)
                    return
            marks = ", ".join(["%s"] * len(self.fields))
            cursor.executemany(f"INSERT INTO {self.table} ({columns}) VALUES ({marks}){self._tail()}", rows)

    def _upsert_via(self, cursor: Any, stage: str, columns: str, rows: list[tuple]) -> None:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                       f"SELECT {columns} FROM {self.table} WITH NO DATA")
        cursor.execute(f"DELETE FROM {stage}")  # noqa: S608  (empty unless written twice in a transaction)
        _copy(cursor.db, cursor, f"COPY {stage} ({columns}) FROM STDIN", rows)
        cursor.execute(f"INSERT INTO {self.table} ({columns}) SELECT {columns} FROM {stage}{self._tail()}")  # noqa: S608


_TEMP_ALLOWED = "_powersync_temp_allowed"  # connection attribute: (DB-API connection, bool)


def _may_create_temp_tables(connection: Any, cursor: Any) -> bool:
    """Whether this PostgreSQL session may create temporary tables (managed services sometimes revoke the
    ``TEMP`` privilege; upserts then use ``executemany``). Asked once per database session."""
    known = connection.__dict__.get(_TEMP_ALLOWED)
    if known is None or known[0] is not connection.connection:
        cursor.execute("SELECT has_database_privilege(current_database(), 'TEMP')")
        known = connection.__dict__[_TEMP_ALLOWED] = (connection.connection, bool(cursor.fetchone()[0]))
    return known[1]


def _copy(connection: Any, cursor: Any, sql: str, rows: list[tuple]) -> None:
    """``COPY ... FROM STDIN`` of ``rows`` through the driver's cursor; its errors become Django's (with the
    driver's as ``__cause__``), like those of ``cursor.execute``: the replicator tells a transient failure
    (serialization, disk full, timeout) from an entry's bad data by them."""
    with connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)


def select_in(using: str, sql: str, values: Iterable[Any]) -> Iterator[tuple]:
    """Rows of ``sql``, whose ``{keys}`` is a condition on a list of values (``source {keys}``)."""
    values = list(values)
    if not values:
        return
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(sql.format(keys="= ANY(%s)"), [values])
            yield from cursor.fetchall()
            return
        for start in range(0, len(values), SQLITE_IN_CHUNK):
            chunk = values[start:start + SQLITE_IN_CHUNK]
            cursor.execute(sql.format(keys=f"IN ({', '.join(['%s'] * len(chunk))})"), chunk)
            yield from cursor.fetchall()


def delete_in(using: str, model: type[models.Model], column: str, values: Iterable[Any]) -> None:
    """Delete the rows of ``model`` whose ``column`` is one of ``values``."""
    values = list(values)
    if not values:
        return
    connection = connections[using]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", [values])  # noqa: S608
            return
        for start in range(0, len(values), SQLITE_IN_CHUNK):
            chunk = values[start:start + SQLITE_IN_CHUNK]
            cursor.execute(f"DELETE FROM {table} WHERE {column} IN ({', '.join(['%s'] * len(chunk))})", chunk)  # noqa: S608
