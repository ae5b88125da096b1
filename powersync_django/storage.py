"""Read side of bucket storage for sync streams, run on a small pool of database threads (executors.py).

Each thread keeps its own Django connection. Reads are plain SQL on indexed columns: a checkpoint with the
checksums of a set of buckets and the write checkpoint of a client, all from one snapshot (``read_snapshot``),
and a bucket's ops after a position, in pages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from django.db import connections, transaction

from . import checksums, executors
from .db import write_transaction
from .models import BucketOp, BucketState, Checkpoint, OutboxEntry, ReplicationState, WriteCheckpoint

T = TypeVar("T")

# The thread pools live in executors.py; these names are kept for callers.
drop_broken_connections = executors.drop_broken_connections
shutdown = executors.shutdown


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking database read on the read threads (never queued behind writes)."""
    return await executors.reads.run(fn, *args, **kwargs)


async def run_write(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a write transaction on the write threads; raises ``executors.Overloaded`` when they are saturated."""
    return await executors.writes.run(fn, *args, admit=True, **kwargs)


def _table(model: Any) -> str:
    return model._meta.db_table


# --- checkpoints -----------------------------------------------------------------------------------


def latest_checkpoint_id(using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT MAX(id) FROM {_table(Checkpoint)}")
        row = cursor.fetchone()
    return int(row[0] or 0)


def checkpoints_from(first_id: int, using: str = "default") -> list[tuple]:
    """Checkpoint rows with ``id >= first_id``, ascending (the hub checks that ``first_id`` still exists)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT id, last_op_id, changed_buckets, changed_models, write_checkpoints FROM {_table(Checkpoint)} "
            "WHERE id >= %s ORDER BY id",
            [first_id],
        )
        return cursor.fetchall()


@contextmanager
def read_snapshot(using: str = "default") -> Iterator[Any]:
    """A cursor whose reads all see one snapshot of the database.

    PostgreSQL: a REPEATABLE READ, READ ONLY transaction. SQLite: a DEFERRED transaction begun by hand (Django's
    ``atomic()`` would begin it with the configured ``transaction_mode``, e.g. IMMEDIATE, which takes the write
    lock); in WAL mode its snapshot is fixed by its first read. Inside a caller's transaction, that one is used.
    """
    conn = connections[using]
    if conn.in_atomic_block:
        with conn.cursor() as cursor:
            yield cursor
        return
    if conn.vendor == "sqlite":
        with conn.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
            try:
                yield cursor
            except BaseException:
                if conn.connection is not None and conn.connection.in_transaction:
                    conn.connection.rollback()
                raise
            cursor.execute("COMMIT")
        return
    with transaction.atomic(using=using), conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield cursor


@dataclass(frozen=True)
class BucketChecksum:
    checksum: int  # unsigned
    count: int
    last_op_id: int
    compacted_to: int


@dataclass(frozen=True)
class CheckpointState:
    """A checkpoint as read in one snapshot.

    ``write_checkpoint``: the replicated write checkpoint of the requested key at this checkpoint; None when not
    requested or not known at it (the key advanced in a later checkpoint: report it with that one).
    ``compacted_to``: the newest compaction checkpoint of any requested bucket (protocol.md §10.5).
    """

    last_op_id: int
    rules_version: int
    buckets: dict[str, BucketChecksum]
    checkpoint_id: int = 0
    write_checkpoint: int | None = None
    compacted_to: int = 0


def read_checkpoint(buckets: list[str], using: str = "default", *, at: int | None = None,
                    wc_key: str | None = None) -> CheckpointState:
    """A checkpoint and, for each bucket that has ops at it, its checksum and count, from one snapshot.

    ``at``: the checkpoint id to read (default: the newest). Bucket totals are current; a bucket updated by a
    later batch has ops beyond that checkpoint, which are subtracted, so the values are exactly those of the
    checkpoint (unless the bucket was compacted past it: see ``compacted_to``). When ``at`` no longer exists
    (pruned), the newest checkpoint is read: ``checkpoint_id`` says which one was.
    ``wc_key``: also read that key's replicated write checkpoint, as of the checkpoint.
    """
    with read_snapshot(using) as cursor:
        version, newest_id, checkpoint_id, last_op_id = _checkpoint_at(cursor, at)
        out, compacted_to = _bucket_checksums(cursor, buckets, last_op_id)
        write_checkpoint = None
        if wc_key is not None:
            cursor.execute(f"SELECT replicated FROM {_table(WriteCheckpoint)} WHERE key = %s", [wc_key])
            found = cursor.fetchone()
            write_checkpoint = int(found[0]) if found else 0
            if checkpoint_id < newest_id and _key_advanced_after(cursor, wc_key, checkpoint_id):
                write_checkpoint = None
    return CheckpointState(last_op_id, version, out, checkpoint_id, write_checkpoint, compacted_to)


def _checkpoint_at(cursor: Any, at: int | None) -> tuple[int, int, int, int]:
    """(rules version, newest checkpoint id, id of the checkpoint read, its last op id): checkpoint ``at``, or
    the newest one when ``at`` is None or no longer exists."""
    cursor.execute(
        f"SELECT last_op_id, rules_version, (SELECT MAX(id) FROM {_table(Checkpoint)}) "
        f"FROM {_table(ReplicationState)} WHERE id = 1"
    )
    row = cursor.fetchone()
    newest_op, version, newest_id = (int(row[0]), int(row[1]), int(row[2] or 0)) if row else (0, 0, 0)
    checkpoint_id, last_op_id = newest_id, newest_op
    if at is not None and at < newest_id:
        cursor.execute(f"SELECT last_op_id FROM {_table(Checkpoint)} WHERE id = %s", [at])
        found = cursor.fetchone()
        if found is not None:
            checkpoint_id, last_op_id = at, int(found[0])
    return version, newest_id, checkpoint_id, last_op_id


def _bucket_checksums(cursor: Any, buckets: list[str], last_op_id: int,
                      per_bucket: dict[str, int] | None = None) -> tuple[dict[str, BucketChecksum], int]:
    """Checksums of ``buckets`` at ``last_op_id`` and their newest ``compacted_to`` (each bucket's into
    ``per_bucket`` if given)."""
    out: dict[str, BucketChecksum] = {}
    compacted = 0
    table = _table(BucketState)
    for start in range(0, len(buckets), 500):
        chunk = buckets[start:start + 500]
        marks = ",".join(["%s"] * len(chunk))
        cursor.execute(
            f"SELECT bucket, checksum, count, last_op_id, compacted_to FROM {table} WHERE bucket IN ({marks})", chunk
        )
        for bucket, checksum, count, bucket_last, compacted_to in cursor.fetchall():
            compacted = max(compacted, int(compacted_to))
            if per_bucket is not None:
                per_bucket[bucket] = int(compacted_to)
            if bucket_last > last_op_id:
                cursor.execute(
                    f"SELECT COALESCE(SUM(checksum), 0), COUNT(*) FROM {_table(BucketOp)} "
                    "WHERE bucket = %s AND op_id > %s",
                    [bucket, last_op_id],
                )
                extra_sum, extra_count = cursor.fetchone()
                checksum = (checksum - int(extra_sum)) & checksums.MASK
                count -= extra_count
                cursor.execute(
                    f"SELECT COALESCE(MAX(op_id), 0) FROM {_table(BucketOp)} WHERE bucket = %s AND op_id <= %s",
                    [bucket, last_op_id],
                )
                bucket_last = int(cursor.fetchone()[0])
                if count <= 0:
                    continue
            out[bucket] = BucketChecksum(int(checksum), int(count), int(bucket_last), int(compacted_to))
    return out, compacted


def _key_advanced_after(cursor: Any, key: str, checkpoint_id: int) -> bool:
    """Whether a checkpoint after ``checkpoint_id`` advanced write checkpoint ``key``."""
    cursor.execute(
        f"SELECT write_checkpoints FROM {_table(Checkpoint)} WHERE id > %s AND write_checkpoints <> '[]'",
        [checkpoint_id],
    )
    return any(key in orjson.loads(text) for (text,) in cursor.fetchall())


@dataclass(frozen=True)
class SharedRead:
    """What changed between two checkpoints for a set of buckets, read once for all streams (fanout.py).

    ``state``: checkpoint ``target`` as :func:`read_checkpoint` reads it for all the buckets (``compacted_to``
    over all of them; each bucket's in ``compacted``). ``prev_last``: each bucket's last op id at checkpoint
    ``base``; ``ops``: its ops after that checkpoint's last op id up to ``target``'s, ascending (a bucket is
    missing when its ops were not kept: too many, or ``base`` was pruned). ``write_checkpoints``: the
    requested keys' write checkpoints as :func:`read_checkpoint` reads one. All from one snapshot.
    """

    state: CheckpointState
    compacted: dict[str, int]
    prev_last: dict[str, int]
    ops: dict[str, list[tuple]]
    write_checkpoints: dict[str, int | None]


def read_shared(buckets: list[str], base: int, target: int, wc_keys: list[str], max_ops: int,
                using: str = "default") -> SharedRead | None:
    """The changes of ``buckets`` from checkpoint ``base`` to ``target``; None if ``target`` was pruned."""
    with read_snapshot(using) as cursor:
        version, newest_id, checkpoint_id, last_op_id = _checkpoint_at(cursor, target)
        if checkpoint_id != target:
            return None
        base_op: int | None = 0
        if base:
            cursor.execute(f"SELECT last_op_id FROM {_table(Checkpoint)} WHERE id = %s", [base])
            found = cursor.fetchone()
            base_op = int(found[0]) if found is not None else None
        compacted: dict[str, int] = {}
        out, compacted_to = _bucket_checksums(cursor, buckets, last_op_id, compacted)
        prev_last: dict[str, int] = {}
        ops: dict[str, list[tuple]] = {}
        if base_op is not None:
            with_ops = sorted(b for b, cs in out.items() if cs.last_op_id > base_op)
            prev_last = _last_ops_at(cursor, with_ops, base_op)
            ops = _ops_between(cursor, with_ops, base_op, last_op_id, max_ops)
        write_checkpoints: dict[str, int | None] = {}
        if wc_keys:
            advanced: set[str] = set()
            if checkpoint_id < newest_id:
                cursor.execute(
                    f"SELECT write_checkpoints FROM {_table(Checkpoint)} WHERE id > %s AND write_checkpoints <> '[]'",
                    [checkpoint_id],
                )
                for (text,) in cursor.fetchall():
                    advanced.update(orjson.loads(text))
            found_wc: dict[str, int] = {}
            for start in range(0, len(wc_keys), 500):
                chunk = wc_keys[start:start + 500]
                marks = ",".join(["%s"] * len(chunk))
                cursor.execute(f"SELECT key, replicated FROM {_table(WriteCheckpoint)} WHERE key IN ({marks})", chunk)
                found_wc.update((k, int(v)) for k, v in cursor.fetchall())
            for key in wc_keys:
                write_checkpoints[key] = None if key in advanced else found_wc.get(key, 0)
    state = CheckpointState(last_op_id, version, out, checkpoint_id, None, compacted_to)
    return SharedRead(state, compacted, prev_last, ops, write_checkpoints)


def _last_ops_at(cursor: Any, buckets: list[str], last_op_id: int) -> dict[str, int]:
    """Each bucket's last op id at or below ``last_op_id`` (0 if none), one index probe each."""
    out: dict[str, int] = {}
    ops, states = _table(BucketOp), _table(BucketState)
    for start in range(0, len(buckets), 500):
        chunk = buckets[start:start + 500]
        marks = ",".join(["%s"] * len(chunk))
        cursor.execute(
            f"SELECT s.bucket, (SELECT MAX(o.op_id) FROM {ops} o WHERE o.bucket = s.bucket AND o.op_id <= %s) "
            f"FROM {states} s WHERE s.bucket IN ({marks})",
            [last_op_id, *chunk],
        )
        out.update((b, int(m or 0)) for b, m in cursor.fetchall())
    return out


def _ops_between(cursor: Any, buckets: list[str], after: int, upto: int, max_ops: int) -> dict[str, list[tuple]]:
    """Ops of ``buckets`` with ``after < op_id <= upto`` by bucket, at most ``max_ops`` in all: a bucket whose
    ops do not all fit is left out, with every bucket after it."""
    out: dict[str, list[tuple]] = {}
    budget = max_ops
    for start in range(0, len(buckets), 500):
        chunk = buckets[start:start + 500]
        marks = ",".join(["%s"] * len(chunk))
        cursor.execute(
            f"SELECT bucket, op_id, op, object_type, object_id, data, checksum FROM {_table(BucketOp)} "
            f"WHERE bucket IN ({marks}) AND op_id > %s AND op_id <= %s ORDER BY bucket, op_id LIMIT %s",
            [*chunk, after, upto, budget + 1],
        )
        rows = cursor.fetchall()
        full = len(rows) > budget
        for row in rows:
            out.setdefault(row[0], []).append(row[1:])
        if full:
            out.pop(rows[-1][0], None)
            return out
        budget -= len(rows)
    return out


def max_compacted_to(buckets: list[str], using: str = "default") -> int:
    """The newest checkpoint any of these buckets was compacted against (0 if never)."""
    best = 0
    with connections[using].cursor() as cursor:
        for start in range(0, len(buckets), 500):
            chunk = buckets[start:start + 500]
            marks = ",".join(["%s"] * len(chunk))
            cursor.execute(f"SELECT MAX(compacted_to) FROM {_table(BucketState)} WHERE bucket IN ({marks})", chunk)
            best = max(best, int(cursor.fetchone()[0] or 0))
    return best


def read_ops(bucket: str, after: int, upto: int, limit: int, using: str = "default") -> list[tuple]:
    """Ops of a bucket with ``after < op_id <= upto``, ascending, at most ``limit``.

    Rows: (op_id, op, object_type, object_id, data, checksum).
    """
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT op_id, op, object_type, object_id, data, checksum FROM {_table(BucketOp)} "
            "WHERE bucket = %s AND op_id > %s AND op_id <= %s ORDER BY op_id LIMIT %s",
            [bucket, after, upto, limit],
        )
        return cursor.fetchall()


# --- write checkpoints -----------------------------------------------------------------------------


# Longest key stored (``OutboxEntry.object_pk`` holds it in write checkpoint markers).
MAX_WRITE_CHECKPOINT_KEY = 255


def write_checkpoint_key(user_id: str, client_id: str | None) -> str:
    """The one key of a user's client: the JSON array ``["user","client"]`` (``["user",null]`` without a client).

    Unambiguous whatever the ids contain (``alice`` + ``phone`` is not user ``alice/phone``); keys longer than
    255 characters become ``sha256:<hex>`` of that array.
    """
    key = orjson.dumps([user_id, client_id or None]).decode()
    if len(key) > MAX_WRITE_CHECKPOINT_KEY:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def replicated_write_checkpoint(key: str, using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT replicated FROM {_table(WriteCheckpoint)} WHERE key = %s", [key])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def create_write_checkpoint(user_id: str, client_id: str | None, using: str = "default") -> int:
    """Issue the next write checkpoint of ``user/client``: reportable once replication passes this moment.

    A marker entry goes into the outbox in the same transaction; every change committed before this call
    comes before it, so the checkpoint that processes the marker contains them all.
    """
    from .capture import write_entries

    key = write_checkpoint_key(user_id, client_id)
    with write_transaction(using):
        wc, _ = WriteCheckpoint.objects.using(using).select_for_update().get_or_create(
            key=key, defaults={"user_id": user_id, "client_id": client_id or ""}
        )
        wc.issued += 1
        wc.save(using=using, update_fields=["issued", "updated_at"])
        write_entries([OutboxEntry(model="", object_pk=key, op=OutboxEntry.MARKER, snapshot=str(wc.issued))], using)
    return wc.issued


def request_checkpoint(user_id: str, client_id: str | None, request_id: int, using: str = "default") -> int:
    """Record checkpoint request ``request_id`` of ``user/client`` (``/sync/checkpoint-request``); return the
    stored value, ``max(stored, request_id)``.

    Requests share the counter of :func:`create_write_checkpoint` (one key, one ``write_checkpoint`` value on
    the stream), as in the reference service: the client seeds its request counter from the answer, so a
    client switching from write checkpoints to requests continues above the values it already saw. A new
    (greater) id is stored with an outbox marker, exactly like a write checkpoint: it is reported once the
    checkpoint contains every change committed before this call. A stale or repeated id changes nothing and
    writes no marker (the stored value's own marker is already queued or replicated).
    """
    from .capture import write_entries

    key = write_checkpoint_key(user_id, client_id)
    with write_transaction(using):
        wc, _ = WriteCheckpoint.objects.using(using).select_for_update().get_or_create(
            key=key, defaults={"user_id": user_id, "client_id": client_id or ""}
        )
        if request_id <= wc.issued:
            return wc.issued
        wc.issued = request_id
        wc.save(using=using, update_fields=["issued", "updated_at"])
        write_entries([OutboxEntry(model="", object_pk=key, op=OutboxEntry.MARKER, snapshot=str(request_id))], using)
    return request_id
