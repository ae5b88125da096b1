"""Read side of bucket storage for sync streams, run on a small pool of database threads.

Each thread keeps its own Django connection. Reads are plain SQL on indexed columns: the current checkpoint
with the checksums of a set of buckets, and a bucket's ops after a position, in pages.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from django.db import connections, transaction

from . import checksums
from .conf import get_config
from .models import BucketOp, BucketState, Checkpoint, OutboxEntry, ReplicationState, WriteCheckpoint

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=get_config()["READ_THREADS"], thread_name_prefix="powersync-db")
        return _executor


def _close_connections(barrier: threading.Barrier) -> None:
    connections.close_all()
    try:
        barrier.wait(timeout=1.0)  # hold this thread so each thread runs one of these jobs
    except threading.BrokenBarrierError:
        pass


def shutdown() -> None:
    """Close the database connections of the storage threads and stop them (tests, shutdown hooks)."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is not None:
        workers = executor._max_workers
        barrier = threading.Barrier(workers)
        for _ in range(workers):
            executor.submit(_close_connections, barrier)
        executor.shutdown(wait=True)


def drop_broken_connections() -> None:
    """Close this thread's connections that saw an error and are no longer usable.

    Long-lived threads (storage readers, the replicator) keep their connection: CONN_MAX_AGE is for
    request/response cycles and would make them reconnect for every page.
    """
    for conn in connections.all(initialized_only=True):
        if conn.errors_occurred:
            if conn.connection is not None and not conn.is_usable():
                conn.close()
            conn.errors_occurred = False


def _call(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    drop_broken_connections()
    return fn(*args, **kwargs)


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking database function on the storage threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_get_executor(), functools.partial(_call, fn, args, kwargs))


def _table(model: Any) -> str:
    return model._meta.db_table


# --- checkpoints -----------------------------------------------------------------------------------


def latest_checkpoint_id(using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT MAX(id) FROM {_table(Checkpoint)}")
        row = cursor.fetchone()
    return int(row[0] or 0)


def checkpoints_after(after_id: int, using: str = "default") -> list[tuple]:
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT id, last_op_id, changed_buckets, changed_models, write_checkpoints FROM {_table(Checkpoint)} "
            "WHERE id > %s ORDER BY id",
            [after_id],
        )
        return cursor.fetchall()


@dataclass(frozen=True)
class BucketChecksum:
    checksum: int  # unsigned
    count: int
    last_op_id: int
    compacted_to: int


@dataclass(frozen=True)
class CheckpointState:
    last_op_id: int
    rules_version: int
    buckets: dict[str, BucketChecksum]


def read_checkpoint(buckets: list[str], using: str = "default") -> CheckpointState:
    """The current checkpoint and, for each bucket that has ops, its checksum and count at that checkpoint.

    Bucket totals are read after the checkpoint; a bucket updated by a batch committed in between has ops
    beyond the checkpoint, which are subtracted, so the values are exactly those of the checkpoint.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT last_op_id, rules_version FROM {_table(ReplicationState)} WHERE id = 1")
        row = cursor.fetchone()
        last_op_id, version = (int(row[0]), int(row[1])) if row else (0, 0)
        out: dict[str, BucketChecksum] = {}
        table = _table(BucketState)
        for start in range(0, len(buckets), 500):
            chunk = buckets[start:start + 500]
            marks = ",".join(["%s"] * len(chunk))
            cursor.execute(
                f"SELECT bucket, checksum, count, last_op_id, compacted_to FROM {table} WHERE bucket IN ({marks})", chunk
            )
            for bucket, checksum, count, bucket_last, compacted_to in cursor.fetchall():
                if bucket_last > last_op_id:
                    cursor.execute(
                        f"SELECT COALESCE(SUM(checksum), 0), COUNT(*), COALESCE(MAX(op_id), 0) FROM {_table(BucketOp)} "
                        "WHERE bucket = %s AND op_id > %s",
                        [bucket, last_op_id],
                    )
                    extra_sum, extra_count, _ = cursor.fetchone()
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
    return CheckpointState(last_op_id, version, out)


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
    with transaction.atomic(using=using):
        wc, _ = WriteCheckpoint.objects.using(using).select_for_update().get_or_create(
            key=key, defaults={"user_id": user_id, "client_id": client_id or ""}
        )
        wc.issued += 1
        wc.save(using=using, update_fields=["issued", "updated_at"])
        write_entries([OutboxEntry(model="", object_pk=key, op=OutboxEntry.MARKER, snapshot=str(wc.issued))], using)
    return wc.issued
