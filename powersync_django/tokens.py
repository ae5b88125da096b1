"""Tokens for logged-in users: the view a web app's ``fetchCredentials`` calls.

``GET <endpoint>/api/token`` with the Django session of a logged-in user answers
``{"token": "<jwt>", "expires_at": <unix seconds>, "user_id": "<sub>"}``, signed like
:func:`powersync_django.auth.make_token` (the public API for minting tokens yourself). The subject is the
user's primary key as text; extra claims and the lifetime come from ``POWERSYNC["TOKEN_VIEW"]``.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .auth import make_token
from .conf import get_config, import_setting


def token_subject(user: Any) -> str:
    """The ``sub`` a token for this Django user carries: its primary key as text."""
    return str(user.pk)


def _extra_claims(user: Any) -> dict[str, Any]:
    path = get_config()["TOKEN_VIEW"]["CLAIMS"]
    if not path:
        return {}
    hook = import_setting(path, "POWERSYNC['TOKEN_VIEW']['CLAIMS']") if isinstance(path, str) else path
    claims = hook(user)
    if not isinstance(claims, dict):
        raise ImproperlyConfigured("POWERSYNC['TOKEN_VIEW']['CLAIMS'] must return a dict of claims.")
    return claims


def _error(status: int, code: str, description: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "status": status, "description": description,
                                   "name": "AuthorizationError" if status == 401 else "ServiceError"}},
                        status=status)


@never_cache
@require_GET
def token(request: HttpRequest) -> JsonResponse:
    """A PowerSync token for the logged-in user (401 JSON when nobody is logged in)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return _error(401, "PSYNC_S2106", "Log in first: this endpoint issues tokens to logged-in users.")
    if not get_config()["TOKEN_VIEW"]["ENABLED"]:
        return _error(404, "PSYNC_S2002", "The token view is disabled (POWERSYNC['TOKEN_VIEW']['ENABLED']).")
    ttl = get_config()["TOKEN_VIEW"]["TTL"]
    subject = token_subject(user)
    value = make_token(subject, ttl=ttl, claims=_extra_claims(user))
    ttl = ttl or get_config()["JWT"]["DEFAULT_TTL"]
    return JsonResponse({"token": value, "expires_at": int(time.time()) + ttl, "user_id": subject})
