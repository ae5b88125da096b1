"""Benchmark: threads and memory per idle HTTP sync stream, Django's view against the pure-ASGI endpoint.

One command (``.venv/bin/python bench/idle_streams.py``). Seeds a few todos for one user, then for each
variant starts uvicorn (one process), opens one warm-up stream, samples the server's threads and RSS,
opens ``--streams`` more streams (raw sockets, each read to ``checkpoint_complete`` and then left idle),
samples again and closes everything. Variants:

- ``view``: Django's ASGIHandler serving ``views.sync_stream`` (``demo_project.asgi:django_application``),
  what ``powersync_application`` routed HTTP streams to before;
- ``endpoint``: ``demo_project.asgi:application`` (the pure-ASGI ``stream_endpoint``).

Reported per variant: medians over ``--runs`` of threads added per 1,000 streams, RSS growth per stream and
the RSS with the warm-up stream only. Options: ``--streams 1000 --runs 3 --database-url postgres://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from initial_sync import serve, setup_database, token  # noqa: E402

VARIANTS = {"view": "demo_project.asgi:django_application", "endpoint": "demo_project.asgi:application"}


def proc_status(pid: int) -> tuple[int, int]:
    """(threads, RSS bytes) of a process (Linux /proc)."""
    threads = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return threads, rss


async def open_stream(port: int, tok: str) -> asyncio.StreamWriter:
    """A sync stream read to checkpoint_complete, then left open and idle."""
    body = json.dumps({"buckets": [], "include_checksum": True, "raw_data": True, "client_id": "idle"}).encode()
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
    return writer


async def measure(port: int, pid: int, tok: str, streams: int) -> tuple[int, int, int]:
    """(threads added, RSS growth bytes, RSS with one stream)."""
    warm = await open_stream(port, tok)
    await asyncio.sleep(1)
    threads0, rss0 = proc_status(pid)
    writers = []
    for start in range(0, streams, 100):
        writers += await asyncio.gather(*(open_stream(port, tok) for _ in range(start, min(streams, start + 100))))
    await asyncio.sleep(2)
    threads1, rss1 = proc_status(pid)
    for writer in [warm, *writers]:
        writer.close()
    return threads1 - threads0, rss1 - rss0, rss0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.streams + 1024)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.sqlite3"
        setup_database(url, 10)
        tok = token(url)
        results: dict[str, list[tuple[int, int, int]]] = {name: [] for name in VARIANTS}
        for run in range(args.runs):
            for name, app in VARIANTS.items():
                with serve(url, server="uvicorn", app=app) as proc:
                    time.sleep(1)
                    results[name].append(asyncio.run(measure(proc.port, proc.pid, tok, args.streams)))
                    print(f"run {run + 1} {name}: {results[name][-1]}", flush=True)
    print(f"\n{args.streams} idle HTTP streams, uvicorn, {'PostgreSQL' if url.startswith('postgres') else 'SQLite'}; "
          f"medians of {args.runs} runs")
    print("| variant | threads added | RSS per idle stream | RSS, one stream |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        threads = statistics.median(r[0] for r in rows)
        per_stream = statistics.median(r[1] for r in rows) / args.streams / 1024
        base = statistics.median(r[2] for r in rows) / 2**20
        print(f"| {name} | {threads:.0f} | {per_stream:.0f} KB | {base:.0f} MB |")


if __name__ == "__main__":
    main()
