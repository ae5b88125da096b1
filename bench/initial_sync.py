"""Benchmark: initial sync throughput of the streaming endpoint, and the official client's first sync.

One command (``make bench`` or ``.venv/bin/python bench/initial_sync.py``). For each N it seeds N todos for
one user in a fresh database, starts an ASGI server (``--server``, daphne by default), then measures (medians of several runs):

- server-side streaming throughput, read with a plain HTTP client that only splits lines/documents:
  uncompressed NDJSON, and gzip-compressed BSON (what the official client negotiates);
- time to a complete first sync with the official @powersync/node client (``--no-client`` skips it).

Options: ``--sizes 10000,100000 --runs 5 --database-url postgres://... --server uvicorn``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_database(url: str, n: int) -> None:
    """Migrate and seed ``n`` todos (lists of 1,000) for user 'bench' in a child process."""
    code = f"""
import django, uuid
django.setup()
from django.core.management import call_command
from django.db import connection
call_command("flush", interactive=False, verbosity=0) if {url.startswith("postgres")!r} else None
call_command("migrate", verbosity=0)
from demo_project.todos.models import TodoList, Todo
from powersync_django.replication import replicate_now
lists = [TodoList(name=f"list {{i}}", owner_id="bench") for i in range(max(1, {n} // 1000))]
TodoList.objects.bulk_create(lists)
todos = [Todo(list=lists[i % len(lists)], description=f"todo number {{i}} with some text", created_by="bench")
         for i in range({n})]
for start in range(0, len(todos), 5000):
    Todo.objects.bulk_create(todos[start:start + 5000])
replicate_now()
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env_for(url), check=True)


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "POWERSYNC_JWT_SECRET": SECRET,
            "DJANGO_SETTINGS_MODULE": "demo_project.settings", "POWERSYNC_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "0", "POWERSYNC_MAX_STREAMS_PER_USER": "none"}  # idle_streams: 1,000 streams of one user


def token(url: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", "powersync_token", "bench"], cwd=ROOT, env=env_for(url),
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


SERVERS: dict[str, list[str]] = {
    # {port} is filled in; one process each, the app's default event loop.
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "{app}"],
    "uvicorn": ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--lifespan", "off",
                "--no-access-log", "--log-level", "warning", "{app}"],
    "hypercorn": ["-m", "hypercorn", "-b", "127.0.0.1:{port}", "--log-level", "warning", "{app}"],
    "granian": ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
                "--workers", "1", "--no-ws", "--log-level", "warning", "{app}"],
}


@contextlib.contextmanager
def serve(url: str, log_path: str | None = None, server: str = "daphne",
          app: str = "demo_project.asgi:application") -> Iterator[subprocess.Popen]:
    """Run an ASGI server (see SERVERS) with the demo project on ``url``'s database.

    Yields the process once its port accepts connections; its ``port`` attribute is the port.
    """
    port = free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115  (closed below)
    args = [a.format(port=port, app=app) for a in SERVERS[server]]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env_for(url), stdout=subprocess.DEVNULL,
                            stderr=log)
    proc.port = port  # type: ignore[attr-defined]
    try:
        wait_for_port(port)
        yield proc
    finally:
        stop(proc)
        if log_path:
            log.close()


def wait_for_port(port: int, seconds: float = 30) -> None:
    """Return once 127.0.0.1:``port`` accepts connections (or ``seconds`` passed)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)


def stop(proc: subprocess.Popen, terminate: Callable[[], None] | None = None,
         kill: Callable[[], None] | None = None) -> None:
    """Terminate a child process (by ``terminate`` if given), killing it (``kill``) after 10 s."""
    (terminate or proc.terminate)()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        (kill or proc.kill)()
        proc.wait(10)


def stream_once(port: int, tok: str, bson_gzip: bool) -> tuple[float, int, int]:
    """(seconds, ops, bytes on the wire) for one initial sync read to checkpoint_complete."""
    headers = {"Authorization": f"Token {tok}", "Content-Type": "application/json"}
    if bson_gzip:
        headers["Accept"] = "application/vnd.powersync.bson-stream;q=0.9,application/x-ndjson;q=0.8"
        headers["Accept-Encoding"] = "gzip, deflate"
    body = json.dumps({"buckets": [], "include_checksum": True, "raw_data": True, "binary_data": True,
                       "client_id": "bench"})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request("POST", "/sync/stream", body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    decomp = zlib.decompressobj(31) if resp.getheader("Content-Encoding") == "gzip" else None
    buf = b""
    ops = 0
    wire = 0
    done = False
    while not done:
        chunk = resp.read1(1 << 20)
        if not chunk:
            break
        wire += len(chunk)
        buf += decomp.decompress(chunk) if decomp else chunk
        if bson_gzip:
            while len(buf) >= 4:
                size = int.from_bytes(buf[:4], "little")
                if len(buf) < size:
                    break
                doc, buf = buf[:size], buf[size:]
                # Count ops without decoding: each op document has an "op_id" key.
                ops += doc.count(b"\x02op_id\x00")
                if b"checkpoint_complete" in doc[:40]:
                    done = True
        else:
            *lines, buf = buf.split(b"\n")
            for line in lines:
                ops += line.count(b'"op_id"')
                if line.startswith(b'{"checkpoint_complete"'):
                    done = True
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, ops, wire


def client_once(port: int, tok: str, workdir: Path) -> float:
    from tests.e2e.node_client import NodeClient, ensure_node_modules

    ensure_node_modules()
    db = workdir / f"client-{time.monotonic_ns()}.db"
    with NodeClient() as client:
        client.open(str(db))
        start = time.perf_counter()
        client.connect(f"http://127.0.0.1:{port}", tok)
        client.wait_for_first_sync(timeout_ms=120_000)
        elapsed = time.perf_counter() - start
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--no-client", action="store_true")
    parser.add_argument("--server", default="daphne", choices=sorted(SERVERS))
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, server: {args.server}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            url = args.database_url or f"sqlite:///{tmp}/bench-{n}.sqlite3"
            setup_database(url, n)
            tok = token(url)
            with serve(url, server=args.server) as proc:
                port = proc.port
                stream_once(port, tok, False)  # warm-up
                for label, bson_gzip in (("NDJSON", False), ("BSON+gzip", True)):
                    results = [stream_once(port, tok, bson_gzip) for _ in range(args.runs)]
                    secs = statistics.median(r[0] for r in results)
                    ops = results[0][1]
                    assert ops >= n, (ops, n)
                    print(f"N={n:>7} {label:<10} median {secs * 1000:8.1f} ms  {ops / secs:>10,.0f} ops/s  "
                          f"{results[0][2] / 1e6:6.2f} MB on the wire  (runs: {args.runs})")
                if not args.no_client:
                    times = [client_once(port, tok, Path(tmp)) for _ in range(max(1, args.runs // 2))]
                    print(f"N={n:>7} official client first sync: median {statistics.median(times) * 1000:8.1f} ms "
                          f"(runs: {len(times)})")


if __name__ == "__main__":
    main()
