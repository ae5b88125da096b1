"""ASGI wiring: the Django HTTP app plus the sync WebSocket route, and the in-process replicator."""

from __future__ import annotations

from typing import Any

from .flow import FlowControlMiddleware
from .replication import start_in_process


def powersync_application(django_app: Any, prefix: str = "") -> Any:
    """Wrap Django's ASGI app: serve WebSocket sync at ``<prefix>/sync/stream`` and start the replicator.

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
    return ProtocolTypeRouter({"http": FlowControlMiddleware(django_app), "websocket": URLRouter(routes)})
