"""Bulk statements on the package's own tables, cheaper than the ORM for thousands of rows per batch.

PostgreSQL: plain inserts use ``COPY ... FROM STDIN`` (psycopg 3), upserts ``INSERT ... SELECT FROM
unnest(<one array per column>) ON CONFLICT``, key lookups and deletions ``= ANY(<array>)``: a handful of
parameters per statement whatever the row count (a multi-row VALUES statement has one parameter per value,
and psycopg's client-side binding parses and quotes each of them). SQLite: ``executemany`` of one-row
statements and chunked ``IN (...)`` lookups, both prepared once by sqlite3.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db import connections, models

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
                    with cursor.cursor.copy(f"COPY {self.table} ({columns}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    return
                types = [self.model._meta.get_field(f).db_type(connection) for f in self.fields]
                arrays = ", ".join(f"%s::{_base_type(t)}[]" for t in types)
                cursor.execute(f"INSERT INTO {self.table} ({columns}) SELECT * FROM unnest({arrays}){self._tail()}",
                               [list(column) for column in zip(*rows, strict=True)])
                return
            marks = ", ".join(["%s"] * len(self.fields))
            cursor.executemany(f"INSERT INTO {self.table} ({columns}) VALUES ({marks}){self._tail()}", rows)


def _base_type(db_type: str) -> str:
    """``varchar(500)`` -> ``varchar``: array casts need no length (and a longer value must fail at insert)."""
    return db_type.partition("(")[0]


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
