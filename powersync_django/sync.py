"""The sync session: one per client connection, shared by the HTTP and WebSocket transports.

``await session.prepare()`` resolves the bucket set: bucket definitions and ``auto_subscribe`` streams unless
``streams.include_defaults`` is false, plus the request's stream subscriptions (streams.py; errors here become
HTTP 400 / RSocket errors before any line is sent); ``session.lines()`` then yields sync lines as dicts: a full ``checkpoint``, ``data`` pages from
each bucket's position up to the checkpoint (highest priority first, ``partial_checkpoint_complete`` between
priorities), ``checkpoint_complete``; then a ``checkpoint_diff`` for every later checkpoint that changes
something for this connection; ``token_expires_in`` keepalives; the stream ends when the token expires or
the bucket definitions change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError

from . import executors, fanout, storage, streams, waiting
from .auth import TokenClaims
from .checksums import to_signed
from .conf import get_config
from .notify import Changes, get_hub
from .protocol import ProtocolError, SharedLine, SyncRequest
from .rules import Rules, get_rules

logger = logging.getLogger(__name__)

# Errors of parameter querysets that come from request values, not from the server.
PARAMETER_ERRORS = (DjangoValidationError, ValueError, TypeError, OverflowError, DataError)

TOO_MANY_BUCKETS = "PSYNC_S2305"
EXPIRY_WARNING_SECONDS = 20
HUB_READY_SECONDS = 10
# Ops sent for one checkpoint after which a newer checkpoint that changes something for the connection
# interrupts it (protocol.md §6.8 item 6): its diff is sent and the data continues from the current positions.
INTERRUPT_AFTER_OPS = 1000


class SyncSession:
    """State of one client's sync stream."""

    def __init__(self, claims: TokenClaims, request: SyncRequest, *, keepalive: bool = True,
                 using: str = "default") -> None:
        self.claims = claims
        self.request = request
        self.keepalive = keepalive
        self.using = using
        self.config = get_config()
        self.rules: Rules = get_rules()
        self.wc_key = storage.write_checkpoint_key(claims.user_id, request.client_id)
        # checkpoint changed_models entries that make this stream re-evaluate its bucket set
        self.watch = self.rules.stream_keys(claims.claims, request.parameters or {}) | streams.subscription_keys(
            self.rules, request)
        # bucket -> (definition, priority) the user is entitled to
        self.entitled: dict[str, tuple[str, int]] = {}
        # bucket -> why it is included ({"default": i} / {"sub": i}); checkpoint.streams of this connection
        self.reasons: dict[str, list[dict[str, int]]] = {}
        self.streams: list[dict[str, Any]] | None = None
        # bucket -> op id the client has (or will have) everything up to
        self.positions: dict[str, int] = dict(request.buckets)
        # bucket -> (checksum, count) last sent on this connection
        self.sent: dict[str, tuple[int, int]] = {}
        self.write_checkpoint = 0
        self.version = 0
        # Last checkpoint whose changes were looked at (hub events up to it are handled).
        self.cursor = 0
        self._base = 0  # the cursor before the changes being handled
        # Checkpoint of the last checkpoint/checkpoint_diff line sent: the client's position after it.
        self.checkpoint_id = 0
        # Buckets of that checkpoint whose data is not fully sent yet, and the ops sent for it so far.
        self.unfinished: set[str] = set()
        self.ops_sent = 0
        self.hub = None
        # The process's shared reads (fanout.py): what this stream holds is registered there while it runs.
        self._fanout: fanout.Fanout | None = None
        # Buckets and cursor as registered, and the dict the buckets were taken from.
        self._registered: frozenset[str] | None = None
        self._registered_from: Any = None
        self._registered_cursor = 0
        # The shared read the current diff is served from (None: this stream's own reads), and whether ops
        # were read outside it.
        self._shared: fanout.Shared | None = None
        self._own_ops = False
        # bucket -> its ``subscriptions`` entry as bytes (a key of shared batches), and the batch being recorded.
        self._reason_keys: dict[str, bytes] = {}
        self._recording: tuple[fanout.Shared, tuple] | None = None

    # --- setup ---------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Resolve the bucket set. Raises ProtocolError (too many buckets, overloaded) before the stream starts."""
        executors.reads.admit()
        self.hub = get_hub(self.using)
        try:
            async with asyncio.timeout(HUB_READY_SECONDS):
                self.cursor = await self.hub.ready()
        except TimeoutError:
            raise ProtocolError("Checkpoints are not readable right now; retry later", code="PSYNC_S2003",
                                status=503) from None
        state = await storage.run(storage.read_checkpoint, [], self.using)
        self.version = state.rules_version
        self.entitled = await self._resolve_buckets()

    async def _resolve_buckets(self) -> dict[str, tuple[str, int]]:
        streams.check_subscription_count(self.request, self.config["MAX_SUBSCRIPTIONS_PER_CONNECTION"])
        limit = self.config["MAX_BUCKETS_PER_CONNECTION"]
        try:
            resolution = await storage.run(
                streams.resolve, self.rules, self.claims.claims, self.request.parameters, self.request,
                self.version, limit,
            )
        except PARAMETER_ERRORS as exc:
            # A token or client value that the filtered field cannot hold (a non-UUID for a UUID field, a
            # username for an integer key, a NUL byte on PostgreSQL, an integer out of range): the request is bad.
            logger.info("powersync: bucket parameters of %r do not fit: %r", self.claims.user_id, exc)
            raise ProtocolError("Token or client parameters do not fit the bucket definitions",
                                details=f"{type(exc).__name__}") from None
        buckets = resolution.buckets
        self.reasons = resolution.reasons
        self._reason_keys = {}
        if self.streams is None:  # fixed by the first checkpoint: diffs cannot change the stream list
            self.streams = resolution.streams
        if len(buckets) > limit:
            top = Counter(d for d, _ in buckets.values()).most_common(3)
            names = ", ".join(f"{d} ({n}+)" for d, n in top)
            raise ProtocolError(
                f"Too many buckets: more than {limit}", code=TOO_MANY_BUCKETS,
                details=f"Definitions producing the most buckets: {names}",
            )
        return buckets

    # --- lines ---------------------------------------------------------------------------------

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """Yield sync lines until the token expires, the definitions change or the consumer stops.

        Each stream waits for changes here with as little as possible kept alive meanwhile (the lines and reads
        of one change are locals of :meth:`_first` / :meth:`_changed`): with thousands of streams, whatever
        each keeps from one change to the next outlives the young GC generations, and the full collections
        this triggers are what a change costs them."""
        if self.claims.expires_in() <= 0:
            yield {"token_expires_in": 0}
            return
        if self.hub is None:
            await self.prepare()
        try:
            pending_recheck = False
            async for out in self._first():
                if out is _INVALIDATED:
                    pending_recheck = True
                elif out is _ENDED:
                    return
                else:
                    yield out
            out = None
            next_keepalive = time.monotonic() + self._keepalive_interval()
            while True:
                expires_in = self.claims.expires_in()
                if expires_in <= 0:
                    yield {"token_expires_in": 0}
                    return
                now = time.monotonic()
                wait = max(0.0, min(next_keepalive - now, expires_in - EXPIRY_WARNING_SECONDS
                                    if expires_in > EXPIRY_WARNING_SECONDS else expires_in))
                if pending_recheck:
                    # All buckets as of the newest checkpoint (compacted past the one withheld, which is older).
                    changes = Changes.everything(max(self.cursor, self.hub.latest_id))
                else:
                    changes = await waiting.of(self.hub).wait_changes(self.cursor, wait)
                if changes is None:
                    if time.monotonic() >= next_keepalive or 0 < self.claims.expires_in() <= EXPIRY_WARNING_SECONDS:
                        if self.keepalive or self.claims.expires_in() <= EXPIRY_WARNING_SECONDS:
                            yield {"token_expires_in": max(0, self.claims.expires_in())}
                        next_keepalive = time.monotonic() + self._keepalive_interval()
                        if 0 < self.claims.expires_in() <= EXPIRY_WARNING_SECONDS:
                            # Warned once; next wake-up is the expiry itself.
                            next_keepalive = time.monotonic() + self.claims.expires_in()
                    continue
                self._base, self.cursor = self.cursor, changes.last_id
                if not pending_recheck:
                    replayed = await self._replay(changes)
                    if replayed is not None:
                        changes = None
                        self._register()
                        for out in replayed:
                            yield out
                        out = replayed = None
                        continue
                force, pending_recheck = pending_recheck, False
                async for out in self._changed(changes, force):
                    if out is _INVALIDATED:
                        pending_recheck = True
                    elif out is _ENDED:
                        return
                    else:
                        yield out
                changes = out = None
        finally:
            self._unregister()

    async def _first(self) -> AsyncIterator[Any]:
        """The full checkpoint line and its data (``_INVALIDATED`` / ``_ENDED`` passed on)."""
        # One snapshot: bucket checksums and the write checkpoint of the same checkpoint (a write is never
        # acknowledged before the data containing it).
        state = await storage.run(storage.read_checkpoint, sorted(self.entitled), self.using, wc_key=self.wc_key)
        if state.rules_version != self.version:
            yield _ENDED
            return
        self.write_checkpoint = state.write_checkpoint or 0
        self.checkpoint_id = state.checkpoint_id
        buckets = [self._bucket_entry(b, state) for b in sorted(self.entitled)]
        line: dict[str, Any] = {"last_op_id": str(state.last_op_id), "buckets": buckets}
        if self.write_checkpoint:
            line["write_checkpoint"] = str(self.write_checkpoint)
        line["streams"] = self.streams or []
        yield {"checkpoint": line}
        # Buckets the client holds but may not have: it deletes them when they are missing above.
        self.positions = {b: p for b, p in self.positions.items() if b in self.entitled}
        self._register()
        async for out in self._checkpoint_data(state, list(self.entitled)):
            yield out

    async def _changed(self, changes: Changes, force: bool) -> AsyncIterator[Any]:
        """The ``checkpoint_diff`` of ``changes`` (if they change anything here) and its data; recorded for
        the streams with the same view of them when :meth:`_replay` asked for it (``_INVALIDATED`` /
        ``_ENDED`` passed on)."""
        last_id, recording = changes.last_id, None if force else self._recording
        diff = await self._diff(changes, force=force)
        del changes
        self._recording = None
        self._register()
        if diff is None:
            yield _ENDED  # definitions changed: end the stream, the client reconnects
            return
        line, state, to_fetch = diff
        record: list[dict[str, Any]] | None = [] if recording is not None else None
        if line is None:
            if recording is not None:
                self._record(recording, last_id, [])
            return
        out: Any = {"checkpoint_diff": line}
        if record is not None:
            out = SharedLine(out)
            record.append(out)
        yield out
        async for out in self._checkpoint_data(state, to_fetch):
            if out is _INVALIDATED:
                record = None
            elif record is not None and out is not _ENDED:
                out = SharedLine(out)
                record.append(out)
            yield out
        if record is not None:
            self._record(recording, last_id, record)

    def _register(self, buckets: Any = None, move: bool = True) -> None:
        """Tell the process's shared reads which buckets this stream holds and (``move``) where its cursor is.

        The cursor moves only once the changes were handled: the read of the last stream to leave a cursor
        would be dropped before that stream used it."""
        if self._fanout is None:
            if not self.config["SHARED_READS"] or self.hub is None:
                return
            self._fanout = fanout.of(self.hub)
        source = self.entitled if buckets is None else buckets
        if self._registered is None:
            held = frozenset(source)
            self._fanout.join(held, self.wc_key, self.cursor)
            self._registered, self._registered_from, self._registered_cursor = held, source, self.cursor
            return
        if source is not self._registered_from:  # (a frozenset per change would outlive it: work for the GC)
            held = frozenset(source)
            if held != self._registered:
                self._fanout.hold(self._registered, held)
                self._registered = held
            self._registered_from = source
        if move and self._registered_cursor != self.cursor:
            self._fanout.move(self._registered_cursor, self.cursor)
            self._registered_cursor = self.cursor

    def _unregister(self) -> None:
        if self._fanout is not None and self._registered is not None:
            self._fanout.leave(self._registered, self.wc_key, self._registered_cursor)
            self._registered = self._registered_from = None

    def _keepalive_interval(self) -> float:
        return float(self.config["KEEPALIVE_SECONDS"])

    async def _replay(self, changes: Changes) -> list[dict[str, Any]] | None:
        """This stream's lines for ``changes`` when another stream with the same view of them already produced
        them from the same shared read (their effects on this stream applied); None: compute them.

        Lines from one shared read depend only on the changed buckets this stream holds (with their priority
        and subscriptions), what it last sent of them (checksum, count, position) and its write checkpoint;
        streams that agree on these send the same lines (:class:`~powersync_django.protocol.SharedLine`:
        encoded once). The first of them records the lines (``_recording``, :meth:`_record`) when they came
        from the shared read alone; a stream the changes do not touch gets no lines without a read at all.
        """
        self._recording = None
        if (self._fanout is None or self.unfinished or changes.buckets is None
                or self.checkpoint_id > changes.last_id or changes.touches_key(self.wc_key)
                or changes.touches_models(self.watch)):
            return None
        changed = changes.buckets
        candidates = [b for b in self.entitled if b in changed]
        if not candidates:
            return []  # what _diff answers: nothing changed for this stream
        shared = await self._fanout.read(self._base, changes)
        if shared is None:
            return None
        reason_keys, entitled, sent, positions = self._reason_keys, self.entitled, self.sent, self.positions
        key = (self.write_checkpoint, tuple(
            (b, entitled[b][1], reason_keys.get(b) or self._reason_key(b), sent.get(b), positions.get(b, 0))
            for b in candidates))
        batch = shared.batches.get(key)
        if batch is None:
            if len(shared.batches) < fanout.MAX_BATCHES:
                self._recording = (shared, key)
            return None
        for b, b_sent, b_position in batch.effects:
            if b_sent is None:
                sent.pop(b, None)
            else:
                sent[b] = b_sent
            if b_position is None:
                positions.pop(b, None)
            else:
                positions[b] = b_position
        if batch.checkpoint_id is not None:
            self.checkpoint_id = batch.checkpoint_id
            self.ops_sent = batch.ops_sent
        self._shared, self._own_ops = shared, False
        self._fanout.replayed += 1
        return batch.lines

    def _reason_key(self, bucket: str) -> bytes:
        key = self._reason_keys[bucket] = orjson.dumps(self.reasons.get(bucket, []))
        return key

    def _record(self, recording: tuple[fanout.Shared, tuple], last_id: int, lines: list[dict[str, Any]]) -> None:
        """Keep the lines just sent for the changes up to ``last_id`` for the streams with the same key (:meth:`_replay`), if they
        came from the shared read alone and were sent whole (not interrupted, nothing left owed)."""
        shared, key = recording
        if self._shared is not shared or self._own_ops or self.unfinished or self.cursor != last_id:
            return
        effects = tuple((b, self.sent.get(b), self.positions.get(b)) for b, *_ in key[1])
        shared.keep(key, fanout.Batch(lines, effects, self.checkpoint_id if lines else None,
                                      self.ops_sent if lines else 0))

    def _bucket_entry(self, bucket: str, state: storage.CheckpointState) -> dict[str, Any]:
        cs = state.buckets.get(bucket)
        checksum, count = (cs.checksum, cs.count) if cs else (0, 0)
        self.sent[bucket] = (checksum, count)
        _, priority = self.entitled[bucket]
        return {"bucket": bucket, "checksum": to_signed(checksum), "count": count, "priority": priority,
                "subscriptions": self.reasons.get(bucket, [])}

    async def _diff(
        self, changes: Changes, force: bool = False
    ) -> tuple[dict[str, Any] | None, storage.CheckpointState | None, list[str]] | None:
        """(diff line or None if nothing changed for us, state, buckets to fetch); None if definitions changed.

        ``force``: the last checkpoint was not completed (invalidated), so a diff is sent even if empty.

        The diff is computed as of ``changes.last_id`` (or of the checkpoint last sent, when that is newer: it
        already contains those changes), never of a newer one: buckets changed by later batches are not among
        ``changes`` and are handled by the next call. Only when every bucket is a candidate (``changes.buckets``
        is None) is the newest checkpoint read: later changes then add nothing the diff does not cover, and
        the next calls re-check them against it.
        """
        self._shared, self._own_ops = None, False
        entitled = self.entitled
        if changes.touches_models(self.watch):
            entitled = await self._resolve_buckets()
        set_changed = entitled.keys() != self.entitled.keys()
        if changes.buckets is None:
            candidates = list(entitled)
        else:
            candidates = [b for b in entitled if b in changes.buckets or b not in self.entitled]
        wc_touched = changes.touches_key(self.wc_key)
        if not candidates and not set_changed and not wc_touched and not force:
            return None, None, []
        target = max(changes.last_id, self.checkpoint_id)
        # Buckets of an interrupted checkpoint still owed data: read at this one, sent with its data.
        listed = set(candidates)
        owed = [b for b in sorted(self.unfinished) if b in entitled and b not in listed]
        wc_key = self.wc_key if wc_touched else None
        state = None
        if (self._fanout is not None and not owed and changes.buckets is not None
                and target == changes.last_id):
            if entitled.keys() != self.entitled.keys():
                self._register(entitled, move=False)  # its new buckets, for reads not yet started
            shared = await self._fanout.read(self._base, changes)
            if shared is not None and (state := shared.state_for(candidates, wc_key)) is not None:
                self._shared = shared
        if state is None:
            state = await storage.run(storage.read_checkpoint, candidates + owed, self.using,
                                      at=None if changes.buckets is None else target, wc_key=wc_key)
        if state.rules_version != self.version:
            return None
        if state.checkpoint_id > target and changes.buckets is not None:
            # The checkpoint was pruned meanwhile and the newest one was read instead: re-check everything.
            return await self._diff(Changes.everything(changes.last_id), force=force)
        wc = self.write_checkpoint
        if state.write_checkpoint is not None:
            wc = state.write_checkpoint
        removed = sorted(set(self.entitled) - set(entitled))
        self.entitled = entitled
        updated = []
        for b in candidates:
            cs = state.buckets.get(b)
            now = (cs.checksum, cs.count) if cs else (0, 0)
            if self.sent.get(b) != now:
                updated.append(self._bucket_entry(b, state))
        for b in removed:
            self.sent.pop(b, None)
            self.positions.pop(b, None)
        if not updated and not removed and wc == self.write_checkpoint and not force:
            return None, state, []
        self.write_checkpoint = wc
        self.checkpoint_id = state.checkpoint_id
        line: dict[str, Any] = {"last_op_id": str(state.last_op_id)}
        if wc:
            line["write_checkpoint"] = str(wc)
        line["updated_buckets"] = updated
        line["removed_buckets"] = removed
        # Also any bucket whose data for an earlier checkpoint was not (fully) sent, e.g. after an invalidated
        # or interrupted checkpoint: _send_data skips buckets the client already has up to their last op.
        return line, state, candidates + owed

    async def _checkpoint_data(self, state: storage.CheckpointState, buckets: list[str]) -> AsyncIterator[Any]:
        """:meth:`_send_data` for a checkpoint just sent; when a newer checkpoint supersedes it, that one's
        ``checkpoint_diff`` and its data instead (the superseded one is never completed)."""
        while True:
            superseded = None
            async for out in self._send_data(state, buckets):
                if isinstance(out, _Superseded):
                    superseded = out
                else:
                    yield out
            if superseded is None:
                return
            state, buckets = superseded.state, superseded.buckets
            yield {"checkpoint_diff": superseded.line}

    async def _superseding(self) -> Any:
        """A newer checkpoint's diff (:class:`_Superseded`) if one arrived that changes something for this
        connection and enough ops were sent for the current one; ``_ENDED`` if the definitions changed."""
        if self.ops_sent < INTERRUPT_AFTER_OPS or self.hub.latest_id <= self.cursor:
            return None
        changes = self.hub.changes_since(self.cursor)
        # The shared read of these changes is keyed by the cursor they start from (not the one before it: that
        # read would hold fewer buckets than the streams still at that cursor need).
        self._base, self.cursor = self.cursor, changes.last_id
        diff = await self._diff(changes)
        if diff is None:
            return _ENDED
        line, state, to_fetch = diff
        return None if line is None else _Superseded(line, state, to_fetch)

    async def _send_data(self, state: storage.CheckpointState, buckets: list[str]) -> AsyncIterator[Any]:
        """Data lines for ``buckets`` up to the checkpoint, by priority, then the completion line.

        Pages are read ahead by a producer task (at most two pages in memory), so database reads overlap
        with encoding and sending. Once ``INTERRUPT_AFTER_OPS`` ops were sent, a newer checkpoint that changes
        something for this connection ends the data at a line boundary: the last item is then a
        :class:`_Superseded` (or ``_ENDED``), and no completion line follows.
        """
        upto = state.last_op_id
        by_priority: dict[int, list[str]] = {}
        for b in buckets:
            cs = state.buckets.get(b)
            if cs is not None and cs.last_op_id > self.positions.get(b, 0):
                by_priority.setdefault(self.entitled[b][1], []).append(b)
        self.unfinished = {b for group in by_priority.values() for b in group}
        self.ops_sent = 0
        priorities = sorted(by_priority)
        for index, priority in enumerate(priorities):
            group = sorted(by_priority[priority])
            async for line in self._pages(state, group):
                yield line
                if isinstance(line, _Superseded) or line is _ENDED:
                    return
            if index < len(priorities) - 1:
                # The client validates every bucket of priority <= this one, with data sent or not.
                if await self._compacted_past(state, [b for b in buckets if self.entitled[b][1] <= priority]):
                    yield _INVALIDATED
                    return
                yield {"partial_checkpoint_complete": {"last_op_id": str(upto), "priority": priority}}
        if await self._compacted_past(state, buckets):
            yield _INVALIDATED
            return
        yield {"checkpoint_complete": {"last_op_id": str(upto)}}

    async def _compacted_past(self, state: storage.CheckpointState, buckets: list[str]) -> bool:
        """Whether any of ``buckets`` was compacted past this checkpoint (before or while it was read): its
        checksums (computed back from later totals) or data may be inconsistent (protocol.md §10.5).

        Checksums and ops all from one shared read's snapshot are consistent: its ``compacted_to`` says it.
        """
        if state.compacted_to > state.last_op_id:
            return True
        if not buckets or (self._shared is not None and not self._own_ops):
            return False
        return await storage.run(storage.max_compacted_to, buckets, self.using) > state.last_op_id

    async def _pages(self, state: storage.CheckpointState, buckets: list[str]) -> AsyncIterator[Any]:
        upto = state.last_op_id
        limit = self.config["OPS_PER_DATA_LINE"]
        shared = self._shared
        if shared is not None and all(shared.page(b, self.positions.get(b, 0), 0) is not None for b in buckets):
            # Everything is in the shared read (memory): no read-ahead task needed.
            for bucket in buckets:
                after = self.positions.get(bucket, 0)
                bucket_last = state.buckets[bucket].last_op_id
                while after < bucket_last and (rows := shared.page(bucket, after, limit)):
                    next_after = rows[-1][0]
                    yield {"data": {"bucket": bucket, "after": str(after), "has_more": next_after < bucket_last,
                                    "data": shared.render(bucket, after, rows, _entry),
                                    "next_after": str(next_after)}}
                    self.positions[bucket] = after = next_after
                    self.ops_sent += len(rows)
                self.unfinished.discard(bucket)
            return
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)

        async def produce() -> None:
            for bucket in buckets:
                after = self.positions.get(bucket, 0)
                bucket_last = state.buckets[bucket].last_op_id
                while after < bucket_last:
                    shared = self._shared
                    rows = None if shared is None else shared.page(bucket, after, limit)
                    if rows is None:
                        shared = None
                        self._own_ops = True
                        rows = await storage.run(storage.read_ops, bucket, after, upto, limit, self.using)
                    if not rows:
                        break
                    await queue.put((bucket, after, rows, shared))
                    after = rows[-1][0]
            await queue.put(None)

        producer = asyncio.create_task(produce())
        try:
            while (item := await queue.get()) is not None:
                bucket, after, rows, shared = item
                next_after = rows[-1][0]
                has_more = next_after < state.buckets[bucket].last_op_id
                data = [_entry(r) for r in rows] if shared is None else shared.render(bucket, after, rows, _entry)
                yield {"data": {"bucket": bucket, "after": str(after), "has_more": has_more,
                                "data": data, "next_after": str(next_after)}}
                self.positions[bucket] = next_after
                self.ops_sent += len(rows)
                if not has_more:
                    self.unfinished.discard(bucket)
                if (superseding := await self._superseding()) is not None:
                    yield superseding
                    return
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)


_INVALIDATED = object()
_ENDED = object()  # the definitions changed while data was sent: the stream ends


@dataclass(frozen=True)
class _Superseded:
    """A newer checkpoint's diff line, its state and the buckets to fetch for it."""

    line: dict[str, Any]
    state: storage.CheckpointState
    buckets: list[str]


def _entry(row: tuple) -> dict[str, Any]:
    op_id, op, object_type, object_id, data, checksum = row
    if op == "PUT":
        return {"op_id": str(op_id), "op": op, "object_type": object_type, "object_id": object_id,
                "checksum": checksum, "subkey": None, "data": data}
    if op == "REMOVE":
        return {"op_id": str(op_id), "op": op, "object_type": object_type, "object_id": object_id,
                "checksum": checksum, "subkey": None, "data": None}
    return {"op_id": str(op_id), "op": op, "checksum": checksum}


async def aclose_quietly(gen: Any) -> None:
    try:
        await gen.aclose()
    except (Exception, asyncio.CancelledError):
        logger.debug("powersync: closing a sync session failed", exc_info=True)
