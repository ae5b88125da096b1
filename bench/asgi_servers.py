"""Benchmark: the ASGI servers side by side: memory per stalled reader, and streaming throughput.

One command (``.venv/bin/python bench/asgi_servers.py``). Seeds N todos for one user (100,000 by default:
a ~41 MB NDJSON initial sync), starts every server (one process each), then:

- throughput: initial syncs read to ``checkpoint_complete`` by a plain HTTP client (as in
  ``initial_sync.py``), NDJSON and BSON+gzip, the servers taking turns run by run so that the noise of a
  shared machine falls on all of them alike; medians;
- stalled readers, one server at a time: C connections send a sync request, read the response headers
  and then stop reading (small receive buffer), while the RSS of the server's process tree is sampled for
  a few seconds. Reported: RSS growth per stalled connection (peak minus the warm baseline).

``daphne-unbounded`` is daphne serving Django's app without powersync's flow-control middleware (what
daphne does on its own). Options: ``--todos 100000 --connections 4 --seconds 4 --servers daphne,uvicorn
--runs 5 --database-url postgres://...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from initial_sync import SERVERS, serve, setup_database, stream_once, token  # noqa: E402

VARIANTS = {name: (name, "demo_project.asgi:application") for name in SERVERS}
VARIANTS["daphne-unbounded"] = ("daphne", "demo_project.asgi:django_application")


def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and its descendants (Linux /proc)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_rss(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def stalled_connection(port: int, tok: str) -> socket.socket:
    """A sync request whose reader takes the response headers and then stops reading."""
    body = json.dumps({"buckets": [], "include_checksum": True, "raw_data": True, "client_id": "stall"}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST /sync/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Token {tok}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1024)
        if not chunk:
            raise RuntimeError("connection closed before the headers")
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


def stalled_growth(proc: subprocess.Popen, tok: str, connections: int, seconds: float) -> tuple[float, float]:
    """(baseline RSS MB, peak RSS growth per stalled connection MB)."""
    time.sleep(1.0)
    baseline = tree_rss(proc.pid)
    socks = [stalled_connection(proc.port, tok) for _ in range(connections)]
    peak = baseline
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    for s in socks:
        s.close()
    return baseline / 1e6, (peak - baseline) / 1e6 / connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--todos", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--servers", default=",".join(VARIANTS))
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; {args.todos} todos, "
          f"{args.connections} stalled connections, {args.seconds:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/stall.sqlite3"
        setup_database(url, args.todos)
        tok = token(url)
        variants = args.servers.split(",")
        with contextlib.ExitStack() as stack:
            procs = {v: stack.enter_context(serve(url, server=VARIANTS[v][0], app=VARIANTS[v][1])) for v in variants}
            times: dict[tuple[str, bool], list[float]] = {(v, b): [] for v in variants for b in (False, True)}
            for v in variants:
                stream_once(procs[v].port, tok, False)  # warm-up: imports, connections, one full sync
            for _ in range(args.runs):
                for v in variants:
                    for bson_gzip in (False, True):
                        times[v, bson_gzip].append(stream_once(procs[v].port, tok, bson_gzip)[0])
            for v in variants:
                ndjson, bson = (statistics.median(times[v, b]) for b in (False, True))
                print(f"{v:<17} throughput NDJSON {args.todos / ndjson:>9,.0f} ops/s ({ndjson * 1000:6.0f} ms)  "
                      f"BSON+gzip {args.todos / bson:>9,.0f} ops/s ({bson * 1000:6.0f} ms)  (runs: {args.runs})")
            for v in variants:
                base, per_conn = stalled_growth(procs[v], tok, args.connections, args.seconds)
                print(f"{v:<17} baseline RSS {base:7.1f} MB   growth per stalled connection {per_conn:7.2f} MB")

if __name__ == "__main__":
    main()
