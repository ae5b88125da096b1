"""Stress: checkpoint consistency under concurrent writes, replication and reconnecting streams.

Writer threads commit todos (create/update/delete), a replicator commits small batches (many checkpoints),
and ``--sessions`` in-process sync sessions stream, disconnect at random moments and resume with their
positions. Each session's client model validates every completed checkpoint: the checksum and count of the ops
it received must equal the checkpoint's. Prints the counts; exits 1 on any mismatch, omitted bucket or
checkpoint regression.

``.venv/bin/python bench/snapshot_stress.py [--database-url postgres://...] [--seconds 30] [--sessions 20]``
The database (default ``powersync_bench_snapshot`` on the local PostgreSQL) is created if missing and flushed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/powersync_bench_snapshot"


def create_database(url: str) -> None:
    """Create a PostgreSQL database named in ``url`` if it does not exist."""
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    if args.database_url.startswith("postgres"):
        create_database(args.database_url)
    os.environ.update(DATABASE_URL=args.database_url, DJANGO_SETTINGS_MODULE="demo_project.settings",
                      POWERSYNC_LOG_LEVEL="WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    import sync_stress

    result = sync_stress.run(seconds=args.seconds, sessions=args.sessions, writers=args.writers)
    print(result.summary())
    for problem in (result.mismatches + result.omitted + result.regressions)[:20]:
        print("  ", problem)
    return 1 if result.mismatches or result.omitted or result.regressions else 0


if __name__ == "__main__":
    sys.exit(main())
