"""System checks for the POWERSYNC setting (ids ``powersync_django.E001`` ...; see the README)."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import rules
from .conf import get_config


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
    return messages
