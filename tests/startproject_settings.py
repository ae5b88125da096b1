"""The demo project with ``DATABASES`` exactly as ``django-admin startproject`` writes them.

SQLite with no ``OPTIONS``: rollback journal, deferred transactions, Python's 5 s busy timeout. Used by
tests/test_sqlite_startproject.py in subprocesses; the database file is ``$POWERSYNC_STARTPROJECT_DB``.
"""

import os

from demo_project.settings import *  # noqa: F403
from demo_project.settings import BASE_DIR

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("POWERSYNC_STARTPROJECT_DB", BASE_DIR / "db.sqlite3"),
    }
}
