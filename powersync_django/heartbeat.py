"""Per-process heartbeats in a shared Django cache: which server processes serve how many sync streams.

Off unless ``POWERSYNC['HEARTBEAT']['CACHE']`` names a cache that every process shares (Redis, Memcached, the
database cache; not the per-process default ``LocMemCache``). Then the first sync stream of an event loop
starts a task that writes ``{host, pid, streams, at}`` every ``SECONDS`` seconds under a key of its own
(expiring after three periods) and lists that key in a small index; the admin status page reads them back.
One cache write per process per period, none per stream. A process that stops beating drops out once its
key expires; the index is rewritten read-modify-write, so a beat lost in a race returns at the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from .conf import get_config

logger = logging.getLogger(__name__)

INDEX_KEY = "powersync:heartbeats"
_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def _settings() -> tuple[Any, float] | None:
    config = get_config()["HEARTBEAT"]
    if not config["CACHE"]:
        return None
    from django.core.cache import caches

    return caches[config["CACHE"]], float(config["SECONDS"])


def process_key() -> str:
    return f"powersync:heartbeat:{socket.gethostname()}:{os.getpid()}"


def beat() -> None:
    """Write this process's heartbeat now (blocking: a cache round trip or two)."""
    configured = _settings()
    if configured is None:
        return
    from . import metrics

    cache, seconds = configured
    now = time.time()
    ttl = 3 * seconds
    key = process_key()
    cache.set(key, {"host": socket.gethostname(), "pid": os.getpid(), "streams": metrics.open_streams(), "at": now},
              timeout=ttl)
    index = cache.get(INDEX_KEY) or {}
    index = {k: at for k, at in index.items() if at > now - ttl}
    index[key] = now
    cache.set(INDEX_KEY, index, timeout=None)


def _beat_and_close() -> None:
    from django.db import connections

    try:
        beat()
    finally:
        connections.close_all()  # this worker thread's connections (a database cache)


def processes() -> list[dict[str, Any]] | None:
    """Live heartbeats ({host, pid, streams, at}), newest process key first; None when heartbeats are off."""
    configured = _settings()
    if configured is None:
        return None
    cache, _ = configured
    keys = sorted(cache.get(INDEX_KEY) or {})
    beats = cache.get_many(keys)
    return [beats[k] for k in keys if k in beats]


def ensure_started() -> None:
    """Start the heartbeat task of the running event loop (called when a stream opens; cheap afterwards)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = _tasks.get(loop)
    if (task is not None and not task.done()) or _settings() is None:
        return
    for old in [k for k, t in _tasks.items() if t.done()]:
        del _tasks[old]
    _tasks[loop] = loop.create_task(_run(), name="powersync-heartbeat")


async def _run() -> None:
    while True:
        configured = _settings()
        if configured is None:
            return
        try:
            await asyncio.to_thread(_beat_and_close)
        except Exception:
            logger.warning("powersync: writing the process heartbeat failed", exc_info=True)
        await asyncio.sleep(configured[1])
