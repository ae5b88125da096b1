"""Streams waiting for checkpoints (waiting.py): woken by the next checkpoint, or at their deadline rounded up
to a second shared with the other streams due then; nothing left behind by a stream that stops waiting."""

from __future__ import annotations

import asyncio

from powersync_django import waiting
from powersync_django.notify import Changes


class FakeHub:
    """The part of CheckpointHub that waiting.py uses."""

    def __init__(self) -> None:
        self.latest_id = 1
        self.closed = False
        self.waits = 0
        self._event = asyncio.Event()

    async def wait_changes(self, after_id: int, max_wait: float) -> Changes | None:
        self.waits += 1
        if self.latest_id <= after_id:
            try:
                async with asyncio.timeout(max_wait):
                    await self._event.wait()
            except TimeoutError:
                return None
        return self.changes_since(after_id)

    def changes_since(self, after_id: int) -> Changes:
        return Changes(self.latest_id, {f"b{after_id}"}, set(), set())

    def publish(self) -> None:
        self.latest_id += 1
        event, self._event = self._event, asyncio.Event()
        event.set()


def test_a_checkpoint_wakes_every_waiting_stream_with_its_changes():
    async def run():
        hub = FakeHub()
        waits = waiting.of(hub)
        tasks = [asyncio.create_task(waits.wait_changes(1, 3600)) for _ in range(50)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)
        hub.publish()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert all(r.last_id == 2 and r.buckets == {"b1"} for r in results)
        assert waits.waiters == set() and hub.waits <= 2  # one watcher waits on the hub (again now), not 50 streams
        # Already behind: no wait at all.
        assert (await waits.wait_changes(1, 3600)).last_id == 2

    asyncio.run(run())


def test_streams_due_in_the_same_second_share_one_timer_and_get_none():
    async def run():
        loop = asyncio.get_running_loop()
        hub = FakeHub()
        waits = waiting.of(hub)
        started = loop.time()
        tasks = [asyncio.create_task(waits.wait_changes(1, 0.2)) for _ in range(30)]
        await asyncio.sleep(0)
        assert 1 <= len(waits.due) <= 2  # the deadlines round up to the same second (or the next one)
        assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [None] * 30
        assert 0.2 <= loop.time() - started <= 1.5
        assert waits.due == {} and waits.waiters == set()
        assert await waits.wait_changes(1, 0) is None  # no time left: no wait

    asyncio.run(run())


def test_a_cancelled_stream_leaves_nothing_behind_and_does_not_wake_the_others():
    async def run():
        hub = FakeHub()
        waits = waiting.of(hub)
        stays = asyncio.create_task(waits.wait_changes(1, 3600))
        leaves = asyncio.create_task(waits.wait_changes(1, 3600))
        await asyncio.sleep(0.01)
        leaves.cancel()
        await asyncio.gather(leaves, return_exceptions=True)
        await asyncio.sleep(0.01)
        assert not stays.done() and len(waits.waiters) == 1 and sum(map(len, waits.due.values())) == 1
        hub.publish()
        assert (await asyncio.wait_for(stays, 5)).last_id == 2

    asyncio.run(run())


def test_on_a_closed_hub_streams_wait_for_their_deadline():
    async def run():
        loop = asyncio.get_running_loop()
        hub = FakeHub()
        hub.closed = True
        started = loop.time()
        assert await waiting.of(hub).wait_changes(1, 0.3) is None
        assert loop.time() - started >= 0.3  # no busy loop of immediate returns

    asyncio.run(run())
