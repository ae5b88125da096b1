"""Checkpoint announcements over a Channels layer on Redis (POWERSYNC["NOTIFY"] = "channels")."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from django.conf import settings
from django.test import override_settings

from powersync_django import notify, notify_channels
from powersync_django.replication import replicate_now

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_layer():
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                          "CONFIG": {"hosts": [REDIS], "prefix": f"ps-test-{uuid.uuid4().hex[:8]}"}}}
    with override_settings(CHANNEL_LAYERS=layers, POWERSYNC={**settings.POWERSYNC, "NOTIFY": "channels"}):
        yield


class Pokes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self, seconds: float = 10) -> None:
        async with asyncio.timeout(seconds):
            await self.event.wait()
        self.event.clear()


def announce_from_another_thread(checkpoint_id: int) -> None:
    thread = threading.Thread(target=notify_channels.announce, args=(checkpoint_id,))
    thread.start()
    thread.join()


def test_an_announcement_from_any_thread_pokes_every_listener(redis_layer):
    async def run():
        pokes = [Pokes(), Pokes()]
        closed = False
        tasks = [asyncio.create_task(notify_channels.listen(p, lambda: closed)) for p in pokes]
        for p in pokes:
            await p.next()  # joined (and told to catch up)
        announce_from_another_thread(41)
        for p in pokes:
            await p.next()
        closed = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return [p.count for p in pokes]

    assert asyncio.run(run()) == [2, 2]


def test_a_lost_listener_reconnects_catches_up_and_keeps_listening(redis_layer, monkeypatch):
    from channels_redis.core import RedisChannelLayer

    real_receive = RedisChannelLayer.receive
    failures = [ConnectionError("redis went away")]

    async def flaky_receive(self, channel):
        if failures:
            raise failures.pop()
        return await real_receive(self, channel)

    monkeypatch.setattr(RedisChannelLayer, "receive", flaky_receive)
    monkeypatch.setattr(notify_channels, "RECONNECT_SECONDS", 0.05)

    async def run():
        pokes = Pokes()
        task = asyncio.create_task(notify_channels.listen(pokes, lambda: False))
        await pokes.next()  # first join
        await pokes.next()  # rejoined after the failure: a catch-up poke
        assert not failures
        announce_from_another_thread(42)
        await pokes.next()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return pokes.count

    assert asyncio.run(run()) == 3


@pytest.mark.django_db(transaction=True)
def test_the_hub_listens_on_the_layer_and_a_committed_checkpoint_is_announced(redis_layer, monkeypatch):
    """The hub takes its wake-ups from the layer: a checkpoint committed here is announced over it."""
    from demo_project.todos.models import TodoList

    announced: list[int] = []
    real_announce = notify_channels.announce
    monkeypatch.setattr(notify_channels, "announce", lambda cid: (announced.append(cid), real_announce(cid)))

    async def run():
        hub = notify.get_hub()
        await hub.ready()
        names = {t.get_name() for t in hub._tasks}
        await hub.close()
        return names, hub._listener

    names, listener = asyncio.run(run())
    assert "powersync-checkpoint-layer" in names and listener is None  # no PostgreSQL LISTEN thread
    TodoList.objects.create(name="l", owner_id="u1")
    replicate_now()
    assert announced
