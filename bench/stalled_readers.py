"""Benchmark: server memory per stalled reader, under each ASGI server.

One command (``.venv/bin/python bench/stalled_readers.py``). Seeds N todos for one user (100,000 by default:
a ~41 MB NDJSON initial sync), then for each server: starts it (one process), makes one complete sync as a
warm-up, opens C connections that send a sync request, read the response headers and then stop reading
(small receive buffer), and samples the RSS of the server's process tree for a few seconds.
Reported: RSS growth per stalled connection (peak over the samples, minus the warm baseline).

``daphne-unbounded`` is daphne serving Django's app without powersync's flow-control middleware (what
daphne does on its own). Options: ``--todos 100000 --connections 4 --seconds 4 --servers daphne,uvicorn
--database-url postgres://...``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from initial_sync import SERVERS, serve, setup_database, stream_once, token  # noqa: E402

VARIANTS = {name: (name, "demo_project.asgi:application") for name in SERVERS}
VARIANTS["daphne-unbounded"] = ("daphne", "demo_project.asgi:django_application")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
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


def measure(variant: str, url: str, tok: str, connections: int, seconds: float) -> tuple[float, float]:
    """(baseline RSS MB, peak RSS growth per stalled connection MB)."""
    server, app = VARIANTS[variant]
    with serve(url, server=server, app=app) as proc:
        ps = psutil.Process(proc.pid)
        stream_once(proc.port, tok, False)  # warm-up: imports, connections, one full sync
        time.sleep(1.0)
        baseline = tree_rss(ps)
        socks = [stalled_connection(proc.port, tok) for _ in range(connections)]
        peak = baseline
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, tree_rss(ps))
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
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; {args.todos} todos, "
          f"{args.connections} stalled connections, {args.seconds:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/stall.sqlite3"
        setup_database(url, args.todos)
        tok = token(url)
        for variant in args.servers.split(","):
            base, per_conn = measure(variant, url, tok, args.connections, args.seconds)
            print(f"{variant:<17} baseline {base:7.1f} MB   growth per stalled connection {per_conn:7.2f} MB")


if __name__ == "__main__":
    main()
