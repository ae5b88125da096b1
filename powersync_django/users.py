"""The user of an upload: the Django user named by the token's ``sub``, as upload hooks receive it.

With ``UPLOAD['USER_LOOKUP_FIELD']`` (default ``"pk"``) the token's ``sub`` is looked up in that field of
``get_user_model()``; hooks get that user instance (``request.user``), with the token attached:

- ``user.claims``: the verified claims (dict), ``user.token``: the :class:`~powersync_django.auth.TokenClaims`;
- ``user.user_id``: the token's ``sub`` (a string), unless the user model has a ``user_id`` attribute itself.

A ``sub`` naming no user (or of the wrong type for the field, e.g. a username for an integer key) is a 401;
an inactive user a 403. With ``USER_LOOKUP_FIELD = None`` nothing is looked up and hooks get a
:class:`TokenUser` (for projects whose user ids are not Django users).
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import DataError

from .auth import PSYNC_S2101, AuthError, TokenClaims
from .conf import get_config

logger = logging.getLogger(__name__)


class TokenUser:
    """The user of a request authenticated by a PowerSync JWT: ``user_id`` is the token's ``sub``."""

    is_authenticated = True
    is_anonymous = False
    is_active = True

    def __init__(self, token: TokenClaims) -> None:
        self.token = token
        self.user_id = token.user_id
        self.claims = token.claims

    @property
    def pk(self) -> str:
        return self.user_id

    id = pk

    def __str__(self) -> str:
        return self.user_id

    def __repr__(self) -> str:
        return f"<TokenUser {self.user_id!r}>"


def resolve_user(token: TokenClaims) -> Any:
    """The user hooks get for ``token`` (see the module docstring); raises :class:`AuthError` (401/403)."""
    field = get_config()["UPLOAD"]["USER_LOOKUP_FIELD"]
    if field is None:
        return TokenUser(token)
    model = get_user_model()
    try:
        user = model._default_manager.get(**{field: token.user_id})
    except (model.DoesNotExist, ValidationError, ValueError, TypeError, OverflowError, DataError) as exc:
        logger.info("powersync: token sub %r names no %s (%s=%r): %s", token.user_id, model._meta.label, field,
                    token.user_id, type(exc).__name__)
        raise AuthError(PSYNC_S2101, "The token's user does not exist",
                        detail=f"no {model._meta.label} with {field}={token.user_id!r}") from None
    if not getattr(user, "is_active", True):
        raise AuthError(PSYNC_S2101, "The token's user is inactive", status=403)
    user.token = token
    user.claims = token.claims
    if not hasattr(user, "user_id"):
        user.user_id = token.user_id
    return user
