"""Benchmark: change latency of commits made by short-lived processes (``manage.py shell -c``).

Starts a daphne server (demo project, in-process replicator) on a fresh database, opens ``--clients`` NDJSON
streams (one per user), then ``--changes`` times runs ``manage.py shell -c "...create(...)"`` in a new process,
which prints the wall-clock time right after its commit; the stream of that todo's user records the wall-clock
time the data line carrying it arrives. For comparison the same number of todos is then committed from this
(long-lived) process. Prints the medians and maxima of both.

``--server runserver`` serves with ``manage.py runserver`` (daphne's, DEBUG on, the autoreloader running) as in
development; the default is a plain daphne process.

``.venv/bin/python bench/process_latency.py --database-url postgres://postgres@127.0.0.1:5432/bench_latency
[--clients 5] [--changes 10] [--server runserver]``  (the database is flushed; SQLite when no URL is given)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from change_latency import Stream, lists_of_users, prepare_database  # noqa: E402
from initial_sync import env_for, free_port, serve, stop, wait_for_port  # noqa: E402

SHELL_CODE = """
import time
from demo_project.todos.models import Todo
Todo.objects.create(list_id={list_id!r}, description={desc!r})
print("committed", time.time(), flush=True)
time.sleep({linger})
"""


class WallStream(Stream):
    """A stream whose arrival times are wall-clock (comparable across processes)."""

    def wall(self, desc: str) -> float | None:
        at = self.arrivals.get(desc)
        return None if at is None else at - time.perf_counter() + time.time()


@contextlib.contextmanager
def runserver(url: str, log_path: str):
    """``manage.py runserver`` (DEBUG on, autoreloader) on a free port; yields an object with ``port``."""
    port = free_port()
    env = {**env_for(url), "DJANGO_DEBUG": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                                stdout=log, stderr=log, start_new_session=True)
        proc.port = port  # type: ignore[attr-defined]
        try:
            wait_for_port(port, 60)
            yield proc
        finally:
            # The autoreloader's child too.
            stop(proc, lambda: os.killpg(proc.pid, signal.SIGTERM), lambda: os.killpg(proc.pid, signal.SIGKILL))


def checkpoint_time() -> float:
    """When the newest checkpoint row was created (the replicator's clock: the same machine)."""
    from powersync_django.models import Checkpoint

    return Checkpoint.objects.latest("id").created_at.timestamp()


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    return (f"{name}: median {statistics.median(values):.1f} ms, min {values[0]:.1f} ms, "
            f"max {values[-1]:.1f} ms (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--server-log", default="", help="keep the server's log in this file")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="the short-lived process sleeps this long after its commit before it exits")
    parser.add_argument("--server", choices=["daphne", "runserver"], default="daphne")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/latency.sqlite3"
        prepare_database(url)
        from django.db import connection

        from demo_project.todos.models import Todo
        from powersync_django.auth import make_token

        users, lists = lists_of_users(args.clients)
        log = args.server_log or f"{tmp}/server.log"
        with (runserver(url, log) if args.server == "runserver" else serve(url, log)) as proc:
            streams = {u: WallStream(proc.port, make_token(u)) for u in users}
            for s in streams.values():
                s.start()
            for s in streams.values():
                assert s.ready.wait(60), "stream did not complete its first sync: " + open(log).read()
            short, long, short_cp, long_cp = [], [], [], []
            for i in range(args.changes):
                user = users[i % len(users)]
                desc = f"shell change {i}"
                code = SHELL_CODE.format(list_id=str(lists[user].pk), desc=desc, linger=args.linger)
                shell = subprocess.Popen([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
                                         env=env_for(url), stdout=subprocess.PIPE, text=True)
                line = ""
                while shell.stdout is not None and not line.startswith("committed"):
                    line = shell.stdout.readline()
                    assert line, "the shell process ended without committing"
                committed = float(line.split()[1])
                deadline = time.time() + 30
                while desc not in streams[user].arrivals and time.time() < deadline:
                    time.sleep(0.001)
                arrived = streams[user].wall(desc)
                assert arrived is not None, f"{desc} never arrived: " + open(log).read()
                short.append((arrived - committed) * 1000)
                short_cp.append((checkpoint_time() - committed) * 1000)
                assert shell.wait(30) == 0
                time.sleep(0.2)
            for i in range(args.changes):
                user = users[i % len(users)]
                desc = f"process change {i}"
                Todo.objects.create(list=lists[user], description=desc)
                committed = time.time()
                deadline = committed + 10
                while desc not in streams[user].arrivals and time.time() < deadline:
                    time.sleep(0.0005)
                arrived = streams[user].wall(desc)
                assert arrived is not None, f"{desc} never arrived"
                long.append((arrived - committed) * 1000)
                long_cp.append((checkpoint_time() - committed) * 1000)
                time.sleep(0.2)
            print(f"{connection.vendor}, {args.server}, {args.clients} streams")
            print(summary("  commit from a short-lived process (manage.py shell -c) -> stream", short))
            print(summary("      of which commit -> checkpoint row written", short_cp))
            print(summary("  commit from a long-lived process -> stream", long))
            print(summary("      of which commit -> checkpoint row written", long_cp))


if __name__ == "__main__":
    main()
