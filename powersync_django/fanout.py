"""One read per change, shared by every sync stream of the process (the checkpoint hub's read cache).

When a checkpoint arrives, every stream wakes with the changes since its cursor. Streams at the same cursor
see the same changes; the first of them to ask starts :func:`storage.read_shared` for the changed buckets that
any stream of the process holds (and the write checkpoints any of them waits for), and every stream at that
cursor awaits that one read: bucket checksums as of the new checkpoint and the ops since the cursor's
checkpoint, from one snapshot. A stream then takes its own buckets' values (``state_for``) and pages of ops
(``page``) from it: the same values and pages its own reads would give. Whatever the read does not cover (a
bucket gained by re-evaluation, a position behind the cursor's checkpoint, a bucket with too many ops) the
stream reads itself, as before (sync.py).

Memory is bounded: a read is dropped when no stream is left at its cursor, after ``ENTRY_SECONDS``, and the
oldest are dropped beyond ``MAX_ENTRIES``; each keeps at most ``SHARED_READ_MAX_OPS`` ops.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import storage
from .conf import get_config
from .notify import Changes

logger = logging.getLogger(__name__)

ENTRY_SECONDS = 10.0
MAX_ENTRIES = 32
# Line sequences kept per shared read for other streams to replay (sync.SyncSession._replay): at most this
# many, holding at most BATCH_OPS_FACTOR * SHARED_READ_MAX_OPS ops in all (their lines and encodings).
MAX_BATCHES = 1000
BATCH_OPS_FACTOR = 2


@dataclass(frozen=True)
class Batch:
    """The lines one stream sent for a shared read, for the streams with the same key: the lines (shared,
    read-only), per changed bucket held (bucket, checksum/count sent, position) after them, the checkpoint of
    the diff line (None: no lines) and the ops sent for it."""

    lines: list[dict[str, Any]]
    effects: tuple[tuple[str, tuple[int, int] | None, int | None], ...]
    checkpoint_id: int | None
    ops_sent: int


class Shared:
    """One shared read, as the streams use it."""

    def __init__(self, read: storage.SharedRead, requested: Iterable[str]) -> None:
        self.read = read
        self.requested = frozenset(requested)
        self._op_ids = {b: [r[0] for r in rows] for b, rows in read.ops.items()}
        self._rendered: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
        self.batches: dict[tuple, Batch] = {}  # sync.SyncSession._replay's key -> lines
        self.batch_ops = 0  # ops in them

    def keep(self, key: tuple, batch: Batch) -> None:
        """Keep ``batch`` for the streams with ``key``, unless that would exceed the bounds."""
        limit = BATCH_OPS_FACTOR * get_config()["SHARED_READ_MAX_OPS"]
        if len(self.batches) < MAX_BATCHES and self.batch_ops + batch.ops_sent <= limit:
            self.batches[key] = batch
            self.batch_ops += batch.ops_sent

    def state_for(self, buckets: list[str], wc_key: str | None) -> storage.CheckpointState | None:
        """The checkpoint as ``storage.read_checkpoint(buckets, at=target, wc_key=wc_key)`` reads it, or None
        if this read does not cover all of ``buckets`` (or the key)."""
        if not self.requested.issuperset(buckets):
            return None
        wc = None
        if wc_key is not None:
            if wc_key not in self.read.write_checkpoints:
                return None
            wc = self.read.write_checkpoints[wc_key]
        full = self.read.state
        compacted = self.read.compacted
        return storage.CheckpointState(
            full.last_op_id, full.rules_version, {b: full.buckets[b] for b in buckets if b in full.buckets},
            full.checkpoint_id, wc, max((compacted.get(b, 0) for b in buckets), default=0),
        )

    def page(self, bucket: str, after: int, limit: int) -> list[tuple] | None:
        """``storage.read_ops(bucket, after, target's last op id, limit)`` from this read, or None if it does
        not hold every op of the bucket after ``after``."""
        ids = self._op_ids.get(bucket)
        if ids is None or after < self.read.prev_last.get(bucket, 0):
            return None
        start = bisect.bisect_right(ids, after)
        return self.read.ops[bucket][start:start + limit]

    def render(self, bucket: str, after: int, rows: list[tuple], entry: Callable[[tuple], dict]) -> list[dict]:
        """The op entries of a data line, built once for all streams that send this page (read-only)."""
        key = (bucket, after, len(rows))
        out = self._rendered.get(key)
        if out is None:
            out = self._rendered[key] = [entry(r) for r in rows]
        return out


class _Entry:
    """A shared read under way or done, and the streams waiting for it.

    Each waiting stream awaits a future of its own, resolved when the read is done: a stream that closes while
    waiting cancels only that (never the read the others wait for), at the cost of one future per stream
    (``asyncio.shield`` would cost a future, two closures and callbacks)."""

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.created = time.monotonic()
        self.waiters: list[asyncio.Future] = []
        task.add_done_callback(self._done)

    def _done(self, _task: asyncio.Task) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def result(self) -> Shared | None:
        if not self.task.done():
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter
        return self.task.result()


class Fanout:
    """Shared reads of one checkpoint hub, and what its streams hold."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self.holders: Counter[str] = Counter()  # bucket -> streams holding it
        self.keys: Counter[str] = Counter()  # write checkpoint key -> streams
        self.at_cursor: Counter[int] = Counter()  # checkpoint id -> streams whose cursor it is
        self.entries: dict[tuple[int, int], _Entry] = {}
        self.reads = 0  # shared reads started (tests, benchmarks)
        self.replayed = 0  # line sequences a stream took from another's (sync.SyncSession._replay)

    # --- streams --------------------------------------------------------------------------------

    def join(self, buckets: Iterable[str], wc_key: str, cursor: int) -> None:
        self.holders.update(buckets)
        self.keys[wc_key] += 1
        self.at_cursor[cursor] += 1

    def leave(self, buckets: Iterable[str], wc_key: str, cursor: int) -> None:
        _drop(self.holders, buckets)
        _drop(self.keys, [wc_key])
        self.move(cursor, None)

    def hold(self, old: Iterable[str], new: Iterable[str]) -> None:
        """A stream's bucket set changed."""
        self.holders.update(new)
        _drop(self.holders, old)

    def move(self, old: int, new: int | None) -> None:
        """A stream's cursor moved from ``old`` (to ``new``; None: it closed)."""
        if new is not None:
            self.at_cursor[new] += 1
        self.at_cursor[old] -= 1
        if self.at_cursor[old] <= 0:
            del self.at_cursor[old]
            for key in [k for k in self.entries if k[0] == old]:
                del self.entries[key]

    # --- reads ----------------------------------------------------------------------------------

    async def read(self, base: int, changes: Changes) -> Shared | None:
        """The shared read of ``changes`` (everything after checkpoint ``base``); None when there is none
        (any bucket may have changed, the checkpoint was pruned, the read failed)."""
        if changes.buckets is None or "*" in changes.write_checkpoints:
            return None
        key = (base, changes.last_id)
        entry = self.entries.get(key)
        if entry is None:
            self._evict()
            buckets = sorted(b for b in changes.buckets if self.holders.get(b, 0) > 0)
            wc_keys = sorted(k for k in changes.write_checkpoints if self.keys.get(k, 0) > 0)
            entry = self.entries[key] = _Entry(asyncio.create_task(self._read(base, changes.last_id, buckets,
                                                                                wc_keys)))
        return await entry.result()

    async def _read(self, base: int, target: int, buckets: list[str], wc_keys: list[str]) -> Shared | None:
        self.reads += 1
        try:
            read = await storage.run(storage.read_shared, buckets, base, target, wc_keys,
                                     get_config()["SHARED_READ_MAX_OPS"], self.using)
        except Exception:
            logger.exception("powersync: a shared checkpoint read failed; streams read their own")
            return None
        return None if read is None else Shared(read, buckets)

    def _evict(self) -> None:
        now = time.monotonic()
        for key, entry in list(self.entries.items()):
            if now - entry.created > ENTRY_SECONDS:
                del self.entries[key]
        while len(self.entries) >= MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]


def _drop(counter: Counter, keys: Iterable[Any]) -> None:
    for k in keys:
        counter[k] -= 1
        if counter[k] <= 0:
            del counter[k]


def of(hub: Any) -> Fanout:
    """The fanout of a checkpoint hub (created on first use)."""
    fanout = getattr(hub, "fanout", None)
    if fanout is None:
        fanout = hub.fanout = Fanout(hub.using)
    return fanout
