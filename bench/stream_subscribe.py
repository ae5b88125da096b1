"""Benchmark: ``subscribe()`` → ``waitForFirstSync()`` of a Sync Stream while connected (official client).

Seeds ``--runs`` + 1 lists of 1,000 todos for one user, starts daphne, connects ``@powersync/node`` with
``includeDefaultStreams: false`` (so nothing syncs until subscribed), then for each list in turn subscribes to
the demo's ``list_todos`` stream with that list's id and measures the time until the subscription's
``waitForFirstSync()`` resolves (the 1,000 todos are in the client's database). Each measurement includes the
client restarting its sync iteration, the server resolving the subscription and sending the new bucket only,
and two round trips to the Node driver process (about 1 ms). The first subscription warms up the server
process (first queries, code paths) and is reported but not counted. Prints every run and the median.

``.venv/bin/python bench/stream_subscribe.py [--database-url postgres://...] [--runs 7] [--transport http]``
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from initial_sync import env_for, serve, setup_database, token  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--transport", default="http", choices=["http", "websocket"])
    args = parser.parse_args()
    from tests.e2e.node_client import NodeClient, ensure_node_modules

    ensure_node_modules()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/streams.sqlite3"
        setup_database(url, (args.runs + 1) * 1000)
        os.environ.update(env_for(url))
        import django

        django.setup()
        from django.db import connection

        from demo_project.todos.models import TodoList

        list_ids = [str(pk) for pk in TodoList.objects.filter(owner_id="bench").order_by("name")
                    .values_list("id", flat=True)]
        vendor = connection.vendor
        connection.close()
        tok = token(url)
        with serve(url, f"{tmp}/server.log") as port, NodeClient() as client:
            client.open(str(Path(tmp) / "client.db"), log_level="info")
            client.connect(f"http://127.0.0.1:{port}", tok, connection_method=args.transport,
                           extra_options={"includeDefaultStreams": False})
            client.wait_for_first_sync()
            times = []
            for run, list_id in enumerate(list_ids):
                start = time.perf_counter()
                handle = client.subscribe_stream("list_todos", {"list_id": list_id})
                result = client.wait_for_stream_first_sync(handle, timeout_ms=60_000)
                elapsed = (time.perf_counter() - start) * 1000
                assert result["synced"], client.logs_text(last=20)
                n = client.query("SELECT count(*) AS n FROM todos WHERE list_id = ?", [list_id])[0]["n"]
                assert n == 1000, n
                if run:
                    times.append(elapsed)
                print(f"  subscribe -> waitForFirstSync, 1,000 rows: {elapsed:.1f} ms{'' if run else ' (warm-up)'}")
            print(f"{vendor}, {args.transport}, {len(times)} runs: median {statistics.median(times):.1f} ms, "
                  f"min {min(times):.1f} ms, max {max(times):.1f} ms")


if __name__ == "__main__":
    main()
