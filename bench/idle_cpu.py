"""Benchmark: CPU used by an idle server process (share of one core).

Starts an ASGI server with the demo project (in-process replicator) on a fresh database, lets it settle, then
reads the process's utime+stime from ``/proc/<pid>/stat`` over ``--seconds``, in two states: no stream ever
opened (replicator only), and one idle sync stream open (the checkpoint hub and its listener running too).
Prints the share of one core of each, median over ``--runs``.

``.venv/bin/python bench/idle_cpu.py [--database-url postgres://...] [--server daphne|uvicorn] [--seconds 60]
[--runs 3]``  (the database is flushed; SQLite when no URL is given)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from change_latency import Stream, prepare_database  # noqa: E402
from initial_sync import serve  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def share(pid: int, seconds: float) -> float:
    """Percent of one core used by ``pid`` over the next ``seconds``."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--server", default="daphne")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/idle.sqlite3"
        prepare_database(url)
        from django.db import connection

        from demo_project.todos.models import TodoList
        from powersync_django.auth import make_token
        from powersync_django.replication import replicate_now

        TodoList.objects.create(name="l", owner_id="idle")
        replicate_now()
        connection.close()
        no_stream, one_stream = [], []
        for _ in range(args.runs):
            with serve(url, f"{tmp}/server.log", server=args.server) as proc:
                time.sleep(3)  # startup: imports, first replication batch
                no_stream.append(share(proc.pid, args.seconds))
                stream = Stream(proc.port, make_token("idle"))
                stream.start()
                assert stream.ready.wait(30), open(f"{tmp}/server.log").read()
                time.sleep(1)
                one_stream.append(share(proc.pid, args.seconds))
        print(f"{connection.vendor}, {args.server}, {args.seconds:.0f} s windows, {args.runs} runs: "
              f"idle CPU, no stream: median {statistics.median(no_stream):.2f} % of a core "
              f"({', '.join(f'{v:.2f}' for v in no_stream)}); one idle stream: median "
              f"{statistics.median(one_stream):.2f} % ({', '.join(f'{v:.2f}' for v in one_stream)})")


if __name__ == "__main__":
    main()
