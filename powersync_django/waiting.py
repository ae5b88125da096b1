"""Streams waiting for the next checkpoint, with little per stream: one watcher of the checkpoint hub and one
timer per second of deadlines for all of a process's streams; each waiting stream holds just its own future.

A stream waits for a checkpoint after its cursor or until its next keepalive / token expiry line is due.
Waiting on the hub directly (``CheckpointHub.wait_changes``) gives every stream its own timeout, timer
handle, event waiter and coroutine for each wait; with thousands of streams these outlive the young GC
generations after every change, and the full collections they trigger are most of what a change costs. Here
a stream's deadline is rounded up to the next whole second of the event loop's clock and shares that
second's timer with every other stream due then (a keepalive at most a second late).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from .notify import Changes

WATCH_SECONDS = 60.0


class Waiting:
    """The waiting streams of one checkpoint hub."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.waiters: set[asyncio.Future] = set()  # resolved by the next checkpoint
        self.due: dict[int, set[asyncio.Future]] = {}  # second of the loop clock -> resolved then
        self._watcher: asyncio.Task | None = None

    async def wait_changes(self, after_id: int, max_wait: float) -> Changes | None:
        """As ``hub.wait_changes``: the changes after checkpoint ``after_id``, or None when there are none by
        the deadline (``max_wait`` seconds, rounded up to the next second of the loop clock)."""
        hub = self.hub
        if hub.latest_id <= after_id and max_wait > 0:
            loop = asyncio.get_running_loop()
            if not hub.closed and (self._watcher is None or self._watcher.done()):
                # The checkpoint seen is the one of now, not of the task's first step: a checkpoint published
                # in between would not wake the streams waiting meanwhile.
                self._watcher = loop.create_task(self._watch(hub.latest_id), name="powersync-stream-waits")
            second = math.ceil(loop.time() + max_wait)
            due = self.due.get(second)
            if due is None:
                due = self.due[second] = set()
                loop.call_at(second, self._expire, second)
            waiter = loop.create_future()
            self.waiters.add(waiter)
            due.add(waiter)
            try:
                await waiter
            finally:
                self.waiters.discard(waiter)
                due.discard(waiter)
        if hub.latest_id <= after_id:
            return None
        return hub.changes_since(after_id)

    def _expire(self, second: int) -> None:
        for waiter in self.due.pop(second, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _watch(self, seen: int) -> None:
        """Wake every waiting stream when the hub publishes a checkpoint after ``seen`` (until the hub closes:
        then each waits for its deadline, as on a closed hub)."""
        while not self.hub.closed:
            await self.hub.wait_changes(seen, WATCH_SECONDS)
            if self.hub.latest_id > seen:
                seen = self.hub.latest_id
                self._wake_all()


def of(hub: Any) -> Waiting:
    """The waiting streams of a checkpoint hub (created on first use)."""
    waiting = getattr(hub, "waiting", None)
    if waiting is None:
        waiting = hub.waiting = Waiting(hub)
    return waiting
