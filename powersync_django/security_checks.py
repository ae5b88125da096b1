"""System checks of the edge: token verification defaults and the tables clients may write.

- ``powersync_django.E013``: public-key verification (``PUBLIC_KEYS``/``JWKS_URL``) without an ``AUDIENCE``.
- ``powersync_django.W014``: an HS256 ``SECRET`` shorter than 32 bytes.
- ``powersync_django.E015``: an ``UPLOAD['PERMISSIONS']``/``['PREPARE']`` key that names no client table.
- ``powersync_django.W016``: a client-writable table whose model has an integer auto primary key.
- ``powersync_django.E017``: ``UPLOAD['USER_LOOKUP_FIELD']`` is not a unique field of the user model.
- ``powersync_django.E018``: an invalid ``RATE_LIMITS`` value or cache alias.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import sequences
from .auth import audience_required
from .conf import get_config

MIN_SECRET_BYTES = 32


@checks.register("powersync")
def check_edge(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        config = get_config()
    except ImproperlyConfigured:
        return []  # reported as E000 by checks.check_settings
    return [*_token_checks(config["JWT"]), *_user_checks(config["UPLOAD"]), *_rate_checks(config["RATE_LIMITS"]),
            *_upload_checks(config)]


def _rate_checks(limits: dict[str, Any]) -> list[checks.CheckMessage]:
    from django.conf import settings

    from .ratelimit import parse_rate

    messages: list[checks.CheckMessage] = []
    for scope in ("WRITE_CHECKPOINT", "UPLOAD"):
        try:
            parse_rate(limits[scope])
        except ImproperlyConfigured as exc:
            messages.append(checks.Error(str(exc), id="powersync_django.E018"))
    if limits["CACHE"] not in settings.CACHES:
        messages.append(checks.Error(f"POWERSYNC['RATE_LIMITS']['CACHE'] = {limits['CACHE']!r} is not in CACHES.",
                                     id="powersync_django.E018"))
    return messages


def _user_checks(upload: dict[str, Any]) -> list[checks.CheckMessage]:
    from django.contrib.auth import get_user_model

    field = upload["USER_LOOKUP_FIELD"]
    if field is None or field == "pk":
        return []
    model = get_user_model()
    try:
        unique = model._meta.get_field(field).unique
    except Exception:  # FieldDoesNotExist, or a relation path
        unique = None
    if unique:
        return []
    return [checks.Error(
        f"POWERSYNC['UPLOAD']['USER_LOOKUP_FIELD'] = {field!r} is not a unique field of {model._meta.label}.",
        hint="Name a unique field (e.g. 'pk', 'username' or 'email' if unique), or None to give hooks a TokenUser.",
        id="powersync_django.E017")]


def _token_checks(jwt: dict[str, Any]) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    if (jwt["PUBLIC_KEYS"] or jwt["JWKS_URL"]) and not jwt["AUDIENCE"] and audience_required(jwt):
        messages.append(checks.Error(
            "POWERSYNC['JWT'] verifies tokens with PUBLIC_KEYS/JWKS_URL but sets no AUDIENCE: tokens that the same "
            "keys sign for other applications would be accepted (and such tokens are rejected until it is set).",
            hint="Set POWERSYNC['JWT']['AUDIENCE'] to the `aud` your identity provider puts in PowerSync tokens, "
                 "or set 'VERIFY_AUDIENCE': False if no other application's tokens are signed with these keys.",
            id="powersync_django.E013"))
    secret = jwt["SECRET"]
    if secret:
        size = len(secret.encode() if isinstance(secret, str) else bytes(secret))
        if size < MIN_SECRET_BYTES:
            messages.append(checks.Warning(
                f"POWERSYNC['JWT']['SECRET'] is {size} bytes long; HS256 secrets shorter than "
                f"{MIN_SECRET_BYTES} bytes can be brute-forced from one token.",
                hint="Use a random secret of at least 32 bytes, e.g. `python -c \"import secrets; "
                     "print(secrets.token_urlsafe(32))\"`.",
                id="powersync_django.W014"))
    return messages


def _upload_checks(config: dict[str, Any]) -> list[checks.CheckMessage]:
    from . import rules, upload

    if rules.parse(config)[0] is None:
        return []  # invalid definitions are reported by checks.check_settings
    try:
        tables = upload.get_tables()
    except ImproperlyConfigured:
        return []  # reported as E012
    messages: list[checks.CheckMessage] = []
    known = ", ".join(sorted(tables)) or "(none)"
    for setting, wildcard in (("PERMISSIONS", True), ("PREPARE", False)):
        for key in config["UPLOAD"][setting] or {}:
            if key in tables or (wildcard and key == "*"):
                continue
            messages.append(checks.Error(
                f"POWERSYNC['UPLOAD']['{setting}'] has an entry for {key!r}, which is no client table: "
                "it would never be used.",
                hint=f"Client tables: {known}." + (" '*' applies to every other table." if wildcard else
                                                   " PREPARE has no '*' entry."),
                id="powersync_django.E015"))
    for table in tables.values():
        if table.permission is upload.deny:
            continue
        if sequences.is_auto_key(table.model):
            target = table.model._meta.pk
            messages.append(checks.Warning(
                f"Client table {table.table!r} ({table.model._meta.label}) accepts uploads but its primary key is "
                f"an integer {type(target).__name__}: clients create rows offline with ids they choose, so two "
                "clients pick the same id, and client ids mix with the database sequence.",
                hint="Use a UUIDField(primary_key=True, default=uuid.uuid4) (or a text key) for tables clients "
                     "write. Uploads of explicit integer ids advance the sequence, so server inserts do not "
                     "collide with them.",
                id="powersync_django.W016"))
    return messages
