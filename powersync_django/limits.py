"""The per-process cap on concurrent sync streams (``MAX_CONCURRENT_STREAMS``, protocol.md §3.5).

Every sync stream (HTTP or WebSocket) takes a slot before it does any work and gives it back when it ends;
with no slot free the request is refused with :class:`TooManyStreams` (HTTP 429 + ``Retry-After``,
``PSYNC_S2304``), so an overloaded process degrades by refusing, never by falling over.
"""

from __future__ import annotations

import threading

from .conf import get_config
from .protocol import ProtocolError

TOO_MANY_STREAMS = "PSYNC_S2304"

_active = 0
_lock = threading.Lock()  # one process may run several event loops (threads)


class TooManyStreams(ProtocolError):
    """The process serves ``MAX_CONCURRENT_STREAMS`` streams already: 429 with ``Retry-After``."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"Maximum active concurrent connections limit has been reached ({limit})",
                         code=TOO_MANY_STREAMS, status=429)
        self.retry_after = retry_after


class StreamSlot:
    """One taken slot; :meth:`release` gives it back (once)."""

    def __init__(self) -> None:
        self.released = False

    def release(self) -> None:
        global _active
        with _lock:
            if not self.released:
                self.released = True
                _active -= 1


def acquire() -> StreamSlot:
    """Take a stream slot or raise :class:`TooManyStreams`."""
    global _active
    config = get_config()
    limit = config["MAX_CONCURRENT_STREAMS"]
    with _lock:
        if limit is not None and _active >= limit:
            raise TooManyStreams(limit, config["RETRY_AFTER_SECONDS"])
        _active += 1
    return StreamSlot()


def active() -> int:
    """Streams holding a slot in this process."""
    return _active
