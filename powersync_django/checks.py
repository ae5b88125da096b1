"""System checks for the POWERSYNC setting (ids ``powersync_django.E001`` ...; see the README)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db.utils import load_backend

from . import rules
from .conf import get_config
from .db import RECOMMENDED_SQLITE_OPTIONS


@checks.register("powersync")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        config = get_config()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="powersync_django.E000")]
    messages: list[checks.CheckMessage] = []
    _, problems = rules.parse(config)
    for p in problems:
        cls = checks.Error if p.id.startswith("E") else checks.Warning
        messages.append(cls(p.msg, hint=p.hint or None, id=f"powersync_django.{p.id}"))
    jwt = config["JWT"]
    if not (jwt["SECRET"] or jwt["PUBLIC_KEYS"] or jwt["JWKS_URL"]):
        messages.append(checks.Error("No key to verify client tokens.", id="powersync_django.E010",
                                     hint="Set POWERSYNC['JWT']['SECRET'], ['PUBLIC_KEYS'] or ['JWKS_URL']."))
    if rules.parse(config)[0] is not None:
        from . import upload

        try:
            upload._build_tables(config)
        except ImproperlyConfigured as exc:
            messages.append(checks.Error(str(exc), id="powersync_django.E012",
                                         hint="Fix the dotted path or value in POWERSYNC['UPLOAD']."))
    if config["DATETIME_FORMAT"] not in ("space", "iso"):
        messages.append(checks.Error("POWERSYNC['DATETIME_FORMAT'] must be 'space' or 'iso'.",
                                     id="powersync_django.E011"))
    for key in INTERVALS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            messages.append(checks.Error(f"POWERSYNC[{key!r}] must be a positive number of seconds, not {value!r}.",
                                         id="powersync_django.E022"))
    return messages


# Settings that are intervals: zero or less would make streams or the replicator loop without pause.
INTERVALS = ("KEEPALIVE_SECONDS", "POLL_INTERVAL", "LEASE_SECONDS")


@checks.register("powersync")
def check_sqlite(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return sqlite_warnings(settings.DATABASES)


def sqlite_warnings(databases: Mapping[str, Mapping[str, Any]]) -> list[checks.CheckMessage]:
    """W020: an SQLite database whose transactions are deferred (what powersync_django cannot change)."""
    messages: list[checks.CheckMessage] = []
    for alias, conf in databases.items():
        if not _is_sqlite(conf.get("ENGINE")):
            continue
        options = conf.get("OPTIONS") or {}
        if str(options.get("transaction_mode") or "").upper() == "IMMEDIATE":
            continue
        messages.append(checks.Warning(
            f"SQLite database {alias!r} uses deferred transactions: a transaction of your code that reads and "
            "then writes fails with 'database is locked' when another connection writes meanwhile (the "
            "replicator, an upload, another process). powersync_django's own transactions take the write "
            "lock up front, and it enables WAL and a busy timeout where OPTIONS do not set them.",
            hint=f"Set DATABASES[{alias!r}]['OPTIONS'] = {json.dumps(RECOMMENDED_SQLITE_OPTIONS)} "
                 "(with your other options, if any).",
            id="powersync_django.W020",
        ))
    return messages


def _is_sqlite(engine: Any) -> bool:
    try:
        return load_backend(engine).DatabaseWrapper.vendor == "sqlite"
    except Exception:  # an unknown backend is Django's own check to report
        return False
