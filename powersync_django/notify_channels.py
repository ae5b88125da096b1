"""Checkpoint announcements over a Channels layer (``POWERSYNC["NOTIFY"] = "channels"``), e.g. ``channels_redis``.

For fleets whose processes should not each hold a PostgreSQL ``LISTEN`` connection, or whose database has no
``LISTEN`` (a pooler in transaction mode): the process that commits a replication batch announces the
checkpoint to the layer group :data:`GROUP`; every server process's hub listens on that group instead of
PostgreSQL and re-reads the checkpoints it has not seen (a missed announcement costs nothing but latency: the
hub also re-reads every few seconds, and after a reconnect). Announcements carry only the checkpoint id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .conf import get_config

logger = logging.getLogger(__name__)

GROUP = "powersync.checkpoint"
MESSAGE_TYPE = "powersync.checkpoint"
RECONNECT_SECONDS = 1.0
# Group membership expires in the layer (channels_redis: group_expiry, a day); re-join well before.
REJOIN_SECONDS = 600.0


def enabled() -> bool:
    """Whether ``POWERSYNC["NOTIFY"]`` is ``"channels"`` (None: PostgreSQL LISTEN / SQLite polling)."""
    notify = get_config()["NOTIFY"]
    if notify not in (None, "channels"):
        raise ImproperlyConfigured(f"POWERSYNC['NOTIFY'] must be None or 'channels', not {notify!r}")
    return notify == "channels"


def _layer() -> Any:
    from channels.layers import get_channel_layer

    layer = get_channel_layer(get_config()["NOTIFY_CHANNEL_LAYER"])
    if layer is None:
        raise RuntimeError("POWERSYNC['NOTIFY'] is 'channels' but settings.CHANNEL_LAYERS has no such layer")
    return layer


# --- announcing (the replicating process, any thread) ------------------------------------------------

_publisher_loop: asyncio.AbstractEventLoop | None = None
_publisher_lock = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The event loop of this process's announcer thread (one per process; the layer's connections live in it)."""
    global _publisher_loop
    with _publisher_lock:
        if _publisher_loop is None or _publisher_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="powersync-checkpoint-announce", daemon=True).start()
            _publisher_loop = loop
        return _publisher_loop


async def _send(checkpoint_id: int) -> None:
    try:
        await _layer().group_send(GROUP, {"type": MESSAGE_TYPE, "id": checkpoint_id})
    except Exception:
        logger.exception("powersync: announcing checkpoint %s on the channel layer failed", checkpoint_id)


def announce(checkpoint_id: int) -> None:
    """Announce a committed checkpoint to every process (returns at once; sent in order)."""
    asyncio.run_coroutine_threadsafe(_send(checkpoint_id), _loop())


# --- listening (each server process's hub, on its event loop) ----------------------------------------


async def listen(poke: Callable[[], None], closed: Callable[[], bool]) -> None:
    """Call ``poke()`` for every announcement, and once after each (re)join so the hub catches up on what it
    may have missed. Reconnects after any error of the layer until cancelled or ``closed()``."""
    loop = asyncio.get_running_loop()
    while not closed():
        layer = channel = None
        try:
            layer = _layer()
            channel = await layer.new_channel("powersync.hub.")
            await layer.group_add(GROUP, channel)
            rejoin_at = loop.time() + REJOIN_SECONDS
            poke()  # anything committed while not listening
            while not closed():
                try:
                    async with asyncio.timeout(max(0.0, rejoin_at - loop.time())):
                        message = await layer.receive(channel)
                except TimeoutError:
                    await layer.group_add(GROUP, channel)
                    rejoin_at = loop.time() + REJOIN_SECONDS
                    continue
                if message.get("type") == MESSAGE_TYPE:
                    poke()
        except asyncio.CancelledError:
            if layer is not None and channel is not None:
                try:
                    await asyncio.shield(layer.group_discard(GROUP, channel))
                except Exception:  # noqa: S110 - best effort on shutdown
                    pass
            raise
        except Exception:
            logger.exception("powersync: checkpoint listener (channel layer) failed; reconnecting")
            await asyncio.sleep(RECONNECT_SECONDS)
