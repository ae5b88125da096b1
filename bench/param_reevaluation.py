"""Benchmark: how many parameter queries a change of one user's access runs with many open streams.

Opens ``--users`` sync sessions in-process (one per user, each a member of its own team; schema_project),
then moves one user's membership to another team and counts the parameter queryset runs until every stream
has seen the checkpoint. Targeted re-evaluation runs only the concerned user's queries; for comparison the
same change is then recorded without its earlier values (as after raw SQL), which re-evaluates every stream.

``.venv/bin/python bench/param_reevaluation.py [--database-url postgres://...] [--users 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({"DATABASE_URL": args.database_url or f"sqlite:///{tmp}/reeval.sqlite3",
                           "DJANGO_SETTINGS_MODULE": "schema_project.settings", "POWERSYNC_LOG_LEVEL": "WARNING",
                           "DJANGO_DEBUG": "0"})
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        if connection.vendor == "postgresql":
            call_command("flush", interactive=False, verbosity=0)
        call_command("migrate", verbosity=0)
        run(args.users)


def run(n: int) -> None:
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import User
    from django.db import connection
    from schema_project.workspace.models import Membership, Team

    from powersync_django import rules, storage
    from powersync_django.auth import TokenClaims
    from powersync_django.capture import PowerSyncQuerySet, record_changed
    from powersync_django.protocol import SyncRequest
    from powersync_django.replication import replicate_now
    from powersync_django.sync import SyncSession

    users = PowerSyncQuerySet(User).bulk_create([User(username=f"user{i}") for i in range(n)])
    teams = PowerSyncQuerySet(Team).bulk_create([Team(name=f"team{i}") for i in range(n)])
    PowerSyncQuerySet(Membership).bulk_create([Membership(team=t, user=u) for t, u in zip(teams, users, strict=True)])
    replicate_now()

    moved = Membership.objects.get(user=users[0])
    runs = [0]
    original = rules.ParameterQuery.rows

    def counted(self, token, client, order):
        if self.model is not None:
            runs[0] += 1
        return original(self, token, client, order)

    rules.ParameterQuery.rows = counted
    diffed: dict[int, int] = {}  # session -> last checkpoint id whose diff it completed
    progress: list[asyncio.Event] = []
    original_diff = SyncSession._diff

    async def diff(self, changes, force=False):
        out = await original_diff(self, changes, force)
        diffed[id(self)] = changes.last_id
        progress[0].set()
        return out

    async def until(condition) -> None:
        while not condition():
            progress[0].clear()
            await progress[0].wait()

    SyncSession._diff = diff

    def in_thread(fn):
        def call():
            try:
                return fn()
            finally:
                connection.close()

        return sync_to_async(call, thread_sensitive=False)

    async def main() -> None:
        sessions = []
        completes = [0] * n
        progress.append(asyncio.Event())

        async def consume(i: int, gen) -> None:
            async for line in gen:
                if "checkpoint_complete" in line:
                    completes[i] += 1
                    progress[0].set()

        started = time.perf_counter()
        for u in users:
            s = SyncSession(TokenClaims(str(u.pk), time.time() + 3600, {"sub": str(u.pk)}), SyncRequest())
            await s.prepare()
            sessions.append(s)
        tasks = [asyncio.create_task(consume(i, s.lines())) for i, s in enumerate(sessions)]
        await until(lambda: min(completes) >= 1)
        print(f"{connection.vendor}: {n} streams open and synced in {time.perf_counter() - started:.1f} s "
              f"({runs[0]} parameter queries)")

        async def measure(label: str, change) -> None:
            runs[0] = 0
            begun = time.perf_counter()
            await in_thread(change)()
            target = await storage.run(storage.latest_checkpoint_id)
            await until(lambda: all(diffed.get(id(s), 0) >= target for s in sessions))
            print(f"{label}: {runs[0]} parameter queries ran "
                  f"(every stream re-evaluating would be {4 * n}); change committed, replicated and seen by all streams in "
                  f"{time.perf_counter() - begun:.2f} s")

        def move() -> None:
            moved.team = teams[1]
            moved.save()
            replicate_now()

        def raw_move() -> None:
            Membership.objects.filter(pk=moved.pk).update(team=teams[0])  # not captured: recorded below
            record_changed(Membership, [moved.pk])
            replicate_now()

        await measure("one membership changed (targeted)", move)
        await measure("same change after raw SQL (earlier values unknown)", raw_move)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    storage.shutdown()


if __name__ == "__main__":
    main()
