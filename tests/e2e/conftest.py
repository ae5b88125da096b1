"""End-to-end fixtures: a live daphne server on its own database and official-client processes.

The server runs on the same kind of database as the rest of the run: a temporary SQLite file, or (when
DATABASE_URL points at PostgreSQL) a fresh database created next to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import jwt
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from live_server import REPO_ROOT, LiveServer  # noqa: E402
from node_client import NodeClient, ensure_node_modules  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        yield f"sqlite:///{tmp_path_factory.mktemp('e2e')}/e2e.sqlite3"
        return
    name = f"powersync_e2e_{os.getpid()}"
    parsed = urlparse(base)
    admin = urlunparse(parsed._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunparse(parsed._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def node_modules() -> Path:
    return ensure_node_modules()


ORM_RUNNER = """
import json, os, sys, traceback
PRELUDE = os.environ["POWERSYNC_E2E_PRELUDE"]
import django
django.setup()
from django.db import connection
for line in sys.stdin:
    ns = {}
    try:
        exec(PRELUDE + "\\nresult = None\\n" + json.loads(line), ns)
        out = {"result": ns.get("result")}
    except Exception:
        out = {"error": traceback.format_exc()}
    connection.close()
    print(json.dumps(out, default=str), flush=True)
"""


class Server(LiveServer):
    """The live server plus helpers to run ORM code and make tokens against its database."""

    _orm_process: subprocess.Popen | None = None
    #: Executed before each :meth:`orm` snippet (imports of the project's models).
    orm_prelude = "from demo_project.todos.models import TodoList, Todo"

    def orm(self, code: str) -> object:
        """Run Python code with the demo models in scope in a helper process on the server's database.

        Returns the JSON value of ``result``. Writes commit like any other process's (a shell, a worker).
        """
        if self._orm_process is None or self._orm_process.poll() is not None:
            env = {**os.environ, **self.env, "DATABASE_URL": self.database_url,
                   "POWERSYNC_E2E_PRELUDE": self.orm_prelude}
            self._orm_process = subprocess.Popen(
                [sys.executable, "-c", ORM_RUNNER], cwd=REPO_ROOT, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
        proc = self._orm_process
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps(code) + "\n")
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline() or '{"error": "ORM helper exited"}')
        if "error" in reply:
            raise AssertionError(reply["error"])
        return reply["result"]

    def token(self, user: str, ttl: int = 3600) -> str:
        now = int(time.time())
        claims = {"sub": user, "iat": now, "exp": now + ttl, "aud": "powersync"}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def stop(self, timeout: float = 10.0) -> None:
        if self._orm_process is not None and self._orm_process.poll() is None:
            assert self._orm_process.stdin
            self._orm_process.stdin.close()
            self._orm_process.wait(timeout)
        super().stop(timeout)


@pytest.fixture(scope="session")
def server(e2e_database_url: str, node_modules: Path) -> Iterator[Server]:
    with Server(e2e_database_url, env={"POWERSYNC_LOG_LEVEL": "INFO"}) as srv:
        yield srv


@pytest.fixture
def user() -> str:
    """A user id of its own for each test, so tests sharing the server do not see each other's data."""
    return f"u-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_client(tmp_path: Path, node_modules: Path) -> Iterator:
    clients: list[NodeClient] = []

    def make(name: str = "client") -> NodeClient:
        client = NodeClient(name=name)
        client.open(str(tmp_path / f"{name}-{len(clients)}.db"))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(params=["http", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param
