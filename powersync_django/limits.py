"""Caps on concurrent sync streams: per process (``MAX_CONCURRENT_STREAMS``, protocol.md §3.5) and per user
(``MAX_STREAMS_PER_USER``).

Every sync stream (HTTP or WebSocket) takes a slot before it does any work and gives it back when it ends;
with no slot free the request is refused with :class:`TooManyStreams` (HTTP 429 + ``Retry-After``,
``PSYNC_S2304``), so an overloaded process degrades by refusing, never by falling over. The per-user cap
keeps one account (a leaked token, a buggy or hostile client opening streams in a loop) from taking every
slot of the process and locking all other users out.
"""

from __future__ import annotations

import threading

from .conf import get_config
from .protocol import ProtocolError

TOO_MANY_STREAMS = "PSYNC_S2304"

_active = 0
_per_user: dict[str, int] = {}
_lock = threading.Lock()  # one process may run several event loops (threads)


class TooManyStreams(ProtocolError):
    """The process (or this user) has its maximum of streams open already: 429 with ``Retry-After``."""

    def __init__(self, limit: int, retry_after: int, *, per_user: bool = False) -> None:
        what = "for this user " if per_user else ""
        super().__init__(f"Maximum active concurrent connections limit {what}has been reached ({limit})",
                         code=TOO_MANY_STREAMS, status=429)
        self.retry_after = retry_after


class StreamSlot:
    """One taken slot; :meth:`release` gives it back (once)."""

    def __init__(self, user_id: str | None = None) -> None:
        self.released = False
        self.user_id = user_id

    def release(self) -> None:
        global _active
        with _lock:
            if not self.released:
                self.released = True
                _active -= 1
                if self.user_id is not None:
                    left = _per_user.pop(self.user_id) - 1
                    if left:
                        _per_user[self.user_id] = left


def acquire(user_id: str | None = None) -> StreamSlot:
    """Take a stream slot (counted for ``user_id`` too, if given) or raise :class:`TooManyStreams`."""
    global _active
    config = get_config()
    limit = config["MAX_CONCURRENT_STREAMS"]
    user_limit = config["MAX_STREAMS_PER_USER"]
    with _lock:
        if limit is not None and _active >= limit:
            raise TooManyStreams(limit, config["RETRY_AFTER_SECONDS"])
        if user_id is not None and user_limit is not None and _per_user.get(user_id, 0) >= user_limit:
            raise TooManyStreams(user_limit, config["RETRY_AFTER_SECONDS"], per_user=True)
        _active += 1
        if user_id is not None:
            _per_user[user_id] = _per_user.get(user_id, 0) + 1
    return StreamSlot(user_id)


def active(user_id: str | None = None) -> int:
    """Streams holding a slot in this process (of ``user_id`` only, if given)."""
    return _active if user_id is None else _per_user.get(user_id, 0)
