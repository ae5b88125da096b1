"""New-checkpoint fan-out: one listener per server process, shared in memory by all its sync streams.

PostgreSQL: LISTEN on the checkpoint channel (the replicator NOTIFYs in its batch transaction), in a thread that
sleeps in one ``select`` on the connection's socket and a wake pipe (:class:`Waker`, :func:`wait_notified`; the
replicator's outbox listener waits the same way). SQLite: a poll of ``PRAGMA data_version`` per process, the
checkpoint table read only after another connection committed. With ``POWERSYNC["NOTIFY"] = "channels"``:
announcements over a Channels layer instead of LISTEN (:mod:`~powersync_django.notify_channels`). In all cases a checkpoint committed by
this process's own replicator thread wakes the hub at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import connections

from . import notify_channels
from .conf import get_config

logger = logging.getLogger(__name__)

CHECKPOINT_CHANNEL = "powersync_checkpoint"
RECENT_EVENTS = 256
# How often an idle checkpoint listener thread checks that its event loop still runs (stop_listener and
# close wake it at once).
LISTENER_CHECK_SECONDS = 5.0
# PostgreSQL: the hub re-reads the newest checkpoint this often even without a notification (a safety net).
LISTEN_POLL_SECONDS = 5.0

# --- waiting on a LISTEN connection without polling ------------------------------------------------


class Waker(threading.Event):
    """A ``threading.Event`` that can also be waited on with ``select`` (:meth:`fileno`), next to a socket.

    ``set`` writes a byte to a pipe, ``clear`` drains it, so a thread blocked in :func:`wait_notified` on a
    LISTEN connection wakes at once when another thread sets the event: no short polling timeouts.
    """

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._closed = False

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        super().set()
        if not self._closed:
            with contextlib.suppress(OSError):  # full (already readable) or closed meanwhile
                os.write(self._write, b"x")

    def clear(self) -> None:
        super().clear()
        self.drain()

    def drain(self) -> None:
        """Empty the pipe (a byte can outlive the flag when ``set`` and ``clear`` race)."""
        if not self._closed:
            with contextlib.suppress(OSError):
                while os.read(self._read, 4096):
                    pass

    def __del__(self) -> None:
        # Only once no thread can set it any more: closing earlier could let a late ``set`` write to a
        # reused file descriptor.
        if not getattr(self, "_closed", True):
            self._closed = True
            os.close(self._read)
            os.close(self._write)


def wait_notified(conn: Any, wake: threading.Event, timeout: float) -> str:
    """Block until ``conn`` (a psycopg connection that LISTENs) receives a notification, ``wake`` is set, or
    ``timeout`` passes; return ``notified``, ``woken`` or ``timeout``. Raises ``psycopg.Error`` when the
    connection is lost.

    The thread sleeps in one ``select`` on the connection's socket (and the :class:`Waker`'s pipe): no
    wake-ups while nothing happens. A plain ``threading.Event`` (no pipe) is checked every 50 ms.
    """
    deadline = time.monotonic() + timeout
    piped = isinstance(wake, Waker) and not wake._closed
    with selectors.DefaultSelector() as selector:  # not select.select: file descriptors above 1023
        selector.register(conn.fileno(), selectors.EVENT_READ)
        if piped:
            selector.register(wake.fileno(), selectors.EVENT_READ)
        while True:
            # Notifications already received (during a command, or in the packet that woke us up).
            for _ in conn.notifies(timeout=0, stop_after=1):
                return "notified"
            if wake.is_set():
                return "woken"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in selector.select(remaining if piped else min(0.05, remaining)):
                if key.fd != conn.fileno() and not wake.is_set():
                    wake.drain()  # a stale byte (set/clear race): select would return at once again


# --- replicator wake-up (threads) ------------------------------------------------------------------

_replicator_events: set[threading.Event] = set()


def register_replicator_wakeup(event: threading.Event) -> None:
    _replicator_events.add(event)


def unregister_replicator_wakeup(event: threading.Event) -> None:
    _replicator_events.discard(event)


def outbox_changed() -> None:
    """Called after a transaction with outbox entries commits in this process."""
    for event in list(_replicator_events):
        event.set()


# --- checkpoint hub (asyncio) ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointEvent:
    """What one replication batch changed."""

    id: int
    last_op_id: int
    changed_buckets: frozenset[str] | None  # None: any bucket may have changed
    changed_models: frozenset[str]
    write_checkpoints: frozenset[str]


@dataclass
class Changes:
    """Union of several checkpoint events, as a stream sees them."""

    last_id: int
    buckets: set[str] | None
    models: set[str]
    write_checkpoints: set[str]

    @classmethod
    def everything(cls, last_id: int) -> Changes:
        return cls(last_id, None, {"*"}, {"*"})

    def touches_models(self, models: frozenset[str]) -> bool:
        return "*" in self.models or bool(self.models & models)

    def touches_key(self, key: str) -> bool:
        return "*" in self.write_checkpoints or key in self.write_checkpoints


_hubs: dict[asyncio.AbstractEventLoop, CheckpointHub] = {}
_hubs_lock = threading.Lock()


def checkpoint_committed(checkpoint_id: int) -> None:
    """Called (from any thread) after a replication batch committed in this process."""
    if notify_channels.enabled():
        notify_channels.announce(checkpoint_id)
    with _hubs_lock:
        hubs = list(_hubs.items())
    for loop, hub in hubs:
        try:
            loop.call_soon_threadsafe(hub.poke)
        except RuntimeError:  # loop closed
            pass


def forget_hub(hub: CheckpointHub) -> None:
    """Drop a closed hub from the per-loop registry (its event loop is going away)."""
    with _hubs_lock:
        for loop, known in list(_hubs.items()):
            if known is hub:
                del _hubs[loop]


def running_hub() -> CheckpointHub | None:
    """The open hub of the running event loop, if one was started (none is started here)."""
    with _hubs_lock:
        hub = _hubs.get(asyncio.get_running_loop())
    return None if hub is None or hub.closed else hub


def get_hub(using: str = "default") -> CheckpointHub:
    """The hub of the running event loop (started on first use)."""
    loop = asyncio.get_running_loop()
    with _hubs_lock:
        hub = _hubs.get(loop)
        if hub is None or hub.closed:
            hub = _hubs[loop] = CheckpointHub(using)
            hub.start()
    return hub


class _DataVersion:
    """SQLite's ``PRAGMA data_version`` on a connection of the hub's own (event-loop thread): it changes when
    another connection commits. A few microseconds, against a read through the read threads per poll."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.conn: sqlite3.Connection | None = None

    def read(self) -> int | None:
        """The current value; None when it cannot be read now (the caller then reads the checkpoints)."""
        try:
            if self.conn is None:
                params = connections[self.using].get_connection_params()
                # timeout 0: never block the event loop on a lock (the answer is then "unknown").
                self.conn = sqlite3.connect(params["database"], uri=bool(params.get("uri")), timeout=0,
                                            isolation_level=None, check_same_thread=False)
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        except Exception:
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class CheckpointHub:
    """Tracks the newest checkpoint and wakes waiting streams when it changes."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self.latest_id = 0
        # Every event with an id above this one is in ``events``: a stream at an older checkpoint may have
        # missed changes (events dropped from the deque, checkpoint rows pruned) and re-checks everything.
        self.known_from = 0
        self.events: deque[CheckpointEvent] = deque(maxlen=RECENT_EVENTS)
        self.initialised = False
        self.closed = False
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._listener: threading.Thread | None = None
        self._listener_stop = Waker()
        self._ready = asyncio.Event()

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="powersync-checkpoint-hub"))
        if notify_channels.enabled():
            self._tasks.append(asyncio.create_task(notify_channels.listen(self.poke, lambda: self.closed),
                                                   name="powersync-checkpoint-layer"))
        elif connections[self.using].vendor == "postgresql":
            self._listener = threading.Thread(target=self._listen, args=(asyncio.get_running_loop(),),
                                              name="powersync-checkpoint-listen", daemon=True)
            self._listener.start()

    def poke(self) -> None:
        self._poke.set()

    def stop_listener(self, wait: float = 0) -> None:
        """Stop the PostgreSQL listener thread (at once)."""
        self.closed = True
        self._listener_stop.set()
        if self._listener is not None and wait:
            self._listener.join(wait)

    async def close(self) -> None:
        self.closed = True
        self._listener_stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def ready(self) -> int:
        """Wait for the first read of the newest checkpoint id; return it."""
        await self._ready.wait()
        return self.latest_id

    async def wait_changes(self, after_id: int, max_wait: float) -> Changes | None:
        """Changes of the checkpoints after ``after_id``; None if nothing new within ``max_wait``."""
        if self.latest_id <= after_id:
            waiter = self._changed
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(max_wait):
                    await waiter.wait()
            except TimeoutError:
                return None
        if self.latest_id <= after_id:
            return None
        return self.changes_since(after_id)

    def changes_since(self, after_id: int) -> Changes:
        if after_id < self.known_from:
            # Older than what we know all changes since: assume everything changed.
            return Changes.everything(self.latest_id)
        events = [e for e in self.events if e.id > after_id]
        buckets: set[str] | None = set()
        models: set[str] = set()
        keys: set[str] = set()
        for e in events:
            if e.changed_buckets is None or buckets is None:
                buckets = None
            else:
                buckets |= e.changed_buckets
            models |= e.changed_models
            keys |= e.write_checkpoints
        return Changes(self.latest_id, buckets, models, keys)

    async def _run(self) -> None:
        from . import storage

        interval = get_config()["POLL_INTERVAL"]
        pg = connections[self.using].vendor == "postgresql"
        probe = _DataVersion(self.using) if connections[self.using].vendor == "sqlite" else None
        try:
            while not self.closed:
                # Cleared before the read: a poke that arrives while it runs (a checkpoint it may have missed)
                # leads to another read at once instead of waiting for the next poll.
                self._poke.clear()
                seen = probe.read() if probe else None  # before the read: a commit after it is noticed
                try:
                    newest = await storage.run(storage.latest_checkpoint_id, self.using)
                    if not self.initialised:
                        # Baseline (possibly 0: no checkpoint yet); streams start from it.
                        self.latest_id = self.known_from = newest
                        self.initialised = True
                    elif newest > self.latest_id:
                        rows = await storage.run(storage.checkpoints_from, self.latest_id, self.using)
                        self._publish(rows)
                    self._ready.set()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("powersync: reading checkpoints failed")
                while not self.closed:
                    try:
                        async with asyncio.timeout(LISTEN_POLL_SECONDS if pg else interval):
                            await self._poke.wait()
                        break
                    except TimeoutError:
                        # SQLite: read again only once another connection committed (or the probe cannot tell).
                        if seen is None or probe is None or probe.read() != seen:
                            break
        finally:
            if probe:
                probe.close()
    def _publish(self, rows: list[tuple]) -> None:
        """Publish the checkpoint rows read from ``latest_id`` on (``latest_id`` itself first, if it still exists).

        If it does not, the replicator pruned it and maybe later ones before we read them: their changes are
        unknown, so streams at any checkpoint before the first row read re-check everything.
        """
        if not rows or rows[0][0] != self.latest_id:
            self.known_from = max(self.known_from, rows[0][0] - 1 if rows else self.latest_id)
            if self.latest_id:
                logger.warning("powersync: checkpoints after %s were pruned before this process read them; "
                               "its streams re-check all their buckets", self.latest_id)
        for cid, last_op, buckets, models, keys in rows:
            if cid <= self.latest_id:
                continue
            if len(self.events) == self.events.maxlen:
                self.known_from = max(self.known_from, self.events[0].id)
            self.events.append(
                CheckpointEvent(
                    id=cid,
                    last_op_id=last_op,
                    changed_buckets=None if buckets is None else frozenset(orjson.loads(buckets)),
                    changed_models=frozenset(orjson.loads(models or "[]")),
                    write_checkpoints=frozenset(orjson.loads(keys or "[]")),
                )
            )
            self.latest_id = max(self.latest_id, cid)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """PostgreSQL LISTEN in a daemon thread (a blocking connection: nothing for asyncio to cancel)."""
        import psycopg

        params = connections[self.using].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        while not self.closed and not loop.is_closed():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHECKPOINT_CHANNEL}")
                    loop.call_soon_threadsafe(self.poke)  # catch up on anything committed before LISTEN
                    while not self.closed and not loop.is_closed():
                        # One select on the socket and the stop pipe; the timeout only notices a closed loop.
                        if wait_notified(conn, self._listener_stop, LISTENER_CHECK_SECONDS) == "notified":
                            loop.call_soon_threadsafe(self.poke)
            except RuntimeError:
                return  # the event loop closed
            except Exception:
                logger.exception("powersync: checkpoint listener failed; reconnecting")
                time.sleep(1.0)
