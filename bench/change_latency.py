"""Benchmark: how long a committed change takes to reach connected streams.

Starts a daphne server (in-process replicator) on a fresh database, opens ``--clients`` NDJSON streams
(one per user), then repeatedly commits a todo from this process (like a shell or a worker would) and
measures, for the stream of that todo's user, the time from commit to the arrival of the data line
carrying it. Prints median and 95th percentile over ``--changes`` commits.

``.venv/bin/python bench/change_latency.py [--database-url postgres://...] [--clients 50] [--changes 40]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from initial_sync import env_for, serve  # noqa: E402


class Stream(threading.Thread):
    """Reads one NDJSON stream and records when each todo description first arrives."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port, self.token = port, token
        self.arrivals: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            self._read()
        except (OSError, http.client.HTTPException, ValueError):
            pass  # the server was stopped

    def _read(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request("POST", "/sync/stream", body="{}", headers={"Authorization": f"Token {self.token}",
                                                                   "Content-Type": "application/json"})
        resp = conn.getresponse()
        buf = b""
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                return
            now = time.perf_counter()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b'{"checkpoint_complete"'):
                    self.ready.set()
                if line.startswith(b'{"data"'):
                    for op in json.loads(line)["data"]["data"]:
                        if op.get("data"):
                            desc = json.loads(op["data"]).get("description")
                            if desc:
                                self.arrivals.setdefault(desc, now)


def prepare_database(url: str) -> None:
    """Point this process's Django at ``url``, set it up and migrate (a PostgreSQL database is flushed first)."""
    os.environ.update(env_for(url))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor == "postgresql":
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)


def lists_of_users(count: int) -> tuple[list[str], dict[str, Any]]:
    """Users ``user0``... with a todo list each, replicated (storage built)."""
    from demo_project.todos.models import TodoList
    from powersync_django.replication import replicate_now

    users = [f"user{i}" for i in range(count)]
    lists = {u: TodoList.objects.create(name="l", owner_id=u) for u in users}
    # Built before the streams open: a stream opened before the first build ends when the build changes the
    # definitions' version (a real client reconnects; these readers do not, and the change never arrived).
    replicate_now()
    return users, lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/latency.sqlite3"
        prepare_database(url)
        from django.db import connection

        from demo_project.todos.models import Todo
        from powersync_django.auth import make_token

        users, lists = lists_of_users(args.clients)
        with serve(url, f"{tmp}/server.log") as proc:
            port = proc.port
            streams = {u: Stream(port, make_token(u)) for u in users}
            for s in streams.values():
                s.start()
            for s in streams.values():
                assert s.ready.wait(60), "stream did not complete its first sync: " + open(f"{tmp}/server.log").read()
            latencies = []
            for i in range(args.changes):
                user = users[i % len(users)]
                desc = f"change {i}"
                Todo.objects.create(list=lists[user], description=desc)  # autocommit: committed on return
                committed = time.perf_counter()
                deadline = committed + 10
                while desc not in streams[user].arrivals and time.perf_counter() < deadline:
                    time.sleep(0.0005)
                latencies.append((streams[user].arrivals[desc] - committed) * 1000)
                time.sleep(0.05)
            latencies.sort()
            print(f"{connection.vendor}, {args.clients} connected streams, {args.changes} changes: "
                  f"median {statistics.median(latencies):.1f} ms, p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms, "
                  f"max {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
