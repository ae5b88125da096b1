"""Drive ``POST /sync/stream`` through Django's ASGI handler as a server would, ending with a client disconnect.

Used by the operations tests of both test projects (it imports no project's models).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from django.core.handlers.asgi import ASGIHandler

from powersync_django.auth import make_token


async def http_stream(body: bytes, until: bytes, during: Callable[[], Any] = lambda: None, user: str = "u1",
                      seconds: float = 10) -> bytes:
    """Read the stream until ``until`` appears, call ``during()``, then disconnect; return the bytes received."""
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
    task = asyncio.create_task(ASGIHandler()(scope, receive, send))
    async with asyncio.timeout(seconds):
        await seen.wait()
        during()
        await inbox.put({"type": "http.disconnect"})
        await task
    return b"".join(received)
