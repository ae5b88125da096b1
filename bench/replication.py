"""Benchmark: replication throughput, outbox -> bucket ops, of one large captured transaction.

``.venv/bin/python bench/replication.py [--rows 20000] [--runs 5] [--database-url postgres://...]`` (SQLite in
a temporary file by default; on PostgreSQL the given database is flushed). Creates 20 lists (user0..user19)
and builds storage; then each run commits ``--rows`` demo todos through the captured bulk helper
(``PowerSyncQuerySet.bulk_create``, one transaction, one outbox entry per todo) and times, from that commit,
the replicator (in this process, ``replicate_now``: batches of ``REPLICATION_BATCH_SIZE`` until the outbox is
empty), in wall time and in this process's CPU time (the database server's work is not in the latter; on a
shared machine the CPU time is the steadier figure). Each todo is in one bucket (``todos_by_list``; the ``list_todos`` stream shares its buckets), so a
run writes one op per row. Prints each run and the medians: insert time, replication time and rows/s.
``--update``: the todos are created once, then each run updates all of them (``PowerSyncQuerySet.update``, one
transaction; their buckets do not change) and times their replication.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--batch-size", type=int, default=0, help="REPLICATION_BATCH_SIZE (default: the setting)")
    parser.add_argument("--update", action="store_true", help="time updates of existing todos instead of creates")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp.name}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
    os.environ["POWERSYNC_LOG_LEVEL"] = "WARNING"
    os.environ["POWERSYNC_REPLICATOR_IN_PROCESS"] = "0"
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, transaction

    from demo_project.todos.models import Todo, TodoList
    from powersync_django.capture import PowerSyncQuerySet
    from powersync_django.models import BucketOp, OutboxEntry, ReplicationState
    from powersync_django.replication import replicate_now

    if args.batch_size:
        settings.POWERSYNC = {**settings.POWERSYNC, "REPLICATION_BATCH_SIZE": args.batch_size}
        from powersync_django.conf import get_config

        getattr(get_config, "cache_clear", lambda: None)()
    if connection.vendor == "postgresql":
        call_command("migrate", verbosity=0)
        call_command("flush", interactive=False, verbosity=0)
    call_command("migrate", verbosity=0)
    lists = [TodoList.objects.create(name=f"list {i}", owner_id=f"user{i}") for i in range(20)]
    replicate_now()
    n = args.rows
    inserts, times, cpus = [], [], []
    if args.update:
        todos = [Todo(list=lists[i % len(lists)], description=f"todo {i} with some text", created_by="bench")
                 for i in range(n)]
        with transaction.atomic():
            PowerSyncQuerySet(model=Todo).bulk_create(todos, batch_size=1000)
        replicate_now()
    for run in range(args.runs):
        ops_before = BucketOp.objects.count()
        started = time.monotonic()
        with transaction.atomic():
            if args.update:
                PowerSyncQuerySet(model=Todo).all().update(description=f"updated in run {run}")
            else:
                PowerSyncQuerySet(model=Todo).bulk_create(
                    [Todo(list=lists[i % len(lists)], description=f"todo {run}/{i} with some text",
                          created_by="bench") for i in range(n)], batch_size=1000)
        committed = time.monotonic()
        cpu = time.process_time()
        replicated = replicate_now()
        done = time.monotonic()
        cpus.append(time.process_time() - cpu)
        assert not OutboxEntry.objects.exists(), "outbox not drained"
        ops = BucketOp.objects.count() - ops_before
        inserts.append(committed - started)
        times.append(done - committed)
        print(f"{connection.vendor}: run {run + 1}: {'update' if args.update else 'insert'} {n} todos {committed - started:.2f} s; "
              f"replicate {replicated} entries -> {ops} ops {done - committed:.2f} s "
              f"({n / (done - committed):,.0f} rows/s; CPU of this process {cpus[-1]:.2f} s)", flush=True)
    state = ReplicationState.objects.get(pk=1)
    median = statistics.median(times)
    print(f"{connection.vendor}: median of {args.runs}: insert {statistics.median(inserts):.2f} s, "
          f"commit -> replicated {median:.3f} s = {n / median:,.0f} rows/s, replicator CPU {statistics.median(cpus):.3f} s "
          f"(last op {state.last_op_id}; load {os.getloadavg()[0]:.1f})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
