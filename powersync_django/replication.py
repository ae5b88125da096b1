"""Replication: drain the outbox, in order, into bucket operations, bucket state and checkpoints.

One replicator works at a time: it must hold the lease on the ``ReplicationState`` row, checked and renewed
inside every batch transaction (the row is locked with SELECT ... FOR UPDATE, so batches never interleave).
A batch commits its ops, bucket totals, row memberships, the deletion of the outbox entries it processed and
a new checkpoint in one transaction: a crash anywhere loses and duplicates nothing.

Why deleting entries (instead of advancing a position) is exact on PostgreSQL with concurrent writers: an
outbox id can become visible after a larger one, so "everything up to id N" is not a safe position. Deleted
entries are simply gone and the next batch picks up whatever has become visible. Entries of the same row are
written after the row's own write (which locks the row until commit), so for any one row id order is commit
order and a snapshot that sees an entry sees every earlier entry of that row.

Poison entries: when a batch fails with an error that is about its data (not the connection), its entries
are replicated again in halves, each in its own transaction, down to the entry that fails alone; that one
is moved to :class:`DeadLetter` (with the error) and logged, the innocent ones replicate. Later entries of a
row that has a dead letter are dead-lettered too (reason ``held``), so they never overtake it: ``manage.py
powersync_deadletters retry`` re-queues a row's dead letters in their order.

Throughput: entries are read as tuples, snapshot rows rendered from their snapshot values
(``encoding.client_converter``), and ops, bucket totals and memberships written with one bulk statement each
(``bulk_sql``: COPY on PostgreSQL). ``bench/replication.py`` measures it.

Rebuilds (:meth:`Replicator._build_step`) run in bounded transactions: the rows of each model are read in
primary key order, a few thousand per transaction, and written under the new version prefix with op ids
above the live ones, while streams keep serving the live version. The outbox is not consumed while rows are
read; afterwards its entries are replayed against the new version (per-row order makes the result the
current data), and the last of those transactions switches ``rules_version``. Old data is then removed in
batches. Transient: clients see no change during a rebuild (the live version is frozen) and get everything
when they move to the new version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

import orjson
from django.db import DatabaseError, InterfaceError, OperationalError, connections, models, transaction

from . import checksums, metrics, notify
from .bulk_sql import Table, delete_in, select_in
from .capture import OUTBOX_CHANNEL
from .conf import get_config
from .db import write_transaction
from .encoding import SnapshotRow
from .models import (
    BucketOp,
    BucketState,
    Checkpoint,
    DeadLetter,
    OutboxEntry,
    ReplicationState,
    RowBuckets,
    WriteCheckpoint,
)
from .rules import Rules, get_rules

logger = logging.getLogger(__name__)

CHECKPOINT_CHANNEL = "powersync_checkpoint"
# A checkpoint lists at most this many changed buckets; beyond that it says "any".
MAX_LISTED_BUCKETS = 500
# Checkpoint rows kept for the SQLite pollers (older ones are pruned).
CHECKPOINTS_KEPT = 1000
# Most rows read per rebuild transaction; a step slower than BUILD_STEP_SECONDS halves the next one (down to
# BUILD_ROWS_SQLITE), a quick one doubles it back. Old ops/rows removed per cleanup transaction.
BUILD_ROWS = 5000
BUILD_STEP_SECONDS = 0.5
# SQLite has one write lock: smaller build transactions keep app writes from waiting long, and a pause of
# half a step (at least BUILD_PAUSE_SQLITE seconds, at most 0.1) after each lets them in.
BUILD_ROWS_SQLITE = 500
BUILD_PAUSE_SQLITE = 0.05
# SQLite: most outbox entries per replication transaction, whatever REPLICATION_BATCH_SIZE says (app writes
# wait for the batch's write lock).
BATCH_LIMIT_SQLITE = 1000
CLEANUP_ROWS = 5000
# Seconds a build waits for transactions older than its start before reading rows (see _build_step).
SUBSUME_WAIT = 5.0
# Longest source key kept readable; longer primary keys are hashed (RowBuckets.source is bounded).
MAX_SOURCE_LENGTH = 300
# SQLSTATE classes of PostgreSQL errors caused by the data being written: such an entry is a poison entry.
POISON_SQLSTATE_CLASSES = ("22", "23", "54")


class LeaseLost(Exception):
    """Another replicator holds the lease."""


def source_key(label: str, pk: str) -> str:
    """``label:pk``; a pk too long for the column becomes ``label#<sha256>`` (labels hold no ``:`` or ``#``)."""
    key = f"{label}:{pk}"
    return key if len(key) <= MAX_SOURCE_LENGTH else f"{label}#{hashlib.sha256(pk.encode()).hexdigest()}"


def is_poison(exc: BaseException) -> bool:
    """Whether a failed batch may be caused by the data of an entry (rather than the database connection).

    Python errors (a snapshot that cannot be decoded, ...) and PostgreSQL data, integrity and size-limit
    errors are; connection, lock, serialization, shutdown and schema errors are not (retrying fixes those).
    """
    if isinstance(exc, LeaseLost | InterfaceError):
        return False
    if isinstance(exc, DatabaseError):
        code = getattr(exc.__cause__, "sqlstate", None)
        if code:
            return code[:2] in POISON_SQLSTATE_CLASSES
        return not isinstance(exc, OperationalError)  # SQLite: locked, I/O, missing table
    return True


class Entry(NamedTuple):
    """The columns of an outbox entry the replicator reads (tuples: model instances cost more than the work)."""

    id: int
    model: str
    object_pk: str
    op: str
    snapshot: str | None


ENTRY_COLUMNS = Entry._fields


def decode_snapshot(model: type[models.Model], text: str) -> SnapshotRow:
    """The row of a snapshot; field values are decoded when read (rendering uses the snapshot values)."""
    return SnapshotRow(_fields_of(model), orjson.loads(text))


@cache
def _fields_of(model: type[models.Model]) -> dict[str, models.Field]:
    return {f.attname: f for f in model._meta.concrete_fields}


@dataclass
class _Batch:
    """Ops and state changes being assembled for one transaction."""

    next_op: int
    # (op_id, bucket, op, object_type, object_id, data, checksum): rows of the op table
    ops: list[tuple] = field(default_factory=list)
    deltas: dict[str, list[int]] = field(default_factory=dict)  # bucket -> [checksum, count, last_op]
    models: set[str] = field(default_factory=set)

    def add(self, bucket: str, op: str, table: str, object_id: str, data: str | None, checksum: int) -> None:
        op_id = self.next_op
        self.next_op += 1
        self.ops.append((op_id, bucket, op, table, object_id, data, checksum))
        d = self.deltas.setdefault(bucket, [0, 0, 0])
        d[0] = (d[0] + checksum) & checksums.MASK
        d[1] += 1
        d[2] = op_id

    def apply_row(self, old: list[list[str]], new: list[tuple[str, str, str, str]]) -> list[list[str]]:
        """PUT the row into its current buckets, REMOVE it from the ones it left; return new memberships."""
        keep = set()
        for bucket, table, object_id, data in new:
            self.add(bucket, BucketOp.PUT, table, object_id, data, checksums.put_checksum(table, object_id, data))
            keep.add((bucket, table, object_id))
        for bucket, table, object_id in old:
            if (bucket, table, object_id) not in keep:
                self.add(bucket, BucketOp.REMOVE, table, object_id, None, checksums.remove_checksum(table, object_id))
        return [[b, t, o] for b, t, o, _ in new]


class Replicator:
    """Turns outbox entries into bucket operations. Construct one per thread or process."""

    def __init__(self, using: str = "default", owner: str | None = None) -> None:
        self.using = using
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.config = get_config()
        # Set by run_batch: whether more work is pending (a full batch, a build or cleanup under way).
        self.more = False
        # Rows of the next build step (PostgreSQL; adapted to BUILD_STEP_SECONDS).
        self.build_size = BUILD_ROWS

    # --- lease -----------------------------------------------------------------------------------

    def _state_for_update(self) -> ReplicationState:
        state = ReplicationState.objects.using(self.using).select_for_update().filter(pk=1).first()
        if state is None:
            ReplicationState.objects.using(self.using).get_or_create(pk=1)
            state = ReplicationState.objects.using(self.using).select_for_update().get(pk=1)
        return state

    def _hold_lease(self, state: ReplicationState) -> None:
        now = time.time()
        if state.lease_owner not in ("", self.owner) and state.lease_expires > now:
            raise LeaseLost(state.lease_owner)
        state.lease_owner = self.owner
        state.lease_expires = now + self.config["LEASE_SECONDS"]

    def try_acquire(self) -> bool:
        """Take (or renew) the lease; False if another replicator holds it (or its batch keeps the database
        locked right now)."""
        try:
            with write_transaction(self.using):
                state = self._state_for_update()
                self._hold_lease(state)
                state.save(using=self.using, update_fields=["lease_owner", "lease_expires"])
            return True
        except LeaseLost:
            return False
        except OperationalError as exc:
            if is_poison(exc):
                raise
            logger.debug("powersync: lease not taken: %s", exc)
            return False

    def release(self) -> None:
        with write_transaction(self.using):
            ReplicationState.objects.using(self.using).filter(pk=1, lease_owner=self.owner).update(
                lease_owner="", lease_expires=0
            )

    # --- batches ---------------------------------------------------------------------------------

    def run_batch(self, limit: int | None = None) -> int:
        """Replicate up to ``limit`` outbox entries in one transaction; return how many were processed.

        When the bucket definitions changed (or were never built, or a resync was requested), a call does one
        bounded step of the rebuild instead. ``self.more`` tells whether work remains (build, cleanup, entries).
        A batch failing because of an entry's data is replicated again in pieces (see :meth:`_isolate`).
        Raises :class:`LeaseLost` when another replicator holds the lease.
        """
        limit = limit or self.config["REPLICATION_BATCH_SIZE"]
        if connections[self.using].vendor == "sqlite":
            limit = min(limit, BATCH_LIMIT_SQLITE)
        rules = get_rules()
        ids: list[int] = []
        try:
            return self._run_batch(rules, limit, ids)
        except Exception as exc:
            if not ids or not is_poison(exc):
                raise
            logger.warning("powersync: a replication batch of %s entries failed (%s: %s); isolating the culprit",
                           len(ids), type(exc).__name__, exc)
            n = self._isolate(rules, ids)
            self.more = True
            return n

    def _run_batch(self, rules: Rules, limit: int, ids: list[int]) -> int:
        """One transaction of :meth:`run_batch`; ``ids`` receives the ids of the entries it replicates."""
        db = self.using
        checkpoint: Checkpoint | None = None
        started = time.monotonic()
        built = False
        with write_transaction(db):
            state = self._state_for_update()
            self._hold_lease(state)
            if state.building_version and state.building_hash != rules.hash:
                logger.info("powersync: definitions changed or resync requested during the build of version %s; "
                            "starting over", state.building_version)
                self._start_build(state, rules)
            elif not state.building_version and state.rules_hash != rules.hash:
                self._start_build(state, rules)
            building = bool(state.building_version)
            if building and state.build_model:
                self._build_step(state, rules)
                built = self.more = True
            else:
                qs = OutboxEntry.objects.using(db).order_by("id")
                if building:
                    qs = qs.exclude(op=OutboxEntry.MARKER)  # applied by live batches after the switch
                    covered = list(qs.filter(id__lte=state.build_outbox_max).values_list("id", flat=True)[:limit])
                    if covered:  # committed before the build read rows: already in it
                        OutboxEntry.objects.using(db).filter(id__in=covered).delete()
                        state.save(using=db, update_fields=["lease_owner", "lease_expires"])
                        self.more = True
                        return 0
                entries = list(map(Entry._make, qs.values_list(*ENTRY_COLUMNS)[:limit]))
                ids.extend(e.id for e in entries)
                if entries:
                    checkpoint = self._replicate(state, rules, entries, build=building)
                if building and len(entries) < limit:
                    checkpoint = self._switch(state, rules)
                elif not entries:
                    state.save(using=db, update_fields=["lease_owner", "lease_expires"])
                self.more = building or len(entries) >= limit
                if not self.more and state.cleanup_below:
                    self.more = self._cleanup_step(state)
        if checkpoint is not None:
            notify.checkpoint_committed(checkpoint.id)
        if built and connections[db].vendor == "sqlite":
            # A build step held SQLite's only write lock: leave a gap long enough for a waiting writer's busy
            # handler (it sleeps up to 100 ms between tries) to get it before the next step. At least
            # BUILD_PAUSE_SQLITE: with quicker steps, shorter gaps were missed and the longest waits grew.
            time.sleep(min(0.1, max(BUILD_PAUSE_SQLITE, (time.monotonic() - started) / 2)))
        return len(ids)

    def _replicate(self, state: ReplicationState, rules: Rules, entries: list[Entry],
                   build: bool = False) -> Checkpoint | None:
        """Turn entries into ops, in the live version or (``build``) in the version being built.

        Returns the checkpoint of a live batch (None while building: the switch writes one).
        """
        db = self.using
        version = state.building_version if build else state.rules_version
        batch = _Batch(next_op=state.build_next_op if build else state.last_op_id + 1)
        sources = {source_key(e.model, e.object_pk) for e in entries if e.op != OutboxEntry.MARKER}
        memberships, stored = self._memberships(sources, version)
        unchanged = dict(memberships)  # apply_row gives new lists: these stay what storage holds
        dead_sources = self._dead_sources(sources)
        held: list[Entry] = []
        markers: dict[str, int] = {}
        model_cache: dict[str, type[models.Model] | None] = {}
        for entry in entries:
            if entry.op == OutboxEntry.MARKER:
                markers[entry.object_pk] = max(markers.get(entry.object_pk, 0), int(entry.snapshot or 0))
                continue
            key = source_key(entry.model, entry.object_pk)
            if key in dead_sources:
                held.append(entry)  # must not overtake the row's dead letter
                continue
            model = model_cache.get(entry.model) or _model_for(entry.model, rules)
            model_cache[entry.model] = model
            # Rows read by parameter querysets: which open streams re-evaluate their bucket set.
            batch.models.update(rules.change_keys(entry.model, entry.snapshot))
            if model is None:
                continue  # not synced (only read by parameter querysets, or no longer tracked)
            row = decode_snapshot(model, entry.snapshot) if entry.op == OutboxEntry.SAVE and entry.snapshot else None
            new = rules.row_buckets(entry.model, row, version)
            memberships[key] = batch.apply_row(memberships.get(key, []), new)
        self._write_ops(batch)
        transaction.on_commit(lambda: metrics.replicated(len(entries), len(batch.ops)), using=db)
        # Rows whose buckets did not change (most updates) keep their RowBuckets row as it is.
        self._write_memberships({k: memberships[k] for k in sources
                                 if k in memberships and unchanged.get(k) != memberships[k]}, version, stored)
        if held:
            _dead_letters(db, held, DeadLetter.HELD, "an earlier entry of this row is a dead letter")
        delete_in(db, OutboxEntry, "id", [e.id for e in entries])
        state.outbox_position = max(state.outbox_position, entries[-1].id)
        if build:
            state.build_next_op = batch.next_op
            state.save(using=db)
            return None
        self._apply_markers(markers)
        state.last_op_id = batch.next_op - 1
        state.save(using=db)
        return self._checkpoint(state, batch.deltas.keys(), rules.bounded_keys(batch.models), markers.keys())

    # --- poison entries ------------------------------------------------------------------------------

    def _isolate(self, rules: Rules, ids: list[int]) -> int:
        """Replicate entries in halves, each in its own transaction; dead-letter the one that fails alone."""
        try:
            return self._run_entries(rules, ids)
        except Exception as exc:
            if not is_poison(exc):
                raise
            if len(ids) == 1:
                self._dead_letter(ids[0], exc)
                return 1
        mid = len(ids) // 2
        return self._isolate(rules, ids[:mid]) + self._isolate(rules, ids[mid:])

    def _run_entries(self, rules: Rules, ids: list[int]) -> int:
        db = self.using
        with write_transaction(db):
            state = self._state_for_update()
            self._hold_lease(state)
            entries = list(map(Entry._make, OutboxEntry.objects.using(db).filter(id__in=ids).order_by("id")
                               .values_list(*ENTRY_COLUMNS)))
            if not entries:
                return 0
            building = bool(state.building_version)
            checkpoint = self._replicate(state, rules, entries, build=building)
        if checkpoint is not None:
            notify.checkpoint_committed(checkpoint.id)
        return len(entries)

    def _dead_letter(self, entry_id: int, exc: BaseException) -> None:
        db = self.using
        with write_transaction(db):
            state = self._state_for_update()
            self._hold_lease(state)
            entry = OutboxEntry.objects.using(db).filter(id=entry_id).first()
            if entry is None:
                return
            _dead_letters(db, [entry], DeadLetter.ERROR, f"{type(exc).__name__}: {exc}")
            OutboxEntry.objects.using(db).filter(id=entry_id).delete()
            state.save(using=db, update_fields=["lease_owner", "lease_expires"])
        logger.error("powersync: outbox entry %s (%s %s:%.100s) cannot be replicated and was moved to the dead "
                     "letters (manage.py powersync_deadletters): %s: %s",
                     entry_id, entry.op, entry.model, entry.object_pk, type(exc).__name__, exc)

    def _memberships(self, sources: set[str], version: int) -> tuple[dict[str, list[list[str]]], set[str]]:
        """(bucket memberships of the rows in storage ``version``, keys of the rows with a RowBuckets row).

        Rows of other versions are in no bucket (their row is overwritten). The version is compared here, not
        in SQL: a planner may otherwise scan the version index.
        """
        table = RowBuckets._meta.db_table
        found = list(select_in(self.using, f"SELECT source, buckets, version FROM {table} WHERE source {{keys}}",  # noqa: S608
                               sources))
        return {source: orjson.loads(buckets) for source, buckets, v in found if v == version}, {f[0] for f in found}

    def _dead_sources(self, sources: set[str]) -> set[str]:
        """The rows among ``sources`` that have dead letters (their later entries are held back)."""
        if not DeadLetter.objects.using(self.using).exists():
            return set()
        table = DeadLetter._meta.db_table
        return {source for (source,) in select_in(
            self.using, f"SELECT DISTINCT source FROM {table} WHERE source {{keys}}", sources)}  # noqa: S608

    def _write_ops(self, batch: _Batch) -> None:
        """Insert the batch's ops and add their totals to the buckets' (bulk_sql: the ORM's per-object insert
        compilation, and on PostgreSQL client-side parameter handling, cost more than the database work)."""
        if not batch.ops:
            return
        _OPS.write(self.using, batch.ops)
        _STATE.write(self.using, [
            (bucket, checksum, count, count, count, last_op, 0)
            for bucket, (checksum, count, last_op) in batch.deltas.items()
        ])

    def _write_memberships(self, memberships: dict[str, list[list[str]]], version: int, stored: set[str]) -> None:
        """Store the rows' memberships; ``stored``: the keys that have a RowBuckets row (this transaction holds
        the lease, nothing else writes them): rows without one are inserted, the others updated."""
        db = self.using
        delete_in(db, RowBuckets, "source", [k for k, v in memberships.items() if not v and k in stored])
        _ROWS.write(db, [(k, orjson.dumps(v).decode(), version) for k, v in memberships.items() if v and k in stored])
        _NEW_ROWS.write(db, [(k, orjson.dumps(v).decode(), version) for k, v in memberships.items()
                             if v and k not in stored])

    def _apply_markers(self, markers: dict[str, int]) -> None:
        for key, counter in markers.items():
            WriteCheckpoint.objects.using(self.using).filter(key=key, replicated__lt=counter).update(replicated=counter)

    def _checkpoint(self, state: ReplicationState, buckets: Any, changed_models: Any, wc_keys: Any,
                    any_bucket: bool = False) -> Checkpoint:
        db = self.using
        buckets = list(buckets)
        listed = not any_bucket and len(buckets) <= MAX_LISTED_BUCKETS
        cp = Checkpoint.objects.using(db).create(
            last_op_id=state.last_op_id,
            outbox_position=state.outbox_position,
            changed_buckets=orjson.dumps(buckets).decode() if listed else None,
            changed_models=orjson.dumps(sorted(changed_models)).decode(),
            write_checkpoints=orjson.dumps(sorted(wc_keys)).decode(),
        )
        if cp.id % 100 == 0:
            Checkpoint.objects.using(db).filter(id__lte=cp.id - CHECKPOINTS_KEPT).delete()
        connection = connections[db]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [CHECKPOINT_CHANNEL, str(cp.id)])
        return cp

    # --- rebuild -----------------------------------------------------------------------------------

    def _start_build(self, state: ReplicationState, rules: Rules) -> None:
        """Begin building a new version (a build already under way is abandoned: its data is cleaned up)."""
        db = self.using
        first = max(state.last_op_id, state.build_next_op - 1) + 1
        state.building_version = max(state.rules_version, state.building_version) + 1
        state.building_hash = rules.hash
        state.build_first_op = state.build_next_op = first
        labels = [m._meta.label_lower for m in rules.models]
        state.build_model = labels[0] if labels else ""
        state.build_after = ""
        state.build_rows_done = 0
        state.build_rows_total = sum(m._base_manager.using(db).count() for m in rules.models)
        state.build_started = time.time()
        state.build_outbox_max = OutboxEntry.objects.using(db).aggregate(m=models.Max("id"))["m"] or 0
        state.build_xmax = 0
        if connections[db].vendor == "postgresql":
            with connections[db].cursor() as cursor:
                cursor.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                state.build_xmax = cursor.fetchone()[0]
        state.save(using=db)
        logger.info("powersync: building bucket storage version %s (%s rows)", state.building_version,
                    state.build_rows_total)

    def _older_transactions_done(self, state: ReplicationState) -> bool:
        """PostgreSQL: whether every transaction that was running when the build started has ended.

        Until then an entry with an id up to ``build_outbox_max`` may still commit after rows are read, so
        rows are not read yet. After ``SUBSUME_WAIT`` seconds the build goes ahead and replays every entry.
        """
        if not state.build_xmax:
            return True
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) x WHERE x::text::bigint < %s "
                "AND x::text::bigint <> coalesce(pg_current_xact_id_if_assigned()::text::bigint, 0)",
                [state.build_xmax],
            )
            running = cursor.fetchone()[0]
        if running and time.time() - state.build_started < SUBSUME_WAIT:
            return False
        if running:
            state.build_outbox_max = 0  # cannot tell which early entries the build will see: replay them all
        state.build_xmax = 0
        return True

    def _build_step(self, state: ReplicationState, rules: Rules) -> None:
        """Read the next ``BUILD_ROWS`` rows of the model being built into the new version."""
        db = self.using
        if not self._older_transactions_done(state):
            state.save(using=db)
            time.sleep(0.01)
            return
        labels = [m._meta.label_lower for m in rules.models]
        label = state.build_model
        model = rules.models[labels.index(label)]
        pk = model._meta.pk
        version = state.building_version
        qs = model._base_manager.using(db).order_by(pk.attname).values(*[f.attname for f in model._meta.concrete_fields])
        if state.build_after:
            qs = qs.filter(pk__gt=pk.to_python(state.build_after))
        sqlite = connections[db].vendor == "sqlite"
        size = min(BUILD_ROWS_SQLITE if sqlite else self.build_size, BUILD_ROWS)  # tests lower BUILD_ROWS
        started = time.monotonic()
        rows, failed, seen, last_pk = _read_build_rows(qs, pk, label, size, db)
        batch = _Batch(next_op=state.build_next_op)
        memberships: dict[str, list[list[str]]] = {}
        for row in rows:
            try:
                new = rules.row_buckets(label, row, version)
            except Exception as exc:  # a row that cannot be rendered must not stop the build
                failed.append(_row_dead_letter(label, str(row[pk.attname]), exc))
                continue
            if new:
                memberships[source_key(label, str(row[pk.attname]))] = batch.apply_row([], new)
        self._flush_rebuild(batch, memberships, version)
        if failed:
            DeadLetter.objects.using(db).bulk_create(failed)
            for letter in failed:
                logger.error("powersync: row %s:%.100s cannot be replicated (build of version %s) and was recorded "
                             "as a dead letter: %s", label, letter.object_pk, version, letter.error)
        elapsed = time.monotonic() - started
        if elapsed > BUILD_STEP_SECONDS:
            self.build_size = max(BUILD_ROWS_SQLITE, size // 2)
        elif elapsed < BUILD_STEP_SECONDS / 4 and seen == size:
            self.build_size = min(BUILD_ROWS, size * 2)
        state.build_next_op = batch.next_op
        state.build_rows_done += seen
        if seen == size:
            state.build_after = str(last_pk)
        else:
            following = labels.index(label) + 1
            state.build_model = labels[following] if following < len(labels) else ""
            state.build_after = ""
        state.save(using=db)

    def _flush_rebuild(self, batch: _Batch, memberships: dict[str, list[list[str]]], version: int) -> None:
        self._write_ops(batch)
        _ROWS.write(self.using, [(k, orjson.dumps(v).decode(), version) for k, v in memberships.items()])

    def _switch(self, state: ReplicationState, rules: Rules) -> Checkpoint:
        """Make the built version the live one (the outbox has been replayed into it)."""
        version = state.building_version
        state.rules_version = version
        state.rules_hash = state.building_hash  # "" when a resync was requested meanwhile: built again
        state.last_op_id = state.build_next_op - 1
        state.cleanup_below = state.build_first_op
        state.building_version = 0
        state.building_hash = ""
        state.build_model = state.build_after = ""
        state.save(using=self.using)
        logger.info("powersync: built bucket storage version %s from %s rows in %.1f s", version,
                    state.build_rows_done, time.time() - state.build_started)
        # Streams see the version change in this checkpoint and reconnect.
        models_ = [m._meta.label_lower for m in rules.models] + sorted(rules.parameter_models)
        return self._checkpoint(state, [], models_, [], any_bucket=True)

    def _cleanup_step(self, state: ReplicationState) -> bool:
        """Remove a bounded amount of data of older versions; return whether some is left."""
        db = self.using
        below = state.cleanup_below
        ops = list(BucketOp.objects.using(db).filter(op_id__lt=below).order_by("op_id")
                   .values_list("op_id", flat=True)[CLEANUP_ROWS - 1:CLEANUP_ROWS])
        if ops:
            BucketOp.objects.using(db).filter(op_id__lte=ops[0]).delete()
            return True
        BucketOp.objects.using(db).filter(op_id__lt=below).delete()
        for qs in (BucketState.objects.using(db).filter(last_op_id__lt=below),
                   RowBuckets.objects.using(db).exclude(version=state.rules_version)):
            keys = list(qs.values_list("pk", flat=True)[:CLEANUP_ROWS])
            if keys:
                qs.model.objects.using(db).filter(pk__in=keys).delete()
                return True
        state.cleanup_below = 0
        state.save(using=db, update_fields=["cleanup_below"])
        return False

    def request_rebuild(self) -> None:
        """Force a rebuild (``manage.py powersync_resync``); one under way starts over."""
        with write_transaction(self.using):
            state = self._state_for_update()
            self._hold_lease(state)
            _request_rebuild(state, self.using)

    def drain(self, max_batches: int | None = None) -> int:
        """Run batches until the outbox is empty; return the number of entries processed."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            n = self.run_batch()
            batches += 1
            total += n
            if n == 0 and not self.more:
                break
        return total


_OPS = Table(BucketOp, ["op_id", "bucket", "op", "object_type", "object_id", "data", "checksum"])
_STATE = Table(
    BucketState, ["bucket", "checksum", "count", "stored_ops", "ops_since_compaction", "last_op_id", "compacted_to"],
    "bucket",
    f"checksum = ({{t}}.checksum + excluded.checksum) & {checksums.MASK}, count = {{t}}.count + excluded.count, "
    "stored_ops = {t}.stored_ops + excluded.stored_ops, "
    "ops_since_compaction = {t}.ops_since_compaction + excluded.ops_since_compaction, "
    "last_op_id = excluded.last_op_id",
)
_NEW_ROWS = Table(RowBuckets, ["source", "buckets", "version"])
_ROWS = Table(RowBuckets, ["source", "buckets", "version"], "source",
                    "buckets = excluded.buckets, version = excluded.version")


def _request_rebuild(state: ReplicationState, using: str) -> None:
    state.rules_hash = ""
    state.building_hash = ""
    state.save(using=using, update_fields=["rules_hash", "building_hash"])


def request_resync(using: str = "default") -> int:
    """Mark bucket storage for a rebuild by whichever replicator runs next; return the live version."""
    with write_transaction(using):
        ReplicationState.objects.using(using).get_or_create(pk=1)
        state = ReplicationState.objects.using(using).select_for_update().get(pk=1)
        _request_rebuild(state, using)
    return state.rules_version


def _dead_letters(using: str, entries: list[Entry] | list[OutboxEntry], reason: str, error: str) -> None:
    ids = [e.id for e in entries]
    entries = [e for start in range(0, len(ids), 500)
               for e in OutboxEntry.objects.using(using).filter(id__in=ids[start:start + 500]).order_by("id")]
    DeadLetter.objects.using(using).bulk_create([
        DeadLetter(entry_id=e.id, source=source_key(e.model, e.object_pk), model=e.model, object_pk=e.object_pk,
                   op=e.op, snapshot=e.snapshot, reason=reason, error=error, captured_at=e.created_at)
        for e in entries
    ])


def _row_dead_letter(label: str, pk: str, exc: BaseException) -> DeadLetter:
    """A row the build could not render: no outbox entry (``entry_id`` 0, no snapshot); retrying it captures
    the row's current state again."""
    from django.utils import timezone

    return DeadLetter(entry_id=0, source=source_key(label, pk), model=label, object_pk=pk, op=OutboxEntry.SAVE,
                      snapshot=None, reason=DeadLetter.ERROR, error=f"{type(exc).__name__}: {exc}",
                      captured_at=timezone.now())


def _read_build_rows(qs: models.QuerySet, pk: models.Field, label: str, size: int,
                     using: str) -> tuple[list[dict[str, Any]], list[DeadLetter], int, Any]:
    """(rows, dead letters, rows seen, last primary key) of the next ``size`` rows of a build.

    A row the ORM cannot read (a value its field cannot convert: PostgreSQL's ``'infinity'`` date, an invalid
    date or decimal stored in SQLite by another program) must not stop the build forever: when the chunk
    cannot be read, its rows are read one by one and those that fail become dead letters.
    """
    try:
        with transaction.atomic(using=using):
            rows = list(qs[:size])
    except Exception as exc:
        if not is_poison(exc):
            raise
        keys = list(qs.values_list(pk.attname, flat=True)[:size])
        rows, failed = [], []
        for key in keys:
            try:
                with transaction.atomic(using=using):
                    rows.append(qs.get(pk=key))
            except Exception as row_exc:
                if not is_poison(row_exc):
                    raise
                failed.append(_row_dead_letter(label, str(key), row_exc))
        return rows, failed, len(keys), keys[-1] if keys else None
    return rows, [], len(rows), rows[-1][pk.attname] if rows else None


def _model_for(label: str, rules: Rules) -> type[models.Model] | None:
    queries = rules.by_model.get(label)
    return queries[0].model if queries else None


def replicate_now(using: str = "default") -> int:
    """Replicate everything pending in this thread (tests, commands). Waits for a held lease to expire.

    Also waits out SQLite's "database table is locked": a shared-cache database (Django's in-memory test
    database) answers a write that meets another connection's running read with it at once, without the busy
    timeout that covers file databases; the batch was rolled back and is simply retried.
    """
    replicator = Replicator(using=using, owner=f"sync-{os.getpid()}-{threading.get_ident()}")
    deadline = time.monotonic() + get_config()["LEASE_SECONDS"] + 5
    while True:
        try:
            n = replicator.drain()
            replicator.release()
            return n
        except (LeaseLost, OperationalError) as exc:
            if isinstance(exc, OperationalError) and "table is locked" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- background worker ---------------------------------------------------------------------------


class ReplicatorWorker:
    """Runs a replicator until stopped: the in-process thread and ``manage.py powersync_replicate``."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self.replicator = Replicator(using=using)
        self.stop_event = threading.Event()
        # Set by commits of this process (and by stop): wakes the LISTEN wait through its pipe.
        self.wake_event = notify.Waker()
        self.config = get_config()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake_event.set()

    def run(self) -> None:
        from .storage import drop_broken_connections

        notify.register_replicator_wakeup(self.wake_event)
        listener = _OutboxListener(self.using) if connections[self.using].vendor == "postgresql" else None
        holding = False
        last_renew = 0.0
        try:
            while not self.stop_event.is_set():
                try:
                    drop_broken_connections()
                    if not holding:
                        holding = self.replicator.try_acquire()
                        if not holding:
                            self.stop_event.wait(self.config["LEASE_SECONDS"] / 3)
                            continue
                        logger.info("powersync: replicator %s active", self.replicator.owner)
                    self.wake_event.clear()
                    n = self.replicator.run_batch()
                    last_renew = time.monotonic()
                    if self.replicator.more or n >= self.config["REPLICATION_BATCH_SIZE"]:
                        continue
                    if n == 0:
                        self._wait(listener, last_renew)
                except LeaseLost:
                    holding = False
                    logger.warning("powersync: replicator lease taken over by another process")
                except Exception:  # keep the worker alive; the batch was rolled back
                    logger.exception("powersync: replication batch failed; retrying")
                    connections[self.using].close()
                    self.stop_event.wait(1.0)
        finally:
            notify.unregister_replicator_wakeup(self.wake_event)
            if listener:
                listener.close()
            try:
                if holding:
                    self.replicator.release()
            except Exception:
                logger.debug("powersync: could not release the lease", exc_info=True)
            connections.close_all()

    def _wait(self, listener: _OutboxListener | None, last_renew: float) -> None:
        if listener is not None:
            # Entries of any process NOTIFY at commit, this process's commits set wake_event, a lost
            # connection returns at once: the timeout only paces the lease renewal (a third of its term).
            listener.wait(self.wake_event, self.config["LEASE_SECONDS"] / 3)
        else:
            timeout = min(self.config["LEASE_SECONDS"] / 3, 1.0)
            # SQLite: a cheap poll for entries written by other processes. The outbox is only queried when
            # the database changed since the last look (PRAGMA data_version: a few microseconds).
            deadline = time.monotonic() + timeout
            poll = self.config["POLL_INTERVAL"]
            seen: int | None = None
            while time.monotonic() < deadline and not self.wake_event.is_set():
                version = self._data_version()
                if version is None or version != seen:
                    if OutboxEntry.objects.using(self.using).exists():
                        return
                    seen = version
                self.wake_event.wait(poll)

    def _data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` of this thread's connection: it changes when another connection
        commits. None when it cannot be read (then the caller queries the outbox)."""
        connection = connections[self.using]
        if connection.vendor != "sqlite" or connection.in_atomic_block:
            return None
        try:
            connection.ensure_connection()
            return int(connection.connection.execute("PRAGMA data_version").fetchone()[0])
        except Exception:
            return None


class _OutboxListener:
    """PostgreSQL LISTEN on the outbox channel, on its own autocommit connection.

    A lost connection (server restart, ``pg_terminate_backend``) is reopened on the next wait; a wait that
    had to reconnect returns at once, since notifications sent meanwhile were lost.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self.conn: Any = None
        self._connect()

    def _connect(self) -> None:
        import psycopg

        params = connections[self.using].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        self.conn = psycopg.connect(**params, autocommit=True)
        self.conn.execute(f"LISTEN {OUTBOX_CHANNEL}")

    def wait(self, wake: threading.Event, timeout: float) -> str:
        """Wait for a notification; returns ``notified``, ``woken``, ``timeout`` or ``reconnected``."""
        import psycopg

        if self.conn is None:
            if self._try_connect():
                return "reconnected"
            wake.wait(timeout)  # the server is still unreachable: no busy loop
            return "timeout"
        try:
            return notify.wait_notified(self.conn, wake, timeout)
        except (psycopg.Error, OSError) as exc:
            logger.warning("powersync: outbox LISTEN connection lost (%s); reconnecting", exc)
            self.close()
            self.conn = None
            return "reconnected" if self._try_connect() else "timeout"

    def _try_connect(self) -> bool:
        import psycopg

        try:
            self._connect()
        except psycopg.Error as exc:
            logger.warning("powersync: cannot reopen the outbox LISTEN connection yet (%s)", exc)
            self.conn = None
            return False
        logger.info("powersync: outbox LISTEN connection reopened")
        return True

    def close(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:
            pass

_worker_lock = threading.Lock()
_worker: ReplicatorWorker | None = None


def start_in_process(using: str = "default") -> ReplicatorWorker | None:
    """Start the background replicator thread of this process once (if enabled in settings)."""
    global _worker
    if not get_config()["REPLICATOR_IN_PROCESS"]:
        return None
    with _worker_lock:
        if _worker is None:
            _worker = ReplicatorWorker(using=using)
            threading.Thread(target=_worker.run, name="powersync-replicator", daemon=True).start()
    return _worker


def stop_in_process() -> None:
    global _worker
    with _worker_lock:
        if _worker is not None:
            _worker.stop()
            _worker = None

