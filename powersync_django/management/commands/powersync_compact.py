"""``manage.py powersync_compact [--bucket NAME ...] [--min-changed-share F] [--batch-size N]``."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from ...compaction import DEFAULT_BATCH_SIZE, DEFAULT_MIN_SHARE, CompactionProgress, CompactionResult, compact
from ...models import BucketState

# Seconds between progress lines (every bucket is printed at verbosity 2).
PROGRESS_EVERY = 2.0


class Command(BaseCommand):
    help = (
        "Compact PowerSync bucket histories: superseded operations become MOVE and each bucket's leading "
        "REMOVE/MOVE/CLEAR operations merge into one CLEAR. Checksums are unchanged, so connected clients stay "
        "consistent. Safe as a daily cron job; run it while serving and replicating. Interrupt with Ctrl-C at "
        "any time: finished transactions stay, the next run continues."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--bucket", action="append", dest="buckets", metavar="NAME",
            help="Compact only this bucket, named as stored: with its definitions-version prefix, e.g. "
                 "'2#list_todos[\"0a3e…\"]' (see `powersync_status` or the admin; repeatable; default: all).",
        )
        parser.add_argument(
            "--min-changed-share", type=float, default=DEFAULT_MIN_SHARE, metavar="SHARE",
            help="Only compact buckets where ops written since their last compaction are at least this share "
                 f"of their stored ops (default {DEFAULT_MIN_SHARE}; 0 compacts every bucket).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
            help=f"Ops read or rewritten per transaction (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        share, batch, names = options["min_changed_share"], options["batch_size"], options["buckets"]
        using = options["database"]
        if share < 0:
            raise CommandError("--min-changed-share must be 0 or more.")
        if batch < 2:
            raise CommandError("--batch-size must be at least 2.")
        if names:
            known = set(BucketState.objects.using(using).filter(bucket__in=names).values_list("bucket", flat=True))
            missing = [name for name in names if name not in known]
            if missing:
                raise CommandError(_unknown_buckets(missing, using))
        verbosity = options["verbosity"]
        last: list[CompactionProgress] = []
        next_line = [time.monotonic() + PROGRESS_EVERY]

        def progress(p: CompactionProgress) -> None:
            last[:] = [p]
            now = time.monotonic()
            if verbosity >= 2 and p.phase == "done" or verbosity >= 1 and now >= next_line[0]:
                next_line[0] = now + PROGRESS_EVERY
                self.stdout.write(_progress_line(p))

        try:
            result = compact(buckets=names, min_share=share, batch_size=batch, progress=progress, using=using)
        except KeyboardInterrupt:
            summary = _progress_line(last[0]) if last else "nothing done yet"
            raise CommandError(
                f"Interrupted ({summary}). Finished transactions are kept; run the command again to continue.",
                returncode=130,
            ) from None
        if verbosity >= 1:
            self.stdout.write(_summary(result))
        if result.rebuilt:
            self.stderr.write("Bucket storage was rebuilt during compaction (definitions changed); stopped early.")


def _unknown_buckets(missing: list[str], using: str) -> str:
    """The error for --bucket names that are not stored, with a hint at the stored form of the name."""
    hints = []
    for name in missing:
        bare = name.split("#", 1)[-1]
        similar = list(BucketState.objects.using(using).filter(bucket__endswith=f"#{bare}")
                       .values_list("bucket", flat=True)[:1])
        hints.append(f"{name!r} (did you mean {similar[0]!r}?)" if similar else repr(name))
    return ("No such bucket: " + ", ".join(hints) + ". Bucket names carry their definitions-version prefix, "
            "e.g. '2#list_todos[\"…\"]'; nothing was compacted.")


def _progress_line(p: CompactionProgress) -> str:
    where = f"finished {p.bucket}" if p.phase == "done" else f"{p.phase} pass of {p.bucket}"
    return (f"[{p.buckets_done}/{p.buckets_total} buckets] {p.ops_scanned:,} ops scanned, {p.ops_moved:,} moved, "
            f"{p.ops_removed:,} removed, {p.rate:,.0f} ops/s ({where})")


def _summary(r: CompactionResult) -> str:
    if not r.buckets_total:
        return "No bucket needs compaction."
    rate = r.ops_before / r.seconds if r.seconds > 0 else 0.0
    return (f"Compacted {r.buckets_compacted} of {r.buckets_total} buckets ({r.buckets_changed} changed): "
            f"{r.ops_before:,} -> {r.ops_after:,} ops ({r.ops_moved:,} rewritten as MOVE, {r.ops_removed:,} "
            f"removed by CLEAR) in {r.seconds:.1f} s, {rate:,.0f} ops/s.")
