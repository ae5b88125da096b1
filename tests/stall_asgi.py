"""ASGI app for the stalled-reader tests: the demo project, counting the bytes each sync stream produced.

Served in a subprocess (see ``test_flow.py``). Django's app is wrapped as in ``demo_project.asgi`` (so under
daphne the flow-control middleware sits outside the counter); the counter records, per ``sync/stream``
response, the body bytes handed on to the server, whether the app is waiting in ``send()``, and whether
it got as far as ``checkpoint_complete``. ``GET /__sent__`` answers them as JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from demo_project.asgi import django_application
from powersync_django.routing import powersync_application

STREAMS: list[dict[str, Any]] = []


async def counting(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http" or not scope["path"].endswith("/sync/stream"):
        if scope["type"] == "http" and scope["path"] == "/__sent__":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": orjson.dumps(STREAMS)})
            return
        await django_application(scope, receive, send)
        return
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

    await django_application(scope, receive, counting_send)


application = powersync_application(counting)
