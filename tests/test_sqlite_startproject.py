"""SQLite configured exactly as ``django-admin startproject`` does (no OPTIONS) must just work.

No WAL, deferred transactions, Python's 5 s busy timeout: processes run with ``startproject_settings`` on a
fresh database file. An app process writes in a loop, a client process uploads and asks for write
checkpoints, and ``manage.py powersync_replicate`` replicates, all at once. No request may fail with a
5xx, no replication batch may fail, and checkpoints must keep advancing while the app process writes.
A write lock held by another process beyond the busy timeout is a JSON 503 with Retry-After.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.skipif(not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"),
                                reason="SQLite-only test; runs in the SQLite pass")

ROOT = Path(__file__).resolve().parent.parent
UPLOADS = 25
CHECKPOINTS_WHILE_WRITING = 8
# Not a timing assertion: a guard that ends a run that stopped making progress.
STALL_GUARD_SECONDS = 180

# The app process: writes todos in a loop (its own code, deferred transactions) until <stop> exists, and
# logs after each write the newest checkpoint it can see.
APP_WRITER = r'''
import json, os, sys
import django
django.setup()
from django.db.models import Max
from demo_project.todos.models import Todo, TodoList
from powersync_django.models import Checkpoint

log_path, stop_path = sys.argv[1], sys.argv[2]
with open(log_path, "a") as log:
    lst = TodoList.objects.create(name="app", owner_id="app")
    n = 0
    while not os.path.exists(stop_path):
        try:
            todo = Todo.objects.create(list=lst, description=f"app {n}")
            todo.completed = True
            todo.save()
            n += 1
            cp = Checkpoint.objects.aggregate(m=Max("id"))["m"] or 0
            log.write(json.dumps({"n": n, "cp": cp}) + "\n")
        except Exception as exc:
            log.write(json.dumps({"error": repr(exc)}) + "\n")
        log.flush()
'''

# A client: uploads transactions and asks for a write checkpoint after each, through Django's request
# handling (unhandled exceptions become 500 responses, as under a server).
CLIENT = r'''
import json, sys, uuid
import django
django.setup()
from django.test import Client
from powersync_django.auth import make_token

count, log_path = int(sys.argv[1]), sys.argv[2]
client = Client(raise_request_exception=False)
auth = {"HTTP_AUTHORIZATION": f"Token {make_token('alice')}"}
results = []


def record(kind, response):
    results.append({"kind": kind, "status": response.status_code, "type": response.get("Content-Type"),
                    "retry_after": response.get("Retry-After"), "body": response.content[:300].decode("utf-8", "replace")})


def upload(batch):
    record("upload", client.post("/api/upload", json.dumps({"batch": batch}), content_type="application/json", **auth))


list_id = str(uuid.uuid4())
upload([{"op": "PUT", "type": "lists", "id": list_id, "data": {"name": "uploaded"}}])
for i in range(count):
    upload([{"op": "PUT", "type": "todos", "id": str(uuid.uuid4()), "data": {"list_id": list_id, "description": f"up {i}"}}])
    record("checkpoint", client.get("/write-checkpoint2.json", {"client_id": "c1"}, **auth))
with open(log_path, "w") as f:
    json.dump(results, f)
'''


def _env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "DATABASE_URL"}
    env.update(DJANGO_SETTINGS_MODULE="startproject_settings", POWERSYNC_STARTPROJECT_DB=str(db),
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", PYTHONUNBUFFERED="1")
    return env


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for(condition: Callable[[], bool], what: str, alive: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STALL_GUARD_SECONDS
    while not condition():
        for p in alive:
            assert p.poll() is None, f"process {p.args[1:3]} ended early while waiting for {what}"
        assert time.monotonic() < deadline, f"no progress: {what}"
        time.sleep(0.05)


def _query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=60)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated startproject-style database file (tests work on copies)."""
    db = tmp_path_factory.mktemp("startproject") / "db.sqlite3"
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=_env(db),
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return db


@pytest.fixture
def db_file(migrated: Path, tmp_path: Path) -> Path:
    """A copy of the migrated database, in the rollback journal mode a new SQLite database starts in."""
    db = tmp_path / "db.sqlite3"
    src, dst = sqlite3.connect(migrated), sqlite3.connect(db)
    try:
        src.backup(dst)
        assert dst.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    finally:
        src.close()
        dst.close()
    return db


def test_startproject_sqlite_concurrent_app_writes_uploads_and_replication(db_file: Path, tmp_path: Path) -> None:
    db = db_file
    env = _env(db)

    app_log, stop, client_log = tmp_path / "app.log", tmp_path / "stop", tmp_path / "client.json"
    replicator = _popen(["manage.py", "powersync_replicate"], env)
    app = _popen(["-c", APP_WRITER, str(app_log), str(stop)], env)
    client = None
    try:
        _wait_for(lambda: len(_lines(app_log)) > 0, "the app process writes", [app, replicator])
        client = _popen(["-c", CLIENT, str(UPLOADS), str(client_log)], env)
        _wait_for(lambda: client.poll() is not None, "the client finishes", [app, replicator])
        client_out = client.communicate()[0]
        # While the app process keeps writing, the checkpoints it sees keep advancing.
        first = next(r["cp"] for r in _lines(app_log) if "cp" in r)
        _wait_for(lambda: max((r.get("cp", 0) for r in _lines(app_log)), default=0)
                  >= first + CHECKPOINTS_WHILE_WRITING, "checkpoints advance while the app writes",
                  [app, replicator])
        stop.touch()
        app_out = app.communicate(timeout=120)[0]
        # Everything written gets replicated.
        _wait_for(lambda: _query(db, "SELECT COUNT(*) FROM powersync_django_outboxentry")[0][0] == 0,
                  "the outbox drains", [replicator])
    finally:
        stop.touch()
        for p in (app, client):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
        replicator.send_signal(signal.SIGTERM)
        replicator_out = replicator.communicate(timeout=60)[0]

    assert client.returncode == 0, client_out
    results = json.loads(client_log.read_text())
    assert len(results) == 1 + 2 * UPLOADS
    failed = [r for r in results if r["status"] != 200]
    assert not failed, failed
    errors = [r for r in _lines(app_log) if "error" in r]
    assert not errors, errors[:5]
    assert app.returncode == 0, app_out
    assert "replication batch failed" not in replicator_out, replicator_out[-3000:]
    assert "Traceback" not in replicator_out, replicator_out[-3000:]

    todos = _query(db, "SELECT COUNT(*) FROM todos_todo")[0][0]
    synced = _query(db, "SELECT COUNT(DISTINCT object_id) FROM powersync_django_bucketop "
                        "WHERE object_type = 'todos'")[0][0]
    assert todos == synced >= UPLOADS


# Another process holds the write lock for longer than the busy timeout (shortened here to 0.2 s).
LOCKED = r'''
import json, sqlite3, sys
import django
django.setup()
from django.conf import settings
from django.test import Client
from powersync_django import db
from powersync_django.auth import make_token

db.BUSY_TIMEOUT_SECONDS = 0.2
client = Client()  # an exception escaping a view fails this script
auth = {"HTTP_AUTHORIZATION": f"Token {make_token('alice')}"}
batch = json.dumps({"batch": [{"op": "PUT", "type": "lists", "id": "0a3e7a0e-8d64-4a36-9c55-8e5b0d0f1c22", "data": {"name": "x"}}]})


def result(response):
    return {"status": response.status_code, "type": response["Content-Type"], "retry_after": response.get("Retry-After"),
            "body": response.json()}


out = {"before": result(client.get("/write-checkpoint2.json", **auth))}
holder = sqlite3.connect(settings.DATABASES["default"]["NAME"], isolation_level=None)
holder.execute("BEGIN IMMEDIATE")
out["upload"] = result(client.post("/api/upload", batch, content_type="application/json", **auth))
out["checkpoint"] = result(client.get("/write-checkpoint2.json", **auth))
holder.execute("ROLLBACK")
out["upload_after"] = result(client.post("/api/upload", batch, content_type="application/json", **auth))
print("RESULT " + json.dumps(out))
'''


def test_a_database_locked_for_longer_than_the_busy_timeout_answers_503_json(db_file: Path) -> None:
    run = subprocess.run([sys.executable, "-c", LOCKED], cwd=ROOT, env=_env(db_file), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert out["before"]["status"] == out["upload_after"]["status"] == 200
    for key in ("upload", "checkpoint"):
        r = out[key]
        assert (r["status"], r["type"], r["retry_after"]) == (503, "application/json", "1"), r
        assert r["body"] == {"error": {"code": "PSYNC_S2003", "status": 503, "name": "ServiceError",
                                       "description": "The database is busy; retry later"}}
    # Logged with the traceback.
    assert run.stderr.count("the database is busy; answered 503") == 2, run.stderr
    assert "OperationalError: database is locked" in run.stderr
