"""Benchmark: change latency for one client while 1,000 other streams are connected across two server processes.

A fleet on one PostgreSQL database: two ASGI server processes (``--server``, uvicorn by default) without
in-process replicators, and one ``manage.py powersync_replicate`` process. ``--others`` lightweight streams
(raw sockets, one user each, their own list; drained but otherwise idle) are spread over both servers. One
measured stream per server (an NDJSON reader thread, users ``measured0``/``measured1``). Then ``--changes``
todos are committed from this process, alternating between the two measured users (each change reaches
the replicator through the outbox NOTIFY and both servers through the checkpoint NOTIFY), and for each the
time from commit to the arrival of its data line is recorded.

Prints p50/p99 per run and the medians over ``--runs`` runs.

``.venv/bin/python bench/two_process_latency.py --database-url postgres://postgres@127.0.0.1:5432/bench_fleet
[--others 1000] [--changes 200] [--runs 3] [--server uvicorn|daphne]``  (the database is flushed)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from change_latency import Stream  # noqa: E402
from initial_sync import env_for, serve, stop  # noqa: E402

FLEET = {"POWERSYNC_REPLICATOR_IN_PROCESS": "0", "POWERSYNC_KEEPALIVE_SECONDS": "20"}


@contextlib.contextmanager
def replicator(url: str, log_path: str) -> Iterator[subprocess.Popen]:
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "manage.py", "powersync_replicate"], cwd=ROOT,
                                env={**env_for(url), **FLEET}, stdout=log, stderr=log)
        try:
            yield proc
        finally:
            stop(proc)


class Others:
    """Lightweight streams in an asyncio loop of their own thread: opened, read to checkpoint_complete,
    then drained (keepalives) until closed."""

    def __init__(self, targets: list[tuple[int, str]]) -> None:
        self.targets = targets
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []

    async def _open(self, port: int, tok: str) -> None:
        body = json.dumps({"buckets": [], "include_checksum": True, "raw_data": True, "client_id": "o"}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /sync/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Token {tok}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"checkpoint_complete" not in received:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError(f"stream closed: {received[:300]!r}")
            received += chunk
        if not received.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(received[:300])
        self.writers.append(writer)
        self.tasks.append(asyncio.get_running_loop().create_task(self._drain(reader)))

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

    async def _open_all(self) -> None:
        for start in range(0, len(self.targets), 100):
            await asyncio.gather(*(self._open(port, tok) for port, tok in self.targets[start:start + 100]))

    def open(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open_all(), self.loop).result(600)

    def close(self) -> None:
        async def close_all() -> None:
            for w in self.writers:
                w.close()
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


def one_run(url: str, tmp: str, server: str, others: int, changes: int, lists: dict,
            make_token) -> tuple[list[float], list[float]]:
    """(commit -> data line on the measured stream, commit -> checkpoint row written) per change, in ms."""
    from demo_project.todos.models import Todo
    from powersync_django.models import Checkpoint

    os.environ.update(FLEET)  # env_for copies os.environ: the servers run without in-process replicators
    with replicator(url, f"{tmp}/replicator.log"), serve(url, f"{tmp}/a.log", server=server) as a, \
            serve(url, f"{tmp}/b.log", server=server) as b:
        ports = [a.port, b.port]
        crowd = Others([(ports[i % 2], make_token(f"other{i}")) for i in range(others)])
        crowd.open()
        try:
            measured = [Stream(ports[i], make_token(f"measured{i}")) for i in range(2)]
            for s in measured:
                s.start()
            for s in measured:
                assert s.ready.wait(60), "measured stream did not complete its first sync"
            latencies, replicated = [], []
            for i in range(changes):
                k = i % 2
                desc = f"change {i} {time.monotonic()}"
                Todo.objects.create(list=lists[f"measured{k}"], description=desc)  # autocommit
                committed, committed_wall = time.perf_counter(), time.time()
                deadline = committed + 30
                while desc not in measured[k].arrivals and time.perf_counter() < deadline:
                    time.sleep(0.0005)
                assert desc in measured[k].arrivals, f"{desc} did not arrive within 30 s"
                latencies.append((measured[k].arrivals[desc] - committed) * 1000)
                # The replicator's clock (same machine): when the checkpoint of this change was written.
                replicated.append((Checkpoint.objects.latest("id").created_at.timestamp() - committed_wall) * 1000)
                time.sleep(0.05)
            return latencies, replicated
        finally:
            crowd.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="PostgreSQL (flushed)")
    parser.add_argument("--others", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", default="uvicorn")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.others + 1024)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(env_for(args.database_url))
        import django

        django.setup()
        from django.core.management import call_command

        call_command("flush", interactive=False, verbosity=0)
        call_command("migrate", verbosity=0)
        from demo_project.todos.models import TodoList
        from powersync_django.auth import make_token
        from powersync_django.replication import replicate_now

        users = [f"other{i}" for i in range(args.others)] + ["measured0", "measured1"]
        TodoList.objects.bulk_create([TodoList(name="l", owner_id=u) for u in users])
        lists = {lst.owner_id: lst for lst in TodoList.objects.filter(owner_id__startswith="measured")}
        replicate_now()
        p50s, p99s, rep50s = [], [], []
        for run in range(args.runs):
            latencies, replicated = one_run(args.database_url, tmp, args.server, args.others, args.changes, lists,
                                            make_token)
            p50s.append(statistics.median(latencies))
            p99s.append(percentile(latencies, 99))
            rep50s.append(statistics.median(replicated))
            print(f"run {run + 1}: p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms, max {max(latencies):.1f} ms "
                  f"({len(latencies)} changes); commit -> checkpoint written: p50 {rep50s[-1]:.1f} ms", flush=True)
        print(f"PostgreSQL, two {args.server} processes + one replicator process, {args.others} other streams, "
              f"{args.changes} changes x {args.runs} runs: median p50 {statistics.median(p50s):.1f} ms, "
              f"median p99 {statistics.median(p99s):.1f} ms (of which commit -> checkpoint written: median p50 "
              f"{statistics.median(rep50s):.1f} ms)")


if __name__ == "__main__":
    main()
