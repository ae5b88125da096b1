"""Compaction of bucket histories (protocol.md §10.5): fewer stored ops, identical checksums.

A bucket is compacted against ``C``, the checkpoint current when its compaction starts, in two passes over
its ops with ``op_id <= C``:

1. **MOVE**: a PUT or REMOVE followed by a later PUT/REMOVE of the same row (both ``<= C``) becomes a MOVE:
   same op id and checksum, no row fields, ``target_op`` set.
2. **CLEAR**: the longest leading run of REMOVE/MOVE/CLEAR ops becomes one CLEAR carrying the op id of the
   last op of the run and the wrapping sum of the run's checksums.

Checksums and ``count`` of every checkpoint from ``C`` on are unchanged; a client positioned anywhere in the
old history that reads the new one from its position ends with the same rows and checksum. A stream serving
an older checkpoint may read an inconsistent mix, so every transaction that rewrites a bucket also raises
``BucketState.compacted_to``, which makes such a stream withhold that checkpoint (``sync.py``).

``compacted_to`` (and ``target_op``) is the bucket's last op id at or below ``C``, not ``C`` itself: the
rewrite depends only on ops up to that id, so a stream serving any checkpoint at or after it reads a
consistent history and need not be invalidated.

Memory stays bounded on large buckets: the latest op id of each row is computed by one SQL aggregate into a
temporary table (in the database, not in Python), and both passes walk the bucket in op id ranges of
``batch_size`` ops, one short transaction each. Each transaction locks the ``ReplicationState`` row first,
as replication batches do, so it is serialised with them (their bucket totals are read-modify-write) and
sees any rebuild of bucket storage, which stops the run. Interrupting a run between or inside transactions
leaves a consistent, partly compacted history; the next run continues.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from django.db import connections
from django.db.models import BigIntegerField, ExpressionWrapper, F, FloatField, QuerySet, Value
from django.db.models.functions import Greatest

from . import checksums, metrics
from .db import write_transaction
from .models import BucketOp, BucketState, ReplicationState

DEFAULT_MIN_SHARE = 0.1
DEFAULT_BATCH_SIZE = 1000

_LATEST = "powersync_compact_latest"


@dataclass
class CompactionResult:
    """Totals of one :func:`compact` run."""

    buckets_total: int = 0  # buckets selected (share of changed ops reached)
    buckets_compacted: int = 0  # buckets fully processed
    buckets_changed: int = 0  # buckets in which at least one op was rewritten or removed
    ops_before: int = 0  # ops (up to each bucket's compaction checkpoint) of the processed buckets
    ops_after: int = 0
    ops_moved: int = 0  # PUT/REMOVE ops rewritten as MOVE
    ops_removed: int = 0  # ops deleted by merging them into a CLEAR
    seconds: float = 0.0
    rebuilt: bool = False  # stopped because bucket storage was rebuilt meanwhile (nothing left to do)


@dataclass(frozen=True)
class CompactionProgress:
    """Reported after every transaction and when a bucket is done."""

    bucket: str
    phase: str  # "move", "clear" or "done" (the bucket is finished)
    buckets_done: int
    buckets_total: int
    ops_scanned: int
    ops_moved: int
    ops_removed: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Ops scanned per second."""
        return self.ops_scanned / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[CompactionProgress], None]


class _StorageRebuilt(Exception):
    """The bucket definitions changed and storage was rebuilt: old ops are gone."""


def compact(
    buckets: Iterable[str] | None = None,
    min_share: float = DEFAULT_MIN_SHARE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
    using: str = "default",
) -> CompactionResult:
    """Compact the given buckets (default: all) whose changed share of ops reaches ``min_share``.

    ``min_share`` compares ``ops_since_compaction / stored_ops``; 0 compacts every bucket that has ops.
    ``batch_size`` ops are read or rewritten per transaction. Safe while streams serve and the replicator
    writes. ``KeyboardInterrupt`` propagates; every committed transaction stands on its own.
    """
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2")
    if min_share < 0:
        raise ValueError("min_share must not be negative")
    run = _Run(using, batch_size, progress)
    names = None if buckets is None else sorted(set(buckets))
    run.result.buckets_total = _count_selected(using, names, min_share)
    try:
        with _LatestTable(using) as latest:
            for bucket in _selected(using, names, min_share):
                run.bucket(bucket, latest)
    except _StorageRebuilt:
        run.result.rebuilt = True
    run.result.seconds = time.monotonic() - run.started
    metrics.compaction_run(run.result.ops_removed)
    return run.result


# --- bucket selection --------------------------------------------------------------------------------


def _selection(using: str, min_share: float) -> QuerySet[BucketState]:
    return BucketState.objects.using(using).filter(
        stored_ops__gt=0,
        ops_since_compaction__gte=ExpressionWrapper(F("stored_ops") * min_share, output_field=FloatField()),
    )


def _count_selected(using: str, names: list[str] | None, min_share: float) -> int:
    qs = _selection(using, min_share)
    if names is None:
        return qs.count()
    return sum(qs.filter(bucket__in=names[i:i + 500]).count() for i in range(0, len(names), 500))


def _selected(using: str, names: list[str] | None, min_share: float) -> Iterator[str]:
    """Bucket names in order, read in pages (keyset) so millions of buckets cost little memory."""
    qs = _selection(using, min_share).order_by("bucket")
    if names is not None:
        for i in range(0, len(names), 500):
            yield from qs.filter(bucket__in=names[i:i + 500]).values_list("bucket", flat=True)
        return
    last = None
    while True:
        page_qs = qs if last is None else qs.filter(bucket__gt=last)
        page = list(page_qs.values_list("bucket", flat=True)[:500])
        yield from page
        if len(page) < 500:
            return
        last = page[-1]


# --- the latest op of every row ------------------------------------------------------------------------


class _LatestTable:
    """A temporary table holding the op ids of the latest PUT/REMOVE of every row of one bucket."""

    def __init__(self, using: str) -> None:
        self.using = using
        vendor = connections[using].vendor
        self.name = f"pg_temp.{_LATEST}" if vendor == "postgresql" else f"temp.{_LATEST}"
        self.postgres = vendor == "postgresql"

    def __enter__(self) -> _LatestTable:
        with connections[self.using].cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.name}")
            cursor.execute(f"CREATE TEMPORARY TABLE {_LATEST} (op_id BIGINT PRIMARY KEY)")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with connections[self.using].cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {self.name}")
        except Exception:  # an aborted transaction or closed connection drops it anyway
            if exc[0] is None:
                raise

    def fill(self, bucket: str, upto: int) -> None:
        op_table = BucketOp._meta.db_table
        with connections[self.using].cursor() as cursor:
            cursor.execute(f"TRUNCATE {self.name}" if self.postgres else f"DELETE FROM {self.name}")
            cursor.execute(
                f"INSERT INTO {self.name} (op_id) SELECT MAX(op_id) FROM {op_table} "
                "WHERE bucket = %s AND op_id <= %s AND op IN ('PUT', 'REMOVE') GROUP BY object_type, object_id",
                [bucket, upto],
            )
            if self.postgres:
                cursor.execute(f"ANALYZE {self.name}")


# --- one run -------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, using: str, batch_size: int, progress: ProgressCallback | None) -> None:
        self.using = using
        self.batch_size = batch_size
        self.progress = progress
        self.result = CompactionResult()
        self.started = time.monotonic()
        self.scanned = 0
        self.op_table = BucketOp._meta.db_table

    def _report(self, bucket: str, phase: str) -> None:
        if self.progress is not None:
            r = self.result
            self.progress(CompactionProgress(
                bucket=bucket, phase=phase, buckets_done=r.buckets_compacted, buckets_total=r.buckets_total,
                ops_scanned=self.scanned, ops_moved=r.ops_moved, ops_removed=r.ops_removed,
                elapsed=time.monotonic() - self.started,
            ))

    def _lock(self, version: int) -> None:
        """Lock the replication state row (serialises with replication batches); stop if storage was rebuilt."""
        row = (ReplicationState.objects.using(self.using).select_for_update().filter(pk=1)
               .values_list("rules_version", flat=True).first())
        if row is None or row != version:
            raise _StorageRebuilt

    def _record(self, bucket: str, upto: int, removed: int) -> None:
        """Bucket totals after a rewrite, in its transaction: fewer stored ops, ``compacted_to`` raised."""
        BucketState.objects.using(self.using).filter(bucket=bucket).update(
            stored_ops=F("stored_ops") - removed,
            compacted_to=Greatest("compacted_to", Value(upto, output_field=BigIntegerField())),
        )

    def bucket(self, bucket: str, latest: _LatestTable) -> None:
        db = self.using
        state = ReplicationState.objects.using(db).filter(pk=1).values_list("rules_version", "last_op_id").first()
        if state is None:
            return
        version, checkpoint = int(state[0]), int(state[1])
        with connections[db].cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*), COALESCE(MAX(op_id), 0) FROM {self.op_table} WHERE bucket = %s AND op_id <= %s",
                [bucket, checkpoint],
            )
            count, upto = (int(v) for v in cursor.fetchone())
        moved = removed = 0
        if count:
            latest.fill(bucket, upto)
            moved = self._moves(bucket, upto, version, count, latest.name)
            removed = self._clears(bucket, upto, version)
        with write_transaction(db):
            self._lock(version)
            # Ops written since this compaction's checkpoint (exact: replication batches wait for the lock).
            pending = BucketOp.objects.using(db).filter(bucket=bucket, op_id__gt=checkpoint).count()
            BucketState.objects.using(db).filter(bucket=bucket).update(ops_since_compaction=pending)
        r = self.result
        r.buckets_compacted += 1
        r.buckets_changed += 1 if moved or removed else 0
        r.ops_before += count
        r.ops_after += count - removed
        self._report(bucket, "done")

    def _moves(self, bucket: str, upto: int, version: int, count: int, latest: str) -> int:
        """Pass 1: superseded PUT/REMOVE ops become MOVE, ``batch_size`` ops per transaction."""
        db = self.using
        moved = 0
        low = 0
        left = count
        while low < upto:
            with connections[db].cursor() as cursor:
                cursor.execute(
                    f"SELECT op_id FROM {self.op_table} WHERE bucket = %s AND op_id > %s AND op_id <= %s "
                    "ORDER BY op_id LIMIT 1 OFFSET %s",
                    [bucket, low, upto, self.batch_size - 1],
                )
                row = cursor.fetchone()
            high = int(row[0]) if row else upto
            with write_transaction(db):
                self._lock(version)
                with connections[db].cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {self.op_table} SET op = 'MOVE', object_type = NULL, object_id = NULL, data = NULL, "
                        "target_op = %s WHERE bucket = %s AND op_id > %s AND op_id <= %s AND op IN ('PUT', 'REMOVE') "
                        f"AND op_id NOT IN (SELECT op_id FROM {latest} WHERE op_id > %s AND op_id <= %s)",
                        [upto, bucket, low, high, low, high],
                    )
                    n = cursor.rowcount
                if n:
                    self._record(bucket, upto, 0)
            moved += n
            self.result.ops_moved += n
            step = min(self.batch_size, left)
            left -= step
            self.scanned += step
            low = high
            self._report(bucket, "move")
        return moved

    def _clears(self, bucket: str, upto: int, version: int) -> int:
        """Pass 2: merge the leading REMOVE/MOVE/CLEAR run into one CLEAR, ``batch_size`` ops at a time."""
        db = self.using
        removed = 0
        start = 0  # ops before the CLEAR made by the previous transaction are gone: skip their dead index entries
        while True:
            with write_transaction(db):
                self._lock(version)
                with connections[db].cursor() as cursor:
                    cursor.execute(
                        f"SELECT op_id, op, checksum FROM {self.op_table} WHERE bucket = %s AND op_id >= %s "
                        "AND op_id <= %s ORDER BY op_id LIMIT %s",
                        [bucket, start, upto, self.batch_size],
                    )
                    rows = cursor.fetchall()
                    run = 0
                    while run < len(rows) and rows[run][1] != BucketOp.PUT:
                        run += 1
                    if run >= 2:
                        last = rows[run - 1][0]
                        cursor.execute(
                            f"DELETE FROM {self.op_table} WHERE bucket = %s AND op_id >= %s AND op_id < %s",
                            [bucket, rows[0][0], last],
                        )
                        if cursor.rowcount != run - 1:
                            raise RuntimeError(f"powersync compaction: ops of {bucket!r} changed underneath")
                        cursor.execute(
                            f"UPDATE {self.op_table} SET op = 'CLEAR', object_type = NULL, object_id = NULL, "
                            "data = NULL, checksum = %s, target_op = %s WHERE op_id = %s",
                            [checksums.total(r[2] for r in rows[:run]), upto, last],
                        )
                        self._record(bucket, upto, run - 1)
                        start = last
                        removed += run - 1
                        self.result.ops_removed += run - 1
            if run >= 2:
                self._report(bucket, "clear")
            if run < len(rows) or len(rows) < self.batch_size:
                return removed

