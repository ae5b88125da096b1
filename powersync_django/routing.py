"""ASGI wiring: the Django HTTP app plus the sync WebSocket route, and the in-process replicator."""

from __future__ import annotations

from typing import Any

from .flow import FlowControlMiddleware
from .replication import start_in_process
from .stream_endpoint import SyncStreamRouter


def powersync_application(django_app: Any, prefix: str = "") -> Any:
    """Wrap Django's ASGI app: serve sync at ``<prefix>/sync/stream`` (HTTP and WebSocket), start the replicator.

    HTTP sync streams are served by the pure-ASGI :mod:`~powersync_django.stream_endpoint` (an idle stream
    holds no thread), not by Django's view; the rest of the HTTP paths go to ``django_app``.

    The background replicator thread starts here (unless ``REPLICATOR_IN_PROCESS`` is False), so a plain
    ``manage.py runserver`` replicates changes with no other process. HTTP responses get a bounded in-flight
    window under daphne (:class:`~powersync_django.flow.FlowControlMiddleware`).
    """
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import re_path

    routes = []
    try:
        from .consumers import SyncConsumer

        routes.append(re_path(rf"^{prefix.strip('/') + '/' if prefix.strip('/') else ''}sync/stream/?$",
                              SyncConsumer.as_asgi()))
    except ImportError:  # pragma: no cover - consumer not available
        pass
    start_in_process()
    http = FlowControlMiddleware(SyncStreamRouter(django_app, prefix))
    return ProtocolTypeRouter({"http": http, "websocket": URLRouter(routes)})
