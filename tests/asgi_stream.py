"""Drive ``POST /sync/stream`` through Django's ASGI handler as a server would, ending with a client disconnect.

Used by the operations tests of both test projects (it imports no project's models).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from django.core.handlers.asgi import ASGIHandler

from powersync_django.auth import make_token


def endpoint_app() -> Any:
    """The HTTP side of ``powersync_application`` (flow control, the pure-ASGI sync endpoint, Django for the
    rest), without starting a replicator."""
    from powersync_django.flow import FlowControlMiddleware
    from powersync_django.stream_endpoint import SyncStreamRouter

    return FlowControlMiddleware(SyncStreamRouter(ASGIHandler()))


async def http_stream(body: bytes, until: bytes, during: Callable[[], Any] = lambda: None, user: str = "u1",
                      seconds: float = 10, app: Any = None) -> bytes:
    """Read the stream until ``until`` appears, call ``during()``, then disconnect; return the bytes received.

    ``app``: the ASGI app (default: Django's ASGIHandler, i.e. the view)."""
    inbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "http.request", "body": body, "more_body": False})
    received: list[bytes] = []
    seen = asyncio.Event()

    async def receive() -> dict:
        return await inbox.get()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            received.append(message.get("body", b""))
            if until in b"".join(received):
                seen.set()

    headers = [(b"content-type", b"application/json"), (b"authorization", f"Token {make_token(user)}".encode()),
               (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/sync/stream", "raw_path": b"/sync/stream", "query_string": b"", "root_path": "",
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "headers": headers,
    }
    task = asyncio.create_task((app or ASGIHandler())(scope, receive, send))
    async with asyncio.timeout(seconds):
        await seen.wait()
        during()
        await inbox.put({"type": "http.disconnect"})
        await task
    return b"".join(received)


class AsgiResponse:
    """What an ASGI app answered: status, headers (case-insensitive ``response[name]``) and the body read."""

    def __init__(self) -> None:
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.content = b""
        self.started = asyncio.Event()

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


class AsgiRequest:
    """One HTTP request to an ASGI app, held open until :meth:`disconnect` (or until the app answers)."""

    def __init__(self, app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
        self.response = AsgiResponse()
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._inbox.put_nowait({"type": "http.request", "body": body, "more_body": False})
        self._chunk = asyncio.Event()
        pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if body:
            pairs.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "headers": pairs,
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict:
        return await self._inbox.get()

    async def _send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.response.status_code = message["status"]
            self.response.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            self.response.started.set()
        elif message["type"] == "http.response.body":
            self.response.content += message.get("body", b"")
            self._chunk.set()

    async def read_until(self, done: Callable[[bytes], bool], seconds: float = 10) -> bytes:
        """Wait until ``done(body so far)`` or the response ended; return the body so far."""
        async with asyncio.timeout(seconds):
            await self.response.started.wait()
            while not done(self.response.content) and not self.task.done():
                self._chunk.clear()
                waiter = asyncio.create_task(self._chunk.wait())
                await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
        return self.response.content

    async def disconnect(self, seconds: float = 10) -> None:
        """The client goes away; wait for the app to finish."""
        await self._inbox.put({"type": "http.disconnect"})
        async with asyncio.timeout(seconds):
            await self.task
