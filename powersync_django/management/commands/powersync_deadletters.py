"""``manage.py powersync_deadletters [list|retry|drop] [ID ...] [--all] [--json]``: entries that failed."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from ... import deadletters
from ...models import DeadLetter


class Command(BaseCommand):
    help = (
        "Outbox entries that could not be replicated (a snapshot that cannot be decoded, a value the storage "
        "rejects, ...) and later entries of the same rows, held back so they do not overtake them. 'list' "
        "shows them with their error; 'retry ID ...' (or --all) puts them back into the outbox, per row and in "
        "order, once the cause is fixed; 'drop ID ...' (or --all) deletes them (the row replicates again with "
        "its next change, or after powersync_resync)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", nargs="?", choices=["list", "retry", "drop"], default="list")
        parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="Dead letter ids (their rows).")
        parser.add_argument("--all", action="store_true", help="Every dead letter (retry, drop).")
        parser.add_argument("--json", action="store_true", help="list: one JSON object per line.")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        action = options["action"]
        if action == "list":
            self._list(using, options["json"])
            return
        if not options["ids"] and not options["all"]:
            raise CommandError(f"{action}: give dead letter ids or --all.")
        ids = None if options["all"] else options["ids"]
        if action == "retry":
            n = deadletters.retry(ids, using)
            self.stdout.write(f"Re-queued {n} dead letters into the outbox.")
        else:
            n = deadletters.drop(ids, using)
            self.stdout.write(f"Dropped {n} dead letters.")

    def _list(self, using: str, as_json: bool) -> None:
        letters = DeadLetter.objects.using(using).order_by("id")
        n = 0
        for x in letters.iterator():
            n += 1
            if as_json:
                self.stdout.write(json.dumps({
                    "id": x.id, "entry_id": x.entry_id, "reason": x.reason, "model": x.model,
                    "object_pk": x.object_pk, "op": x.op, "error": x.error, "snapshot": x.snapshot,
                    "captured_at": x.captured_at.isoformat(), "failed_at": x.failed_at.isoformat(),
                }, sort_keys=True))
            else:
                self.stdout.write(f"{x.id:>6} {x.failed_at:%Y-%m-%d %H:%M:%S} {x.reason:<5} {x.op} "
                                  f"{x.model}:{x.object_pk[:60]}  {x.error[:200]}")
        if not as_json:
            self.stdout.write(f"{n} dead letters." if n else "No dead letters.")
