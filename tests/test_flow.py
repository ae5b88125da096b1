"""A client that stops reading cannot make the server buffer its sync: bounded bytes per stalled stream,
under the production server (uvicorn) and under daphne (``runserver``, with powersync's flow control).

Each server runs in a subprocess on its own database seeded with a ~40 MB initial sync, serving
``tests/stall_asgi.py`` (the demo app, counting the body bytes each stream handed to the server). Two
connections read the response headers and stop reading. Once each stream waits in ``send()`` with no
progress (or has produced its whole sync), the bytes produced minus the bytes the client received, i.e.
what sits in the server's buffers and the kernel's socket buffers, must stay below 8 MB plus the kernel's
socket buffer limits.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "flow-test-secret-0123456789abcdef0123456789abcdef"
TODOS = 16_000
DESCRIPTION_BYTES = 2_500  # TODOS * DESCRIPTION_BYTES: ~40 MB of initial sync
SERVER_BUFFER_LIMIT = 8 * 1024 * 1024
CONNECTIONS = 2

SERVERS = {
    "uvicorn": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--lifespan", "off",
                "--log-level", "warning", "stall_asgi:application"],
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "stall_asgi:application"],
}

SEED = f"""
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from demo_project.todos.models import Todo, TodoList
from powersync_django.replication import replicate_now
lst = TodoList.objects.create(name="big", owner_id="stall")
Todo.objects.bulk_create([Todo(list=lst, description=f"{{i:06d}}" + "x" * {DESCRIPTION_BYTES}, created_by="stall")
                          for i in range({TODOS})], batch_size=2000)
replicate_now()
"""


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=url, POWERSYNC_JWT_SECRET=SECRET, DJANGO_SETTINGS_MODULE="demo_project.settings",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), POWERSYNC_LOG_LEVEL="WARNING",
               DJANGO_DEBUG="0")
    return env


@pytest.fixture(scope="module")
def stall_database(tmp_path_factory: pytest.TempPathFactory, django_db_setup) -> Iterator[tuple[str, str]]:
    """(database URL, token of user 'stall') of a database seeded with one large list of todos."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        url, admin, name = f"sqlite:///{tmp_path_factory.mktemp('flow')}/stall.sqlite3", None, None
    else:
        auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
        server = f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        name, admin = f"{db['NAME']}_stall", f"{server}/postgres"
        url = f"{server}/{name}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
    env = _env(url)
    subprocess.run([sys.executable, "-c", SEED], cwd=ROOT, env=env, check=True, timeout=300)
    out = subprocess.run([sys.executable, "manage.py", "powersync_token", "stall"], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True, timeout=60).stdout
    yield url, out.strip().splitlines()[-1]
    if admin:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(server: str, url: str, log: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *(a.format(port=port) for a in SERVERS[server])], cwd=ROOT,
                                env=_env(url), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{server} did not start:\n{log.read_text()}")


def _stalled_reader(port: int, token: str) -> tuple[socket.socket, int]:
    """A sync request whose client reads the response headers and then stops reading: (socket, bytes read)."""
    body = json.dumps({"buckets": [], "include_checksum": True, "raw_data": True, "client_id": "stall"}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST /sync/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Token {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1024)
        assert chunk, "connection closed before the response headers"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return sock, len(received)


def _streams(port: int) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/__sent__")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _wait_until_stalled(port: int) -> list[dict]:
    """Poll until every stream either produced its whole sync or waits in send() without progress."""
    history: list[list[dict]] = []
    deadline = time.monotonic() + 120  # only against a hang
    while time.monotonic() < deadline:
        streams = _streams(port)
        history.append(streams)
        if len(streams) == CONNECTIONS:
            if all(s["complete"] for s in streams):
                return streams
            recent = history[-5:]
            if len(recent) == 5 and all(len(h) == CONNECTIONS for h in recent) and all(
                all(h[i]["in_send"] or h[i]["complete"] for h in recent)
                and len({h[i]["bytes"] for h in recent}) == 1
                for i in range(CONNECTIONS)
            ):
                return streams
        time.sleep(0.2)
    raise AssertionError(f"streams neither stalled nor completed: {history[-1] if history else None}")


def _kernel_buffers(sock: socket.socket) -> int:
    """Most bytes the kernel may hold for one connection: the server's send buffer + the client's receive buffer."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        wmem_max = 4 * 1024 * 1024
    return wmem_max + sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_a_stalled_reader_leaves_a_bounded_amount_buffered(server, stall_database, tmp_path):
    url, token = stall_database
    proc, port = _serve(server, url, tmp_path / "server.log")
    readers: list[tuple[socket.socket, int]] = []
    try:
        readers = [_stalled_reader(port, token) for _ in range(CONNECTIONS)]
        streams = _wait_until_stalled(port)
        bound = SERVER_BUFFER_LIMIT + _kernel_buffers(readers[0][0])
    finally:
        for sock, _ in readers:
            sock.close()
        proc.terminate()
        proc.wait(10)
    assert bound * 2 < TODOS * DESCRIPTION_BYTES  # the sync is far larger than what may be buffered
    received = min(n for _, n in readers)
    for stream in streams:
        assert not stream["complete"], f"{server} buffered the whole sync for a client that reads nothing"
        assert stream["bytes"] - received <= bound, (stream, bound)
