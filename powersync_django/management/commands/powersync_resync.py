"""``manage.py powersync_resync``: rebuild bucket storage from the data querysets."""

from __future__ import annotations

import os
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from ...models import BucketState, ReplicationState
from ...replication import Replicator, request_resync

# Seconds between progress lines.
PROGRESS_EVERY = 1.0

__all__ = ["Command", "request_resync"]


class Command(BaseCommand):
    help = (
        "Rebuild PowerSync bucket storage from the data querysets, under a new version (clients download "
        "their buckets again and converge). Run it after writes the signals did not see: raw SQL, other "
        "programs, QuerySet.update() without the capture helpers. Writes made during the rebuild are kept. "
        "With no replicator running, this command takes the lease and rebuilds itself, showing progress; when "
        "another replicator holds the lease, it does the rebuild and this command waits for it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout", type=float, default=600.0, metavar="SECONDS",
            help="How long to wait for another replicator to finish the rebuild (default 600).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        started = time.monotonic()
        old_version = request_resync(using)
        replicator = Replicator(using=using, owner=f"resync-{os.getpid()}")
        deadline = started + options["timeout"]
        waiting = False
        next_line = time.monotonic() + PROGRESS_EVERY
        while True:
            # A lease left by a replicator that stopped expires: then this command does the work itself.
            if replicator.try_acquire():
                try:
                    self._rebuild(replicator, using)
                finally:
                    replicator.release()
                break
            state = ReplicationState.objects.using(using).get(pk=1)
            if state.rules_version > old_version and not state.building_version:
                break
            if not waiting:
                waiting = True
                self.stdout.write(f"Replicator {state.lease_owner!r} holds the lease; waiting for it to rebuild...")
            if time.monotonic() >= next_line:
                next_line = time.monotonic() + PROGRESS_EVERY
                self._progress(state)
            if time.monotonic() > deadline:
                raise CommandError("Timed out; the rebuild is still requested and happens on the next batch.")
            time.sleep(0.2)
        state = ReplicationState.objects.using(using).get(pk=1)
        buckets = BucketState.objects.using(using).count()
        self.stdout.write(f"Rebuilt bucket storage version {state.rules_version}: {buckets} buckets, "
                          f"last op {state.last_op_id}, in {time.monotonic() - started:.1f} s.")

    def _rebuild(self, replicator: Replicator, using: str) -> None:
        next_line = time.monotonic() + PROGRESS_EVERY
        replicator.more = True
        while replicator.more:
            replicator.run_batch()
            if time.monotonic() >= next_line:
                next_line = time.monotonic() + PROGRESS_EVERY
                self._progress(ReplicationState.objects.using(using).get(pk=1))

    def _progress(self, state: ReplicationState) -> None:
        if not state.building_version:
            return
        elapsed = max(time.time() - state.build_started, 1e-6)
        done, total = state.build_rows_done, state.build_rows_total
        phase = "reading rows" if state.build_model else "replaying the outbox"
        self.stdout.write(f"Version {state.building_version}: {done}/{total} rows ({phase}), "
                          f"{done / elapsed:.0f} rows/s")
