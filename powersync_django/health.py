"""Health endpoints for load balancers and orchestrators; both answer JSON and need no authentication.

``<endpoint>/health/live``: the process serves requests (no database access).
``<endpoint>/health/ready``: checkpoints can be read — the newest one is read through the same database
threads the sync streams use, within :data:`READY_TIMEOUT` seconds; otherwise 503.
"""

from __future__ import annotations

import asyncio
import logging
import os

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from . import storage

logger = logging.getLogger(__name__)

READY_TIMEOUT = 5.0


@require_safe
async def live(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok", "pid": os.getpid()})


@require_safe
async def ready(request: HttpRequest) -> HttpResponse:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            checkpoint = await storage.run(storage.latest_checkpoint_id)
    except Exception as exc:  # includes the timeout: a busy or unreachable database is "not ready"
        logger.warning("powersync: readiness check failed: %r", exc)
        return JsonResponse({"status": "unavailable", "error": "Checkpoints cannot be read",
                             "detail": type(exc).__name__}, status=503)
    return JsonResponse({"status": "ok", "checkpoint": checkpoint})
