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

    def handle(self, *args: Any, **options: Any) -> None:
        claims = dict(parse_claim(text) for text in options["claim"])
        try:
            token = make_token(options["user_id"], ttl=options["ttl"], claims=claims)
        except (ImproperlyConfigured, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stderr.write(f"PowerSync token for user {options['user_id']!r}:")
        self.stdout.write(token)
