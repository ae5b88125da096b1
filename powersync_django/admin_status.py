"""The PowerSync status page of the Django admin (staff with view permission on the replication state).

:class:`StatusPageMixin` makes a ModelAdmin's changelist this page; ``admin.py`` uses it for
``ReplicationState``, so the page is at ``admin/powersync_django/replicationstate/``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import router
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse

from . import heartbeat, metrics
from .status import compaction_candidates, dead_letter_count, format_status, get_status, largest_buckets


def status_context(using: str) -> dict[str, Any]:
    """Everything the status page shows, read from database ``using`` and this process."""
    status = get_status(using)
    candidates_total, candidates = compaction_candidates(using)
    dead_letters = dead_letter_count(using)
    dead_letters_url = None
    if dead_letters is not None:
        try:
            dead_letters_url = reverse("admin:powersync_django_deadletter_changelist")
        except NoReverseMatch:
            pass
    return {
        "status": status,
        "status_rows": [(name, text.strip()) for name, text in (line.split(":", 1) for line in format_status(status))],
        "largest_buckets": largest_buckets(using),
        "candidates_total": candidates_total,
        "candidates": candidates,
        "dead_letters": dead_letters,
        "dead_letters_url": dead_letters_url,
        "this_process": {"host": socket.gethostname(), "pid": os.getpid(), "streams": metrics.open_streams()},
        "processes": metrics.streams_by_process(),
        "heartbeats": _with_age(heartbeat.processes()),
    }


def _with_age(beats: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    now = time.time()
    return None if beats is None else [{**b, "age": max(0.0, now - b["at"])} for b in beats]


class StatusPageMixin:
    """ModelAdmin mixin: the changelist shows the PowerSync status page instead of a list of rows."""

    status_template = "admin/powersync_django/status.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        if not self.has_view_or_change_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        opts = self.model._meta  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": "PowerSync status",
            "opts": opts,
            "app_label": opts.app_label,
            **status_context(router.db_for_read(self.model)),  # type: ignore[attr-defined]
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.status_template, context)
