"""``POST <prefix>/sync/stream`` as a pure ASGI app: an idle stream holds no thread and no database connection.

Django's ASGIHandler keeps each request's thread-sensitive context (and the executor thread its synchronous
middleware ran on) alive until a streaming response ends, so every open stream behind it pins an OS thread.
:func:`~powersync_django.routing.powersync_application` routes the sync stream path here instead; the request
is handled on the event loop only (database reads go through the shared storage pools). Parsing, session
preparation, encoding, gzip, CORS and errors are :mod:`~powersync_django.views`' own functions, so both
entry points answer alike.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import orjson

from . import metrics, views
from .auth import AuthError
from .conf import get_config
from .protocol import ProtocolError

logger = logging.getLogger(__name__)

ENDPOINT = "sync-stream"  # the metrics label, the name of the Django URL


class Disconnected(Exception):
    """The client went away before the request body was read."""


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """Request headers by lower-case name (the last of repeated headers wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


async def _read_body(receive: Any, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        body += message.get("body", b"")
        if len(body) > limit:
            raise ProtocolError("Request body too large", status=413)
        if not message.get("more_body", False):
            return bytes(body)


async def _start(send: Any, status: int, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]})


async def _answer(send: Any, status: int, headers: dict[str, str], body: dict[str, Any] | None = None) -> None:
    """A complete (JSON or empty) answer."""
    content = orjson.dumps(body) if body is not None else b""
    if body is not None:
        headers = {**headers, "Content-Type": "application/json"}
        metrics.http_error(ENDPOINT, status, metrics.error_code_of(body))
    await _start(send, status, {**headers, "Content-Length": str(len(content))})
    await send({"type": "http.response.body", "body": content})


def stream_path(prefix: str) -> re.Pattern[str]:
    """The paths this endpoint serves under ``prefix`` (as the Django URL and WebSocket route: an optional
    trailing slash)."""
    prefix = prefix.strip("/")
    return re.compile(rf"^/{re.escape(prefix) + '/' if prefix else ''}sync/stream/?$")


class SyncStreamRouter:
    """ASGI app: ``<prefix>/sync/stream`` to ``endpoint`` (default :func:`sync_stream_app`), everything else
    to ``app`` (Django)."""

    def __init__(self, app: Any, prefix: str = "", endpoint: Any = None) -> None:
        self.app = app
        self.path = stream_path(prefix)
        self.endpoint = endpoint or sync_stream_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path, root = scope.get("path", ""), scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if self.path.match(path):
                await self.endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def sync_stream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app of ``POST /sync/stream`` (with its CORS preflight)."""
    headers = _headers(scope)
    cors = views.cors_headers(headers.get("origin"))
    method = scope["method"]
    if method == "OPTIONS":
        await _answer(send, 204, {**views.preflight_headers("POST"), **cors})
        return
    if method != "POST":
        await _answer(send, 405, cors, views.METHOD_NOT_ALLOWED)
        return
    try:
        claims = await views.authenticate_header(headers.get("authorization"))
        views.check_content_length(headers.get("content-length"))
        body = await _read_body(receive, get_config()["MAX_REQUEST_BYTES"])
        prepared = await views.prepare_stream(claims, body, headers.get("accept", ""),
                                              headers.get("accept-encoding", ""))
    except AuthError as exc:
        await _answer(send, exc.status, cors, exc.as_json())
        return
    except ProtocolError as exc:
        await _answer(send, exc.status, {**cors, **views.error_headers(exc)}, exc.as_json())
        return
    except Disconnected:
        return
    except Exception as exc:
        body, status, extra = views.server_error(exc, f"{method} {scope.get('path')}")
        await _answer(send, status, {**cors, **extra}, body)
        return
    await _stream(prepared, {**prepared.headers, **cors}, receive, send)


async def _stream(prepared: views.PreparedStream, headers: dict[str, str], receive: Any, send: Any) -> None:
    """Send the body until it ends or the client disconnects (then the session is cancelled and closed)."""
    chunks = prepared.chunks()

    async def write() -> None:
        await _start(send, 200, headers)
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    writer = asyncio.create_task(write())
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, watcher):
            task.cancel()
        results = await asyncio.gather(writer, watcher, return_exceptions=True)
        await chunks.aclose()
        prepared.slot.release()
    for result in results:
        if isinstance(result, Exception):  # e.g. the server failed to write to a closed connection
            logger.info("powersync: sync stream ended by %r", result)
