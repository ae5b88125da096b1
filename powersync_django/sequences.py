"""Integer auto primary keys written with explicit values (client-created rows): keep the sequence ahead.

PowerSync clients create rows with ids they choose. For a model with an ``AutoField`` key, an insert with an
explicit id does not move PostgreSQL's sequence (identity or serial), so a later server-side insert would get
the same id and fail. After such an insert the sequence is advanced past the id. SQLite (``AUTOINCREMENT``)
and MySQL advance by themselves. UUID/text keys are still the recommendation (check ``powersync_django.W016``).
"""

from __future__ import annotations

from typing import Any

from django.db import connections, models


def is_auto_key(model: type[models.Model]) -> bool:
    """Whether the model's primary key is an integer filled by the database (an ``AutoField`` kind)."""
    return isinstance(model._meta.pk, models.AutoField | models.BigAutoField | models.SmallAutoField)


def advance_past(model: type[models.Model], value: Any, using: str) -> None:
    """After inserting ``model`` with the explicit auto key ``value``: make the next generated key larger.

    PostgreSQL only (elsewhere a no-op). ``nextval`` is atomic, so a concurrent insert that already drew a
    value is never handed one again; ids below ``value`` stay free for the sequence (gaps are harmless).
    """
    connection = connections[using]
    if connection.vendor != "postgresql" or not is_auto_key(model) or not isinstance(value, int):
        return
    pk = model._meta.pk
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, %s)",
                       [connection.ops.quote_name(model._meta.db_table), pk.column])
        row = cursor.fetchone()
        if not row or not row[0]:
            return
        sequence = row[0]
        cursor.execute("SELECT nextval(%s)", [sequence])
        drawn = int(cursor.fetchone()[0])
        if drawn <= value:
            cursor.execute("SELECT setval(%s, %s)", [sequence, value])
