"""bulk_sql: the replicator's bulk statements (COPY / temporary-table upserts on PostgreSQL, executemany on
SQLite) write, update, find and delete exactly the rows given."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from powersync_django.bulk_sql import SQLITE_IN_CHUNK, Table, delete_in, select_in
from powersync_django.models import BucketOp, RowBuckets

ROWS = Table(RowBuckets, ["source", "buckets", "version"], "source",
             "buckets = excluded.buckets, version = excluded.version")
OPS = Table(BucketOp, ["op_id", "bucket", "op", "object_type", "object_id", "data", "checksum"])


def _rows() -> dict[str, tuple[str, int]]:
    return {r.source: (r.buckets, r.version) for r in RowBuckets.objects.all()}


@pytest.mark.django_db(transaction=True)
def test_upsert_outside_a_transaction_keeps_its_rows():
    """The PostgreSQL upsert stages rows in a table emptied at commit: in autocommit it runs in its own
    transaction, or the INSERT would find the staged rows gone."""
    assert connection.get_autocommit()
    ROWS.write("default", [("a", "[1]", 1), ("b", "[2]", 1)])
    assert _rows() == {"a": ("[1]", 1), "b": ("[2]", 1)}


@pytest.mark.django_db
def test_upsert_updates_and_inserts_twice_in_one_transaction():
    with transaction.atomic():
        ROWS.write("default", [("a", "[1]", 1), ("b", "[2]", 1)])
        ROWS.write("default", [("b", "[3]", 2), ("c", "[4]", 2)])  # the stage is emptied between the two
    assert _rows() == {"a": ("[1]", 1), "b": ("[3]", 2), "c": ("[4]", 2)}


@pytest.mark.django_db
def test_copy_insert_keeps_nulls_and_special_characters():
    text = 'tab\there "quote" \\ backslash\nnewline ü'
    OPS.write("default", [(1, "b", "PUT", "t", "1", text, 5), (2, "b", "REMOVE", "t", "1", None, 2**32 - 1)])
    assert list(BucketOp.objects.order_by("op_id").values_list("data", "checksum")) == [(text, 5), (None, 2**32 - 1)]


@pytest.mark.django_db
def test_select_and_delete_by_many_keys():
    keys = [f"k{i}" for i in range(SQLITE_IN_CHUNK * 2 + 5)]  # several chunks on SQLite
    ROWS.write("default", [(k, "[]", 1) for k in keys])
    wanted = keys[::2] + ["missing"]
    found = {r[0] for r in select_in("default", f"SELECT source FROM {RowBuckets._meta.db_table} WHERE source {{keys}}",
                                     wanted)}
    assert found == set(keys[::2])
    delete_in("default", RowBuckets, "source", keys[1::2])
    assert set(_rows()) == set(keys[::2])
    assert list(select_in("default", "SELECT 1 WHERE 1 {keys}", [])) == []


@pytest.mark.django_db(transaction=True)
def test_upsert_works_for_a_role_without_the_temp_privilege():
    """Managed PostgreSQL services may revoke ``TEMP``: the upsert then runs without a staging table (before,
    every replication batch failed with "permission denied" and was retried forever)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL-only test; runs in the PostgreSQL pass")
    role = "powersync_test_no_temp"
    database = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if not cursor.fetchone():
            cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f'REVOKE TEMP ON DATABASE "{database}" FROM PUBLIC')
        cursor.execute(f"GRANT ALL ON {RowBuckets._meta.db_table} TO {role}")
    connection.close()  # a new session: no staging table from before, the privilege asked afresh
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SET ROLE {role}")
        with transaction.atomic():
            ROWS.write("default", [("a", "[1]", 1), ("b", "[2]", 1)])
            ROWS.write("default", [("b", "[3]", 2)])
        assert _rows() == {"a": ("[1]", 1), "b": ("[3]", 2)}
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(f'GRANT TEMP ON DATABASE "{database}" TO PUBLIC')
            cursor.execute(f"REVOKE ALL ON {RowBuckets._meta.db_table} FROM {role}")
