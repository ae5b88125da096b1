"""``manage.py powersync_replicate [--once] [--batch-size N]``: the production replication worker."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from ...conf import get_config
from ...models import ReplicationState
from ...replication import Replicator, ReplicatorWorker

# Seconds between progress lines while replicating.
PROGRESS_EVERY = 10.0


class Command(BaseCommand):
    help = (
        "Replicate captured changes (the outbox) into bucket operations until stopped with SIGINT/SIGTERM. "
        "Run it in production with POWERSYNC['REPLICATOR_IN_PROCESS'] = False; several may run, one holds "
        "the lease and works, the others stand by. Stopping finishes or rolls back the current batch: nothing "
        "is lost or replicated twice. --once replicates what is pending and exits (cron, deploy scripts)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Replicate what is pending, then exit.")
        parser.add_argument(
            "--batch-size", type=int, default=None, metavar="N",
            help="Outbox entries per transaction (default: POWERSYNC['REPLICATION_BATCH_SIZE']).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        batch_size = options["batch_size"]
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if options["once"]:
            self._once(using, batch_size)
        else:
            self._forever(using, batch_size)

    def _once(self, using: str, batch_size: int | None) -> None:
        replicator = Replicator(using=using, owner=f"replicate-once-{os.getpid()}")
        if batch_size:
            replicator.config = {**replicator.config, "REPLICATION_BATCH_SIZE": batch_size}
        # A lease left by a replicator that died expires after LEASE_SECONDS.
        deadline = time.monotonic() + get_config()["LEASE_SECONDS"] + 1
        while not replicator.try_acquire():
            if time.monotonic() > deadline:
                owner = ReplicationState.objects.using(using).values_list("lease_owner", flat=True).first()
                raise CommandError(f"Replicator {owner!r} holds the lease and is replicating; nothing done here.")
            time.sleep(0.2)
        started = time.monotonic()
        try:
            n = replicator.drain()
        finally:
            replicator.release()
        state = ReplicationState.objects.using(using).get(pk=1)
        self.stdout.write(f"Replicated {n} outbox entries in {time.monotonic() - started:.1f} s; "
                          f"storage version {state.rules_version}, last op {state.last_op_id}.")

    def _forever(self, using: str, batch_size: int | None) -> None:
        worker = ReplicatorWorker(using=using)
        if batch_size:
            worker.config = {**worker.config, "REPLICATION_BATCH_SIZE": batch_size}
            worker.replicator.config = worker.config
        total = [0]
        next_line = [time.monotonic() + PROGRESS_EVERY]
        run_batch = worker.replicator.run_batch

        def counted(limit: int | None = None) -> int:
            n = run_batch(limit)
            total[0] += n
            if n and time.monotonic() >= next_line[0]:
                next_line[0] = time.monotonic() + PROGRESS_EVERY
                self.stdout.write(f"{total[0]} outbox entries replicated so far.")
            return n

        worker.replicator.run_batch = counted  # type: ignore[method-assign]

        previous: dict[int, Any] = {}

        def stop(signum: int, frame: Any) -> None:
            worker.stop()
            # A second signal interrupts at once.
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
        self.stdout.write(f"Replicator {worker.replicator.owner} running; stop with Ctrl-C or SIGTERM.")
        try:
            worker.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write(f"Stopped after replicating {total[0]} outbox entries.")
