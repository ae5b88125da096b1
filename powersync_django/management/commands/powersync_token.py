"""``manage.py powersync_token <user_id> [--ttl SECONDS] [--claim key=value ...]``: print a client token."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...auth import make_token


def parse_claim(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is JSON when it parses as JSON, else the plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CommandError(f"--claim expects key=value, got {text!r}.")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


class Command(BaseCommand):
    help = (
        "Print an HS256 PowerSync token for a user, signed with POWERSYNC['JWT']['SECRET'] "
        "(the token is the last line of stdout)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user_id", help="The token subject (`sub`), i.e. the user id.")
        parser.add_argument(
            "--ttl",
            type=int,
            default=None,
            help="Lifetime in seconds (default: POWERSYNC['JWT']['DEFAULT_TTL']).",
        )
        parser.add_argument(
            "--claim",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Extra claim; the value is parsed as JSON when valid, e.g. --claim 'parameters={\"team\":1}'.",
        )

    def _warn_unknown_user(self, user_id: str) -> None:
        """Uploads resolve the token's sub to a Django user: say so when this one names none (e.g. a username)."""
        from ...auth import TokenClaims
        from ...conf import get_config
        from ...users import AuthError, resolve_user

        field = get_config()["UPLOAD"]["USER_LOOKUP_FIELD"]
        if field is None:
            return
        try:
            resolve_user(TokenClaims(user_id=user_id, expires_at=0, claims={"sub": user_id}))
        except AuthError as exc:
            self.stderr.write(self.style.WARNING(
                f"Warning: {exc.detail or exc.description}. Uploads with this token are rejected (401): the "
                f"token's sub must be the user's {field} (POWERSYNC['UPLOAD']['USER_LOOKUP_FIELD'])."))
        except Exception:  # no database (yet), or not allowed here: the check is advisory only
            pass

    def handle(self, *args: Any, **options: Any) -> None:
        claims = dict(parse_claim(text) for text in options["claim"])
        try:
            token = make_token(options["user_id"], ttl=options["ttl"], claims=claims)
        except (ImproperlyConfigured, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self._warn_unknown_user(options["user_id"])
            self.stderr.write(f"PowerSync token for user {options['user_id']!r}:")
        self.stdout.write(token)
