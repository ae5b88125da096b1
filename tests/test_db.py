"""Connection setup (powersync_django.db), JSON errors of the endpoints, and system check W020."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.db.backends.sqlite3.base import DatabaseWrapper
from django.test import Client, override_settings

from demo_project.todos.models import TodoList
from powersync_django import db, storage
from powersync_django import upload as uploads
from powersync_django.auth import make_token
from powersync_django.checks import check_sqlite, sqlite_warnings
from powersync_django.sync import SyncSession

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "powersync_test_file"


def file_connection(path: Path, **options: Any) -> DatabaseWrapper:
    """A Django connection to an SQLite file, configured like startproject's plus ``options``."""
    conf = connections.configure_settings({
        "default": {"ENGINE": "django.db.backends.dummy"},
        ALIAS: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path), "OPTIONS": options},
    })[ALIAS]
    return DatabaseWrapper(conf, alias=ALIAS)


@pytest.fixture
def file_db(tmp_path: Path, django_db_blocker: Any) -> Iterator[Path]:
    """A new SQLite database file; the test may open Django connections to it with file_connection()."""
    path = tmp_path / "db.sqlite3"
    sqlite3.connect(path).close()
    with django_db_blocker.unblock():
        yield path
    if hasattr(connections._connections, ALIAS):
        getattr(connections._connections, ALIAS).close()
        delattr(connections._connections, ALIAS)


def pragma(conn: DatabaseWrapper, name: str) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


# --- connection setup ----------------------------------------------------------------------------


def test_startproject_connections_get_wal_and_a_busy_timeout(file_db: Path) -> None:
    assert sqlite3.connect(file_db).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn = file_connection(file_db)
    try:
        assert pragma(conn, "journal_mode") == "wal"
        assert pragma(conn, "busy_timeout") == db.BUSY_TIMEOUT_SECONDS * 1000
    finally:
        conn.close()
    # WAL is a property of the database file: other processes use it too.
    assert sqlite3.connect(file_db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_configured_timeout_and_journal_mode_are_left_alone(file_db: Path) -> None:
    conn = file_connection(file_db, timeout=3, init_command="PRAGMA journal_mode=TRUNCATE")
    try:
        assert pragma(conn, "journal_mode") == "truncate"
        assert pragma(conn, "busy_timeout") == 3000
    finally:
        conn.close()


def test_in_memory_databases_are_left_alone(file_db: Path) -> None:
    conn = file_connection(Path(":memory:"))
    try:
        assert pragma(conn, "journal_mode") == "memory"
    finally:
        conn.close()


def test_write_transaction_takes_the_write_lock_when_it_begins(file_db: Path) -> None:
    conn = file_connection(file_db)
    setattr(connections._connections, ALIAS, conn)
    other = sqlite3.connect(file_db, timeout=0, isolation_level=None)

    def other_can_write() -> bool:
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return False
        other.execute("ROLLBACK")
        return True

    with transaction.atomic(using=ALIAS):  # the project's deferred transactions stay deferred
        assert other_can_write()
    with db.write_transaction(ALIAS):
        assert not other_can_write()
        assert conn.in_atomic_block
        with db.write_transaction(ALIAS):  # nested: a savepoint
            assert not other_can_write()
    assert conn.transaction_mode is None  # the setting is untouched afterwards
    assert other_can_write()
    other.close()


@pytest.mark.django_db(transaction=True)
def test_write_transaction_is_atomic() -> None:
    mode = getattr(connection, "transaction_mode", None)
    with pytest.raises(RuntimeError), db.write_transaction():
        TodoList.objects.create(name="gone", owner_id="u")
        raise RuntimeError
    assert not TodoList.objects.filter(name="gone").exists()
    assert getattr(connection, "transaction_mode", None) == mode


def test_busy_errors() -> None:
    assert db.is_busy_error(OperationalError("database is locked"))
    assert db.is_busy_error(OperationalError("database table is locked: powersync_django_bucketop"))
    assert not db.is_busy_error(OperationalError("no such table: x"))
    assert not db.is_busy_error(RuntimeError("database is locked"))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_postgresql_lock_timeout_is_a_busy_error() -> None:
    TodoList.objects.create(name="locked", owner_id="u")
    other = connections.create_connection("default")
    try:
        with transaction.atomic():
            TodoList.objects.filter(name="locked").update(name="locked")  # holds the row lock
            with other.cursor() as cursor, pytest.raises(OperationalError) as raised:
                cursor.execute("SET lock_timeout = '50ms'")
                cursor.execute("UPDATE todos_todolist SET name = 'x' WHERE name = 'locked'")
        assert db.is_busy_error(raised.value)
    finally:
        other.close()


# --- JSON errors of the endpoints ----------------------------------------------------------------


AUTH = {"HTTP_AUTHORIZATION": f"Token {make_token('alice')}"}
BATCH = b'{"batch": [{"op": "PUT", "type": "lists", "id": "0a3e7a0e-8d64-4a36-9c55-8e5b0d0f1c22", "data": {"name": "x"}}]}'


def _upload(client: Client):
    return client.post("/api/upload", BATCH, content_type="application/json", **AUTH)


def _checkpoint(client: Client):
    return client.get("/write-checkpoint2.json", {"client_id": "c"}, **AUTH)


def _sync(client: Client):
    return client.post("/sync/stream", b"{}", content_type="application/json", **AUTH)


def _failing(exc: Exception):
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail


ENDPOINTS = [
    pytest.param(_upload, (uploads, "apply_batch"), id="upload"),
    pytest.param(_checkpoint, (storage, "create_write_checkpoint"), id="write-checkpoint"),
    pytest.param(_sync, (SyncSession, "prepare"), id="sync"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("request_", "target"), ENDPOINTS)
def test_a_locked_database_is_503_json_with_retry_after(client: Client, request_: Any, target: tuple,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(*target, _failing(OperationalError("database is locked")))
    with caplog.at_level(logging.WARNING, logger="powersync_django"):
        response = request_(client)
    assert (response.status_code, response["Content-Type"], response["Retry-After"]) == (503, "application/json", "1")
    assert response.json() == {"error": {"code": "PSYNC_S2003", "status": 503, "name": "ServiceError",
                                         "description": "The database is busy; retry later"}}
    assert response["Access-Control-Allow-Origin"] == "*"
    [record] = [r for r in caplog.records if "database is busy" in r.getMessage()]
    assert record.exc_info and "database is locked" in str(record.exc_info[1])


@pytest.mark.django_db
@pytest.mark.parametrize(("request_", "target"), ENDPOINTS)
@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), OperationalError("no such table: secret")])
def test_unexpected_errors_are_500_json(client: Client, request_: Any, target: tuple, exc: Exception,
                                        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(*target, _failing(exc))
    # Not Django's debug page even with DEBUG on.
    with caplog.at_level(logging.ERROR, logger="powersync_django"), override_settings(DEBUG=True):
        response = request_(client)
    assert (response.status_code, response["Content-Type"]) == (500, "application/json")
    assert "Retry-After" not in response
    assert response.json() == {"error": {"code": "PSYNC_S2001", "status": 500, "name": "ServiceError",
                                         "description": "Something went wrong"}}
    [record] = [r for r in caplog.records if r.name.startswith("powersync_django")]
    assert record.levelno == logging.ERROR and record.exc_info[1] is exc


# --- system check W020 ---------------------------------------------------------------------------


def _warnings(options: dict[str, Any] | None, engine: str = "django.db.backends.sqlite3") -> list[str]:
    conf: dict[str, Any] = {"ENGINE": engine, "NAME": "db.sqlite3"}
    if options is not None:
        conf["OPTIONS"] = options
    return [m.id for m in sqlite_warnings({"default": conf})]


def test_w020_for_deferred_sqlite_transactions() -> None:
    assert _warnings(None) == ["powersync_django.W020"]
    assert _warnings({"timeout": 20}) == ["powersync_django.W020"]
    assert _warnings({"transaction_mode": "DEFERRED"}) == ["powersync_django.W020"]
    assert _warnings(db.RECOMMENDED_SQLITE_OPTIONS) == []
    assert _warnings({"transaction_mode": "immediate"}) == []
    assert _warnings(None, engine="django.db.backends.postgresql") == []
    assert _warnings(None, engine="no.such.backend") == []


def test_w020_hint_shows_the_options_to_set() -> None:
    [warning] = sqlite_warnings({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}})
    assert ("DATABASES['default']['OPTIONS'] = {\"transaction_mode\": \"IMMEDIATE\", \"timeout\": 20, "
            "\"init_command\": \"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;\"}") in warning.hint


def test_the_demo_settings_have_no_warning() -> None:
    assert check_sqlite() == []


def test_manage_py_check_warns_for_startproject_sqlite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "DATABASE_URL"}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", POWERSYNC_STARTPROJECT_DB=str(tmp_path / "db"))
    startproject = subprocess.run([sys.executable, "manage.py", "check", "--settings=startproject_settings"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert startproject.returncode == 0, startproject.stderr
    assert "(powersync_django.W020) SQLite database 'default' uses deferred transactions" in startproject.stderr
    assert '"transaction_mode": "IMMEDIATE"' in startproject.stderr
    demo = subprocess.run([sys.executable, "manage.py", "check", "--settings=demo_project.settings"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    assert "W020" not in demo.stdout + demo.stderr
