"""``manage.py powersync_resync``: rebuild bucket storage from the data querysets."""

from __future__ import annotations

import os
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, transaction

from ...models import BucketState, ReplicationState
from ...replication import Replicator


def request_resync(using: str = DEFAULT_DB_ALIAS) -> int:
    """Mark bucket storage for a rebuild by whichever replicator runs next; return the current version."""
    with transaction.atomic(using=using):
        ReplicationState.objects.using(using).get_or_create(pk=1)
        state = ReplicationState.objects.using(using).select_for_update().get(pk=1)
        state.rules_hash = ""
        state.save(using=using, update_fields=["rules_hash"])
    return state.rules_version


class Command(BaseCommand):
    help = (
        "Rebuild PowerSync bucket storage from the data querysets, under a new version (clients download "
        "their buckets again and converge). Run it after writes the signals did not see: raw SQL, other "
        "programs, QuerySet.update() without the capture helpers. Writes made during the rebuild are kept. "
        "When another replicator holds the lease, it does the rebuild and this command waits for it."
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
        if replicator.try_acquire():
            try:
                replicator.drain()
            finally:
                replicator.release()
        else:
            owner = ReplicationState.objects.using(using).values_list("lease_owner", flat=True).first()
            self.stdout.write(f"Replicator {owner!r} holds the lease; waiting for it to rebuild...")
            deadline = started + options["timeout"]
            while ReplicationState.objects.using(using).values_list("rules_version", flat=True).get(pk=1) <= old_version:
                if time.monotonic() > deadline:
                    raise CommandError("Timed out; the rebuild is still requested and happens on the next batch.")
                time.sleep(0.2)
        state = ReplicationState.objects.using(using).get(pk=1)
        buckets = BucketState.objects.using(using).count()
        self.stdout.write(f"Rebuilt bucket storage version {state.rules_version}: {buckets} buckets, "
                          f"last op {state.last_op_id}, in {time.monotonic() - started:.1f} s.")
