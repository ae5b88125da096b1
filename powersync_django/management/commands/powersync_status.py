"""``manage.py powersync_status [--json] [--max-lag SECONDS]``: replication lag and bucket storage figures."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from ...status import format_status, get_status


class Command(BaseCommand):
    help = (
        "Show PowerSync replication status: outbox entries pending and their age (the replication lag), the "
        "last checkpoint and its age, bucket storage version, buckets, ops, active replicator. Read-only and "
        "cheap: usable as a monitoring probe with --max-lag."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
        parser.add_argument(
            "--max-lag", type=float, default=None, metavar="SECONDS",
            help="Exit with status 1 when the oldest pending change has waited longer than this.",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        status = get_status(options["database"])
        if options["json"]:
            self.stdout.write(json.dumps(status.as_dict(), sort_keys=True))
        else:
            for line in format_status(status):
                self.stdout.write(line)
        max_lag = options["max_lag"]
        if max_lag is not None and status.lag > max_lag:
            raise CommandError(f"Replication lag {status.lag:.1f} s exceeds {max_lag} s "
                               f"({status.pending_entries} entries pending). Is a replicator running?")
