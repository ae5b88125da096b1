"""Benchmark: a full rebuild (``manage.py powersync_resync``) of N rows, and app writes made meanwhile.

``.venv/bin/python bench/rebuild.py [--rows 100000] [--database-url postgres://...]`` (SQLite in a temporary
file by default). Seeds N todos (lists of 1,000) without capturing them, builds storage once, then runs
``powersync_resync`` (this process takes the lease and rebuilds) while a writer process commits one small
captured write every 10 ms and records how long each took. Prints the rebuild time and rate, and the
writes' median / p99 / max latency (what an app waits for while a rebuild runs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Commits one small captured write every 10 ms until told to stop; prints the latencies as JSON.
WRITER = """
import json, sys, threading, time
import django
django.setup()
from demo_project.todos.models import TodoList
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
waits = []
print("ready", flush=True)
while not stop.is_set():
    t0 = time.monotonic()
    TodoList.objects.create(name="written during the rebuild", owner_id="writer")
    waits.append(time.monotonic() - t0)
    stop.wait(0.01)
print(json.dumps(waits), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp.name}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
    os.environ["POWERSYNC_LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from demo_project.todos.models import Todo, TodoList
    from powersync_django.replication import replicate_now

    if connection.vendor == "postgresql":
        call_command("migrate", verbosity=0)
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)
    n = args.rows
    lists = [TodoList(name=f"list {i}", owner_id=f"user{i % 10}") for i in range(max(1, n // 1000))]
    TodoList.objects.bulk_create(lists)  # plain bulk_create: nothing captured, as with rows predating the app
    todos = [Todo(list=lists[i % len(lists)], description=f"todo number {i} with some text", created_by="bench")
             for i in range(n - len(lists))]
    for start in range(0, len(todos), 5000):
        Todo.objects.bulk_create(todos[start:start + 5000])
    started = time.monotonic()
    replicate_now()
    print(f"{connection.vendor}: first build of {n} rows: {time.monotonic() - started:.2f} s")

    for run in range(args.runs):
        # The writer is another process, as an app server is (a thread here would also wait for the GIL).
        writer = subprocess.Popen([sys.executable, "-c", WRITER], cwd=ROOT, env=os.environ.copy(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdin is not None
        writer.stdout.readline()  # ready
        out = io.StringIO()
        started = time.monotonic()
        call_command("powersync_resync", stdout=out)
        elapsed = time.monotonic() - started
        writer.stdin.write("stop\n")
        writer.stdin.flush()
        waits = sorted(json.loads(writer.stdout.readline()))
        writer.wait()
        progress = [line for line in out.getvalue().splitlines() if line.startswith("Version")]
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0.0
        print(f"{connection.vendor}: resync {run + 1} of {n} rows: {elapsed:.2f} s ({n / elapsed:,.0f} rows/s); "
              f"{len(waits)} concurrent writes: median {statistics.median(waits) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {waits[-1] * 1000:.1f} ms")
        if progress:
            print("  last progress line:", progress[-1])
    tmp.cleanup()


if __name__ == "__main__":
    main()
