"""Benchmark: a change to a bucket held by N streams, until every stream has it; and the reads it costs.

Opens ``--streams`` sync sessions in this process (lightweight in-process clients: each consumes its
``SyncSession.lines()`` and encodes every line to NDJSON bytes, as the HTTP view does), all holding one
list's bucket of the demo project (the same user on N connections). Then, ``--changes`` times: a todo is
committed in that list and replicated (the in-process replicator's path: the checkpoint pokes the hub), and
for each stream the time from the todo's commit to its data line is recorded. Per change: p50/p99 over
the streams, and the SQL statements the stream read threads ran (reads of the checkpoint hub itself
excluded). Printed: the medians over the changes, for shared reads and (``--compare``) for each stream
reading its own (``SHARED_READS = False``, the behaviour before).

``.venv/bin/python bench/fanout.py --database-url postgres://... [--streams 1000] [--changes 7] [--compare]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=7)
    parser.add_argument("--compare", action="store_true", help="also run with each stream reading its own")
    parser.add_argument("--transport", default="ndjson", choices=TRANSPORTS,
                        help="what each in-process client consumes: the HTTP body (ndjson, bson, with gzip), "
                             "the WebSocket path's frames (websocket), or the session's line dicts encoded to "
                             "NDJSON by the client (lines: the first version of this benchmark)")
    parser.add_argument("--py-spy", default="", metavar="OUT.json",
                        help="profile the changes (not the opening) with py-spy into a speedscope file")
    parser.add_argument("--gc-threshold", type=int, default=0, metavar="N",
                        help="gc.set_threshold(N): collect the young generation every N allocations, not 700")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() once the streams are open (their objects leave the collector's scans)")
    args = parser.parse_args()
    if args.gc_threshold:
        import gc

        gc.set_threshold(args.gc_threshold)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"DATABASE_URL": args.database_url or f"sqlite:///{tmp}/fanout.sqlite3",
                           "DJANGO_SETTINGS_MODULE": "demo_project.settings", "POWERSYNC_LOG_LEVEL": "WARNING",
                           "DJANGO_DEBUG": "0", "POWERSYNC_KEEPALIVE_SECONDS": "3600"})
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        if connection.vendor == "postgresql":
            call_command("flush", interactive=False, verbosity=0)
        call_command("migrate", verbosity=0)
        for shared in ([True, False] if args.compare else [True]):
            result = run(args.streams, args.changes, shared, args.transport, args.gc_freeze, args.py_spy)
            print(f"{connection.vendor}, {args.transport}, {args.streams} streams, {'shared reads' if shared else 'own reads'}: "
                  f"{result}", flush=True)


class QueryCounter:
    """Counts SQL statements run on the stream read threads (``powersync-reads``), hub reads excluded."""

    def __init__(self) -> None:
        from django.db.backends import utils

        self.count = 0
        original = utils.CursorWrapper._execute_with_wrappers
        counter = self

        def counted(self, sql, *args, **kwargs):
            if threading.current_thread().name.startswith("powersync-reads") and "MAX(id)" not in sql[:40] \
                    and "changed_buckets" not in sql[:60]:
                counter.count += 1
            return original(self, sql, *args, **kwargs)

        utils.CursorWrapper._execute_with_wrappers = counted


COUNTER: QueryCounter | None = None
TRANSPORTS = ("ndjson", "ndjson-gzip", "bson", "bson-gzip", "websocket", "lines")


def py_spy(out: str):
    """Start py-spy on this process (speedscope output to ``out``); returns a function that stops it."""
    import signal
    import subprocess

    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "speedscope",
                            "-r", "100", "-o", out, "--pid", str(os.getpid())], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # attached

    def stop() -> None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)

    return stop


def run(n: int, changes: int, shared: bool, transport: str, freeze: bool = False, profile: str = "") -> str:
    import orjson
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.db import connections
    from django.test import override_settings

    from demo_project.todos.models import Todo, TodoList
    from powersync_django import metrics, notify, storage, views
    from powersync_django.auth import TokenClaims
    from powersync_django.protocol import SyncRequest, encode_bson
    from powersync_django.replication import replicate_now
    from powersync_django.rsocket import payload_next
    from powersync_django.sync import SyncSession
    from powersync_django.tracking import StreamTracker

    global COUNTER
    COUNTER = COUNTER or QueryCounter()
    owner = f"bench-{shared}"
    lst = TodoList.objects.create(name="shared", owner_id=owner)
    Todo.objects.create(list=lst, description="before")
    replicate_now()

    def in_thread(fn):
        def call():
            try:
                return fn()
            finally:
                connections.close_all()

        return sync_to_async(call, thread_sensitive=False)

    async def main() -> str:
        arrivals: list[dict[str, float]] = [{} for _ in range(n)]
        completes = [0] * n
        # How many streams got each description / reached each completion count: the waits below check
        # these in O(1) (checking every stream on each wake-up would cost O(N^2) with N streams).
        got: dict[str, int] = {}
        reached: dict[int, int] = {}
        progress = asyncio.Event()
        current: list = [b"", ""]  # the description of the change under way (bytes, str)

        def arrived(i: int, chunk: bytes) -> None:
            if b"checkpoint_complete" in chunk:
                completes[i] += 1
                reached[completes[i]] = reached.get(completes[i], 0) + 1
                progress.set()
            elif current[0] and current[0] in chunk and current[1] not in arrivals[i]:
                arrivals[i][current[1]] = time.perf_counter()
                got[current[1]] = got.get(current[1], 0) + 1
                progress.set()

        async def consume(i: int, session: SyncSession) -> None:
            if transport == "lines":  # the behaviour of the first version of this benchmark
                async for line in session.lines():
                    orjson.dumps(line) + b"\n"  # the encoding each stream does for its client
                    if "checkpoint_complete" in line:
                        arrived(i, b"checkpoint_complete")
                    elif "data" in line:
                        for op in line["data"]["data"]:
                            if op.get("data") and orjson.loads(op["data"]).get("description") == current[1]:
                                arrived(i, current[0])
                return
            if transport == "websocket":  # consumers.py's per-line work: BSON, one RSocket PAYLOAD frame
                tracker = StreamTracker(session, metrics.WEBSOCKET)
                async for line in tracker.lines(session.lines()):
                    payload = encode_bson(line)
                    frame = payload_next(1, payload).encode()
                    tracker.sent(len(payload))
                    arrived(i, frame)
                return
            inflate = zlib.decompressobj(31) if transport.endswith("gzip") else None
            async for chunk in session.chunks():  # the HTTP response body (views.prepare_stream)
                arrived(i, chunk if inflate is None else inflate.decompress(chunk))

        async def until(condition, seconds: float = 300) -> None:
            async with asyncio.timeout(seconds):
                while not condition():
                    progress.clear()
                    await progress.wait()

        claims = TokenClaims(owner, time.time() + 7200, {"sub": owner})
        started = time.perf_counter()
        tasks = []
        accept = "application/vnd.powersync.bson-stream" if transport.startswith("bson") else "application/x-ndjson"
        encoding = "gzip" if transport.endswith("gzip") else ""
        for i in range(n):
            if transport in ("lines", "websocket"):
                session = SyncSession(claims, SyncRequest(client_id=f"c{i}"))
                await session.prepare()
            else:
                session = await views.prepare_stream(claims, orjson.dumps({"client_id": f"c{i}", "raw_data": True}),
                                                     accept, encoding)
            tasks.append(asyncio.create_task(consume(i, session)))
        await until(lambda: reached.get(1, 0) >= n)
        opened = time.perf_counter() - started
        if freeze:
            import gc

            gc.freeze()
        p50s, p99s, lasts, queries, replicated = [], [], [], [], []
        stop = py_spy(profile) if profile else None
        for k in range(changes):
            desc = f"change <{k}>"
            current[:] = [desc.encode(), desc]
            COUNTER.count = 0
            committed = await in_thread(lambda d=desc: (Todo.objects.create(list=lst, description=d),
                                                        time.perf_counter())[1])()
            await in_thread(replicate_now)()
            replicated.append((time.perf_counter() - committed) * 1000)
            await until(lambda d=desc: got.get(d, 0) >= n)
            latencies = sorted((a[desc] - committed) * 1000 for a in arrivals)
            p50s.append(latencies[len(latencies) // 2])
            p99s.append(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])
            lasts.append(latencies[-1])
            await until(lambda kk=k: reached.get(kk + 2, 0) >= n)
            queries.append(COUNTER.count)
            await asyncio.sleep(0.2)
        if stop is not None:
            stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for hub in list(notify._hubs.values()):
            hub.stop_listener()
            await hub.close()
        notify._hubs.clear()
        return (f"opened and synced in {opened:.1f} s; change -> each stream, medians of {changes} changes: "
                f"p50 {statistics.median(p50s):.0f} ms, p99 {statistics.median(p99s):.0f} ms, "
                f"last {statistics.median(lasts):.0f} ms (replicated after {statistics.median(replicated):.0f} ms); stream read queries per change "
                f"{statistics.median(queries):.0f} (p50 per change: {', '.join(f'{x:.0f}' for x in p50s)})")

    with override_settings(POWERSYNC={**settings.POWERSYNC, "SHARED_READS": shared, "MAX_CONCURRENT_STREAMS": n + 10,
                                      "MAX_STREAMS_PER_USER": None}):
        out = asyncio.run(main())
    storage.shutdown()
    return out


if __name__ == "__main__":
    main()
