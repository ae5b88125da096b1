"""``manage.py powersync_schema --lang ts|dart|kotlin|swift|json [--out FILE]``: the client schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...client_schema import RENDERERS, client_tables, render_ts
from ...rules import get_rules


class Command(BaseCommand):
    help = (
        "Print (or write with --out) the PowerSync client schema of every table your bucket definitions and "
        "streams sync: column names and types exactly as the value encoding sends them, an index per "
        "foreign-key column. Regenerate it whenever the definitions or the models change."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--lang", choices=sorted(RENDERERS), default="ts",
                            help="ts (@powersync/web, node, react-native), dart, kotlin, swift or json.")
        parser.add_argument("--out", metavar="FILE", help="Write to FILE instead of stdout.")
        parser.add_argument("--package", default="@powersync/web",
                            help="TypeScript only: the package to import Schema/Table/column from.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tables = client_tables(get_rules())
        except ImproperlyConfigured as exc:
            raise CommandError(f"{exc} (run `manage.py check` for details)") from exc
        if options["lang"] == "ts":
            text = render_ts(tables, package=options["package"])
        else:
            text = RENDERERS[options["lang"]](tables)
        if options["out"]:
            Path(options["out"]).write_text(text)
            if options["verbosity"] >= 1:
                self.stderr.write(f"Wrote the {options['lang']} schema of {len(tables)} tables to {options['out']}.")
        else:
            self.stdout.write(text, ending="")
