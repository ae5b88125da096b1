"""Flow control for HTTP responses under daphne: a bounded in-flight window per response.

ASGI servers built on asyncio streams (uvicorn, hypercorn) make ``send()`` wait while the socket's write
buffer is full, so a client that stops reading stops the stream. daphne's ``send()`` never waits: it
writes into the Twisted transport, which buffers without limit, so a stalled reader of an initial sync
would make the server hold the whole sync in memory.

:class:`FlowControlMiddleware` restores the bound under daphne with Twisted's producer/consumer API:
the response registers a push producer on its Twisted request; Twisted pauses it when the transport's
buffer fills and resumes it once the buffer has drained. After each body message, while paused with more
than ``STREAM_WINDOW_BYTES`` buffered (or paused at all, if the transport does not expose its buffer), the
middleware's ``send()`` waits. The Twisted request is reached through daphne's ``send`` callable
(``functools.partial(server.handle_reply, request)``); under any other server, or if that shape changes,
the middleware passes everything through untouched.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from .conf import get_config

Scope = dict[str, Any]
Message = dict[str, Any]


def daphne_request(send: Any) -> Any | None:
    """The Twisted request behind daphne's ``send``, or None under any other server."""
    if not isinstance(send, functools.partial) or len(send.args) != 1:
        return None
    request = send.args[0]
    if not type(request).__module__.startswith("daphne.") or not hasattr(request, "registerProducer"):
        return None
    return request


def buffered_bytes(request: Any) -> int | None:
    """Bytes written to the request's Twisted transport that the kernel has not taken yet.

    None when the transport does not expose its buffer (e.g. TLS terminated by daphne itself).
    """
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is None:
        return 0
    data = getattr(transport, "dataBuffer", None)
    if data is None:
        return None
    return len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)


class DaphneWindow:
    """A Twisted push producer for one response; :meth:`wait` blocks while too much is buffered.

    Twisted calls the producer methods on the event loop's thread (daphne runs Twisted on asyncio).
    """

    def __init__(self, request: Any, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.registered = False
        self.closed = False
        self._resumed = asyncio.Event()
        self._resumed.set()

    # IPushProducer (Twisted's method names)
    def pauseProducing(self) -> None:
        self._resumed.clear()

    def resumeProducing(self) -> None:
        self._resumed.set()

    def stopProducing(self) -> None:
        self._close()

    def _close(self, result: Any = None) -> None:
        self.closed = True
        self._resumed.set()

    def register(self) -> None:
        request = self.request
        if self.registered or self.closed or request.channel is None or request.producer is not None:
            return
        request.registerProducer(self, True)
        self.registered = True
        request.notifyFinish().addBoth(self._close)  # finished or connection lost: stop waiting

    def unregister(self) -> None:
        if self.registered:
            self.registered = False
            if self.request.channel is not None and self.request.producer is self:
                self.request.unregisterProducer()

    async def wait(self) -> None:
        """Return once the buffer is below the window (unknown size: once Twisted resumes the response),
        or the connection is gone."""
        while not self.closed and not self._resumed.is_set():
            buffered = buffered_bytes(self.request)
            if buffered is not None and buffered <= self.limit:
                return
            await self._resumed.wait()


class FlowControlMiddleware:
    """ASGI middleware: bounded in-flight bytes per HTTP response under daphne; a no-op elsewhere."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        request = daphne_request(send) if scope["type"] == "http" else None
        if request is None:
            await self.app(scope, receive, send)
            return
        window = DaphneWindow(request, get_config()["STREAM_WINDOW_BYTES"])

        async def bounded_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    window.unregister()
                else:
                    window.register()
                    await send(message)
                    await window.wait()
                    return
            await send(message)

        try:
            await self.app(scope, receive, bounded_send)
        finally:
            window.unregister()
