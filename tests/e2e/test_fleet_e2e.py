"""A fleet on PostgreSQL: two server processes, replicators as their own processes, official clients on each.

A change written through either server (an upload, or the ORM in another process) reaches the clients of
both; killing the replicator that holds the lease (``kill -9``) lets a standby take over within seconds. Both
with PostgreSQL LISTEN and with checkpoints announced over a Redis channel layer (``NOTIFY = "channels"``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
from conftest import Server
from live_server import MANAGE_PY, REPO_ROOT
from test_sync_e2e import TODOS, connect, seed
from test_upload_e2e import insert_todo, wait_uploaded

pytestmark = pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                reason="a fleet shares one PostgreSQL database (SQLite is one process's)")

LEASE_SECONDS = 2
FLEET_ENV = {"POWERSYNC_LOG_LEVEL": "INFO", "POWERSYNC_REPLICATOR_IN_PROCESS": "0",
             "POWERSYNC_LEASE_SECONDS": str(LEASE_SECONDS)}


@pytest.fixture(scope="module")
def fleet_database_url() -> Iterator[str]:
    base = os.environ["DATABASE_URL"]
    name = f"powersync_fleet_{os.getpid()}"
    parsed = urlparse(base)
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunparse(parsed._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Replicators:
    """``manage.py powersync_replicate`` processes sharing the lease."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(MANAGE_PY), "powersync_replicate"], cwd=REPO_ROOT,
                                env=self.server.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def holder(self, timeout: float = 20) -> subprocess.Popen:
        """The running process holding an unexpired lease (owners are ``<pid>-<random>``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owner = self.server.orm(
                "import time\nfrom powersync_django.models import ReplicationState\n"
                "s = ReplicationState.objects.filter(pk=1).first()\n"
                "result = s.lease_owner if s and s.lease_expires > time.time() else ''")
            for proc in self.procs:
                if proc.poll() is None and str(owner).startswith(f"{proc.pid}-"):
                    return proc
            time.sleep(0.2)
        raise AssertionError("no running replicator holds the lease")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


NOTIFY = {
    "listen": {},  # one PostgreSQL LISTEN per server process
    "channels": {"POWERSYNC_NOTIFY": "channels", "POWERSYNC_REDIS_URL": "redis://127.0.0.1:6379/0"},
}


@pytest.fixture(scope="module", params=list(NOTIFY))
def fleet(request, fleet_database_url, node_modules) -> Iterator[tuple[Server, Server, Replicators]]:
    """Two servers and two replicators; checkpoints announced by PostgreSQL NOTIFY or over the Redis layer."""
    env = {**FLEET_ENV, **NOTIFY[request.param], "POWERSYNC_REDIS_PREFIX": f"ps-fleet-{uuid.uuid4().hex[:8]}"}
    with Server(fleet_database_url, env=env) as first, \
            Server(fleet_database_url, env=env, migrate=False) as second:
        replicators = Replicators(first)
        replicators.start()
        replicators.start()
        try:
            yield first, second, replicators
        finally:
            replicators.stop()


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def test_changes_through_either_server_reach_clients_on_both(fleet, make_client, user):
    first, second, _ = fleet
    seed(first, user, lists=1, todos=1)
    on_first, on_second = make_client("on-first"), make_client("on-second")
    connect(on_first, first, user, "http")
    connect(on_second, second, user, "websocket")
    list_id = on_first.query("SELECT id FROM lists")[0]["id"]

    # The ORM in another process (a worker, a shell).
    first.orm(f'Todo.objects.create(list_id="{list_id}", description="from the orm", created_by="{user}")')
    # An upload through each server.
    insert_todo(on_first, list_id, "uploaded to the first")
    insert_todo(on_second, list_id, "uploaded to the second")
    wait_uploaded(on_first)
    wait_uploaded(on_second)

    expected = sorted(["from the orm", "uploaded to the first", "uploaded to the second", f"{user} todo 0-0"])
    for client in (on_first, on_second):
        got = client.wait_for("SELECT description FROM todos ORDER BY description",
                              [{"description": d} for d in expected], timeout_ms=15_000)
        assert got["matched"], got
        assert client.checksum_failures() == []
    assert on_first.query(TODOS) == on_second.query(TODOS)


def test_replicator_failover_after_kill_9(fleet, make_client, user):
    first, second, replicators = fleet
    seed(first, user, lists=1, todos=1)
    client = make_client()
    connect(client, second, user, "http")
    list_id = client.query("SELECT id FROM lists")[0]["id"]

    active = replicators.holder()
    os.kill(active.pid, signal.SIGKILL)
    active.wait()
    first.orm(f'Todo.objects.create(list_id="{list_id}", description="after the kill", created_by="{user}")')
    # The standby takes the lease once it expires (LEASE_SECONDS) and replicates what waited.
    got = client.wait_for("SELECT description FROM todos WHERE description = ?", [{"description": "after the kill"}],
                          params=["after the kill"], timeout_ms=(LEASE_SECONDS + 8) * 1000)
    assert got["matched"], got
    assert replicators.holder() is not active
    replicators.start()  # back to a standby for whatever runs next
    first.orm(f'Todo.objects.create(list_id="{list_id}", description="still flowing", created_by="{user}")')
    got = client.wait_for("SELECT description FROM todos WHERE description = ?", [{"description": "still flowing"}],
                          params=["still flowing"], timeout_ms=10_000)
    assert got["matched"], got
    assert client.checksum_failures() == []
