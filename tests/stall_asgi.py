"""ASGI app for the stalled-reader tests: the demo project, counting the bytes each sync stream produced.

Served in a subprocess (see ``test_flow.py``). The app is wired as :func:`powersync_application` wires it (so
under daphne the flow-control middleware sits outside the counter, in front of the pure-ASGI sync endpoint);
the counter records, per ``sync/stream``
response, the body bytes handed on to the server, whether the app is waiting in ``send()``, and whether
it got as far as ``checkpoint_complete``. ``GET /__sent__`` answers them as JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from demo_project.asgi import django_application
from powersync_django.flow import FlowControlMiddleware
from powersync_django.replication import start_in_process
from powersync_django.stream_endpoint import SyncStreamRouter, sync_stream_app

STREAMS: list[dict[str, Any]] = []


async def other(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/__sent__":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(STREAMS)})
        return
    await django_application(scope, receive, send)


async def counting(scope: dict, receive: Any, send: Any) -> None:
    stat = {"bytes": 0, "in_send": False, "complete": False}
    STREAMS.append(stat)

    async def counting_send(message: dict) -> None:
        body = message.get("body", b"")
        stat["bytes"] += len(body)
        stat["complete"] = stat["complete"] or b"checkpoint_complete" in body
        stat["in_send"] = True
        try:
            await send(message)
        finally:
            stat["in_send"] = False

    await sync_stream_app(scope, receive, counting_send)


start_in_process()
application = FlowControlMiddleware(SyncStreamRouter(other, endpoint=counting))
