"""``manage.py demo_seed (--owner SUB | --user NAME [--password PW]) [--lists N] [--todos-per-list M] [--if-empty]
[--replicate]``."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from powersync_django.replication import replicate_now
from powersync_django.tokens import token_subject

from ...models import TodoList
from ...seed import seed


class Command(BaseCommand):
    help = (
        "Create demo todo lists for a user (the token's `sub`), written through the capture helpers so they "
        "sync: the replicator (in the server process or `powersync_replicate`) picks them up; --replicate "
        "does it now."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--owner", help="Owner user id (the token subject), any string.")
        who.add_argument("--user", help="A Django user (created if missing) for the web app: the lists are owned by "
                                        "the token view's subject, its primary key as text.")
        parser.add_argument("--password", help="With --user: the password of a user this command creates.")
        parser.add_argument("--lists", type=int, default=3, help="Number of lists (default 3).")
        parser.add_argument("--todos-per-list", type=int, default=5, help="Todos per list (default 5).")
        parser.add_argument("--if-empty", action="store_true", help="Do nothing if the owner already has lists.")
        parser.add_argument("--replicate", action="store_true", help="Replicate the new rows before exiting.")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: default).")

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        lists, per_list = options["lists"], options["todos_per_list"]
        owner = self._user_subject(options) if options["user"] is not None else options["owner"]
        if not owner:
            raise CommandError("--owner must not be empty.")
        if lists < 0 or per_list < 0:
            raise CommandError("--lists and --todos-per-list must not be negative.")
        if options["if_empty"] and TodoList.objects.using(using).filter(owner_id=owner).exists():
            self.stdout.write(f"{owner!r} already has lists; nothing created.")
            return
        started = time.monotonic()
        last = [started]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= 2 and options["verbosity"] >= 1:
                last[0] = time.monotonic()
                self.stdout.write(f"  {done}/{total} todos ({done / (last[0] - started):.0f}/s)")

        made, todos = seed(owner, lists, per_list, using=using, progress=progress)
        self.stdout.write(f"Created {len(made)} lists and {todos} todos for {owner!r} "
                          f"in {time.monotonic() - started:.1f} s.")
        if options["replicate"]:
            n = replicate_now(using)
            self.stdout.write(f"Replicated {n} outbox entries.")

    def _user_subject(self, options: dict[str, Any]) -> str:
        """The token subject of ``--user``, creating that user (with ``--password``) when missing."""
        username, password, using = options["user"], options["password"], options["database"]
        if not username:
            raise CommandError("--user must not be empty.")
        users = get_user_model()._default_manager.db_manager(using)
        user = users.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            if not password:
                raise CommandError(f"User {username!r} does not exist: give --password to create it.")
            user = users.create_user(username, password=password)
            self.stdout.write(f"Created user {username!r}.")
        return token_subject(user)
