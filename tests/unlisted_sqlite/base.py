"""SQLite backend whose connections open even though the running Django test case does not list the alias.

Django's test cases refuse connections to aliases outside their ``databases``; an alias added at run time for
one test (a WAL database file) cannot be listed there. Everything else is the stock SQLite backend.
"""

from __future__ import annotations

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    def ensure_connection(self) -> None:
        if self.connection is None:
            with self.wrap_database_errors:
                self.connect()
