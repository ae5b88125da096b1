"""``<endpoint>/metrics``: Prometheus metrics for the people who run the service, behind a small access check.

Allowed when ``POWERSYNC['METRICS']['TOKEN']`` is set and the request sends ``Authorization: Bearer <token>``,
or, with ``ALLOW_INTERNAL_IPS`` (the default), when it comes straight from a loopback address or one of
``settings.INTERNAL_IPS`` (a request with proxy headers such as ``X-Forwarded-For`` is not "straight").
Everything else gets a 403. Without ``prometheus_client`` the endpoint answers 501 with an install hint.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from . import metrics
from .conf import get_config

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def _error(status: int, code: str, description: str, **more: Any) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "status": status, "description": description, **more}},
                        status=status)


def is_internal(address: str) -> bool:
    """Whether ``address`` is a loopback address or listed (address or network) in ``settings.INTERNAL_IPS``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    for entry in getattr(settings, "INTERNAL_IPS", ()) or ():
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def allowed(request: HttpRequest) -> bool:
    """The access check of ``<endpoint>/metrics`` (see the module docstring)."""
    config = get_config()["METRICS"]
    token = config["TOKEN"]
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(),
                                                                        str(token).encode()):
        return True
    if config["ALLOW_INTERNAL_IPS"] and not any(h in request.headers for h in PROXY_HEADERS):
        return is_internal(request.META.get("REMOTE_ADDR", ""))
    return False


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET <endpoint>/metrics``: OpenMetrics or Prometheus text, as the scraper's Accept header asks."""
    if not allowed(request):
        return _error(403, "FORBIDDEN", "Metrics are available from internal addresses or with the metrics token.")
    if not metrics.AVAILABLE:
        return _error(501, "METRICS_UNAVAILABLE", "prometheus_client is not installed.",
                      hint="pip install 'powersync-django[metrics]'")
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
