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
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db import connections, models, transaction

from . import checksums, metrics, notify
from .capture import OUTBOX_CHANNEL
from .conf import get_config
from .db import write_transaction
from .encoding import snapshot_to_python
from .models import (
    BucketOp,
    BucketState,
    Checkpoint,
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


class LeaseLost(Exception):
    """Another replicator holds the lease."""


def source_key(label: str, pk: str) -> str:
    return f"{label}:{pk}"


def decode_snapshot(model: type[models.Model], text: str) -> dict[str, Any]:
    raw = orjson.loads(text)
    return {f.attname: snapshot_to_python(f, raw.get(f.attname)) for f in model._meta.concrete_fields}


@dataclass
class _Batch:
    """Ops and state changes being assembled for one transaction."""

    next_op: int
    ops: list[BucketOp] = field(default_factory=list)
    deltas: dict[str, list[int]] = field(default_factory=dict)  # bucket -> [checksum, count, last_op]
    models: set[str] = field(default_factory=set)

    def add(self, bucket: str, op: str, table: str, object_id: str, data: str | None, checksum: int) -> None:
        op_id = self.next_op
        self.next_op += 1
        self.ops.append(BucketOp(op_id=op_id, bucket=bucket, op=op, object_type=table, object_id=object_id,
                                 data=data, checksum=checksum))
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
        """Take (or renew) the lease; False if another replicator holds it."""
        try:
            with write_transaction(self.using):
                state = self._state_for_update()
                self._hold_lease(state)
                state.save(using=self.using, update_fields=["lease_owner", "lease_expires"])
            return True
        except LeaseLost:
            return False

    def release(self) -> None:
        with write_transaction(self.using):
            ReplicationState.objects.using(self.using).filter(pk=1, lease_owner=self.owner).update(
                lease_owner="", lease_expires=0
            )

    # --- batches ---------------------------------------------------------------------------------

    def run_batch(self, limit: int | None = None) -> int:
        """Replicate up to ``limit`` outbox entries in one transaction; return how many were processed.

        Also rebuilds bucket storage first when the bucket definitions changed (or never were built).
        Raises :class:`LeaseLost` when another replicator holds the lease.
        """
        limit = limit or self.config["REPLICATION_BATCH_SIZE"]
        rules = get_rules()
        with write_transaction(self.using):
            state = self._state_for_update()
            self._hold_lease(state)
            if state.rules_hash != rules.hash:
                checkpoint = self._rebuild(state, rules)
                state.save(using=self.using)
                transaction.on_commit(lambda: notify.checkpoint_committed(checkpoint.id), using=self.using)
                return 0
            entries = list(OutboxEntry.objects.using(self.using).order_by("id")[:limit])
            if not entries:
                state.save(using=self.using, update_fields=["lease_owner", "lease_expires"])
                return 0
            checkpoint = self._replicate(state, rules, entries)
        notify.checkpoint_committed(checkpoint.id)
        return len(entries)

    def _replicate(self, state: ReplicationState, rules: Rules, entries: list[OutboxEntry]) -> Checkpoint:
        db = self.using
        batch = _Batch(next_op=state.last_op_id + 1)
        sources = {source_key(e.model, e.object_pk) for e in entries if e.op != OutboxEntry.MARKER}
        memberships: dict[str, list[list[str]]] = {
            rb.source: orjson.loads(rb.buckets) for rb in _in_chunks(RowBuckets.objects.using(db), "source", sources)
        }
        markers: dict[str, int] = {}
        model_cache: dict[str, type[models.Model] | None] = {}
        for entry in entries:
            if entry.op == OutboxEntry.MARKER:
                markers[entry.object_pk] = max(markers.get(entry.object_pk, 0), int(entry.snapshot or 0))
                continue
            model = model_cache.get(entry.model) or _model_for(entry.model, rules)
            model_cache[entry.model] = model
            # Rows read by parameter querysets: which open streams re-evaluate their bucket set.
            batch.models.update(rules.change_keys(entry.model, entry.snapshot))
            if model is None:
                continue  # not synced (only read by parameter querysets, or no longer tracked)
            key = source_key(entry.model, entry.object_pk)
            row = decode_snapshot(model, entry.snapshot) if entry.op == OutboxEntry.SAVE and entry.snapshot else None
            new = rules.row_buckets(entry.model, row, state.rules_version)
            memberships[key] = batch.apply_row(memberships.get(key, []), new)
        self._write_ops(batch)
        transaction.on_commit(lambda: metrics.replicated(len(entries), len(batch.ops)), using=db)
        self._write_memberships({k: memberships[k] for k in sources if k in memberships})
        self._apply_markers(markers)
        OutboxEntry.objects.using(db).filter(id__in=[e.id for e in entries]).delete()
        state.last_op_id = batch.next_op - 1
        state.outbox_position = max(state.outbox_position, entries[-1].id)
        state.save(using=db)
        return self._checkpoint(state, batch.deltas.keys(), rules.bounded_keys(batch.models), markers.keys())

    def _write_ops(self, batch: _Batch) -> None:
        db = self.using
        if not batch.ops:
            return
        BucketOp.objects.using(db).bulk_create(batch.ops, batch_size=500)
        existing = {s.bucket: s for s in _in_chunks(BucketState.objects.using(db), "bucket", batch.deltas)}
        states = []
        for bucket, (checksum, count, last_op) in batch.deltas.items():
            s = existing.get(bucket) or BucketState(bucket=bucket)
            s.checksum = (s.checksum + checksum) & checksums.MASK
            s.count += count
            s.stored_ops += count
            s.ops_since_compaction += count
            s.last_op_id = last_op
            states.append(s)
        BucketState.objects.using(db).bulk_create(
            states, update_conflicts=True, unique_fields=["bucket"],
            update_fields=["checksum", "count", "stored_ops", "ops_since_compaction", "last_op_id"], batch_size=500,
        )

    def _write_memberships(self, memberships: dict[str, list[list[str]]]) -> None:
        db = self.using
        gone = [k for k, v in memberships.items() if not v]
        present = [RowBuckets(source=k, buckets=orjson.dumps(v).decode()) for k, v in memberships.items() if v]
        for start in range(0, len(gone), 500):
            RowBuckets.objects.using(db).filter(source__in=gone[start:start + 500]).delete()
        if present:
            RowBuckets.objects.using(db).bulk_create(present, update_conflicts=True, unique_fields=["source"],
                                                     update_fields=["buckets"], batch_size=500)

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

    def _rebuild(self, state: ReplicationState, rules: Rules) -> Checkpoint:
        """Build bucket storage from the data querysets under a new definitions version."""
        db = self.using
        started = time.monotonic()
        version = state.rules_version + 1
        # Entries visible now are older than the rows read below, so the build includes their effect:
        # they are consumed by it (markers still advance their write checkpoints).
        consumed = list(OutboxEntry.objects.using(db).values_list("id", "op", "object_pk", "snapshot"))
        markers: dict[str, int] = {}
        for _, op, key, counter in consumed:
            if op == OutboxEntry.MARKER:
                markers[key] = max(markers.get(key, 0), int(counter or 0))
        BucketOp.objects.using(db).all().delete()
        BucketState.objects.using(db).all().delete()
        RowBuckets.objects.using(db).all().delete()
        batch = _Batch(next_op=state.last_op_id + 1)
        rows = 0
        for model in rules.models:
            label = model._meta.label_lower
            attnames = [f.attname for f in model._meta.concrete_fields]
            memberships: dict[str, list[list[str]]] = {}
            for row in model._base_manager.using(db).values(*attnames).iterator(chunk_size=2000):
                pk = row[model._meta.pk.attname]
                new = rules.row_buckets(label, row, version)
                if new:
                    memberships[source_key(label, str(pk))] = batch.apply_row([], new)
                rows += 1
                if len(batch.ops) >= 5000:
                    self._flush_rebuild(batch, memberships)
                    memberships = {}
            self._flush_rebuild(batch, memberships)
        ids = [row[0] for row in consumed]
        for start in range(0, len(ids), 500):
            OutboxEntry.objects.using(db).filter(id__in=ids[start:start + 500]).delete()
        self._apply_markers(markers)
        if ids:
            state.outbox_position = max(state.outbox_position, max(ids))
        state.last_op_id = batch.next_op - 1
        state.rules_version = version
        state.rules_hash = rules.hash
        # Streams see the version change in this checkpoint and reconnect.
        checkpoint = self._checkpoint(state, [], [m._meta.label_lower for m in rules.models] + sorted(rules.parameter_models),
                                      markers, any_bucket=True)
        logger.info("powersync: built bucket storage version %s from %s rows in %.1f s", version, rows,
                    time.monotonic() - started)
        return checkpoint

    def _flush_rebuild(self, batch: _Batch, memberships: dict[str, list[list[str]]]) -> None:
        self._write_ops(batch)
        batch.ops = []
        batch.deltas = {}
        if memberships:
            RowBuckets.objects.using(self.using).bulk_create(
                [RowBuckets(source=k, buckets=orjson.dumps(v).decode()) for k, v in memberships.items()],
                batch_size=500,
            )

    def request_rebuild(self) -> None:
        """Force a rebuild on the next batch (``manage.py powersync_resync``)."""
        with write_transaction(self.using):
            state = self._state_for_update()
            self._hold_lease(state)
            state.rules_hash = ""
            state.save(using=self.using)

    def drain(self, max_batches: int | None = None) -> int:
        """Run batches until the outbox is empty; return the number of entries processed."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            state_hash = ReplicationState.objects.using(self.using).filter(pk=1).values_list("rules_hash", flat=True).first()
            n = self.run_batch()
            batches += 1
            total += n
            if n == 0 and state_hash == get_rules().hash:
                break
        return total


def _model_for(label: str, rules: Rules) -> type[models.Model] | None:
    queries = rules.by_model.get(label)
    return queries[0].model if queries else None


def _in_chunks(qs: Any, fieldname: str, values: Any, size: int = 500) -> Iterator[Any]:
    values = list(values)
    for start in range(0, len(values), size):
        yield from qs.filter(**{f"{fieldname}__in": values[start:start + size]})


def replicate_now(using: str = "default") -> int:
    """Replicate everything pending in this thread (tests, commands). Waits for a held lease to expire."""
    replicator = Replicator(using=using, owner=f"sync-{os.getpid()}-{threading.get_ident()}")
    deadline = time.monotonic() + get_config()["LEASE_SECONDS"] + 5
    while True:
        try:
            n = replicator.drain()
            replicator.release()
            return n
        except LeaseLost:
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
        self.wake_event = threading.Event()
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
                    if n >= self.config["REPLICATION_BATCH_SIZE"]:
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
        timeout = min(self.config["LEASE_SECONDS"] / 3, 1.0)
        if listener is not None:
            listener.wait(self.wake_event, timeout)
        else:
            # SQLite: a cheap poll for entries written by other processes.
            deadline = time.monotonic() + timeout
            poll = self.config["POLL_INTERVAL"]
            while time.monotonic() < deadline and not self.wake_event.is_set():
                if OutboxEntry.objects.using(self.using).exists():
                    return
                self.wake_event.wait(poll)


class _OutboxListener:
    """PostgreSQL LISTEN on the outbox channel, on its own autocommit connection."""

    def __init__(self, using: str) -> None:
        import psycopg

        params = connections[using].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        self.conn = psycopg.connect(**params, autocommit=True)
        self.conn.execute(f"LISTEN {OUTBOX_CHANNEL}")

    def wait(self, wake: threading.Event, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not wake.is_set():
            for _ in self.conn.notifies(timeout=0.05, stop_after=1):
                return

    def close(self) -> None:
        try:
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

