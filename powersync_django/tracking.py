"""Per-stream accounting: what one sync stream sent, and one INFO log line when it ends.

A transport wraps the session's lines with :meth:`StreamTracker.lines`, reports each encoded line's size
with :meth:`StreamTracker.sent` and calls :meth:`StreamTracker.close` when the stream is over. The log line
(logger ``powersync_django.streams``) carries the same facts as ``extra`` fields for structured formatters:
``user_id``, ``client_id``, ``transport``, ``buckets``, ``operations_synced``, ``data_synced_bytes``,
``duration_ms`` and ``close_reason``. Counting is O(1) per line (ops are not looked at one by one).

Close reasons: ``token_expired`` (the stream sent ``token_expires_in: 0``), ``definitions_changed`` (the
session ended itself; the bucket definitions changed — a session may name another in ``end_reason``),
``client_closed`` (the client went away or cancelled), ``error`` (the stream failed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from . import metrics

logger = logging.getLogger("powersync_django.streams")

TOKEN_EXPIRED = "token_expired"
DEFINITIONS_CHANGED = "definitions_changed"
CLIENT_CLOSED = "client_closed"
ERROR = "error"


class StreamTracker:
    """Counts of one stream; counted as open from construction until :meth:`close`."""

    def __init__(self, session: Any, transport: str) -> None:
        self.session = session
        self.transport = transport
        self.started = time.monotonic()
        self.ops = 0
        self.bytes = 0
        self.reason: str | None = None
        self.closed = False
        self._pending_ops = 0
        metrics.stream_opened(transport)

    async def lines(self, source: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """``source``'s lines, unchanged; counts their ops and notes why the stream ended."""
        try:
            async for line in source:
                data = line.get("data")
                if data is not None:
                    self._pending_ops = len(data.get("data") or ())
                elif line.get("token_expires_in") == 0:
                    self.reason = TOKEN_EXPIRED
                yield line
            self.reason = self.reason or getattr(self.session, "end_reason", None) or DEFINITIONS_CHANGED
        except (GeneratorExit, asyncio.CancelledError):
            self.reason = self.reason or CLIENT_CLOSED
            raise
        except Exception:
            self.reason = ERROR
            raise

    def sent(self, nbytes: int) -> None:
        """The last line was sent as ``nbytes`` bytes."""
        self.bytes += nbytes
        self.ops += self._pending_ops
        metrics.line_sent(self.transport, self._pending_ops, nbytes)
        self._pending_ops = 0

    def close(self, reason: str | None = None) -> None:
        """End the stream (once): metrics and the log line."""
        if self.closed:
            return
        self.closed = True
        reason = reason or self.reason or CLIENT_CLOSED
        metrics.stream_closed(self.transport, reason)
        fields = self.summary(reason)
        logger.info(
            "powersync: sync stream ended: user=%s client=%s transport=%s buckets=%d ops=%d bytes=%d "
            "duration=%.3fs reason=%s",
            fields["user_id"], fields["client_id"] or "-", self.transport, fields["buckets"], self.ops, self.bytes,
            fields["duration_ms"] / 1000, reason,
            extra=fields,
        )

    def summary(self, reason: str) -> dict[str, Any]:
        claims = getattr(self.session, "claims", None)
        request = getattr(self.session, "request", None)
        return {
            "user_id": getattr(claims, "user_id", None),
            "client_id": getattr(request, "client_id", None),
            "transport": self.transport,
            "buckets": len(getattr(self.session, "entitled", ()) or ()),
            "operations_synced": self.ops,
            "data_synced_bytes": self.bytes,
            "duration_ms": round((time.monotonic() - self.started) * 1000),
            "close_reason": reason,
        }
