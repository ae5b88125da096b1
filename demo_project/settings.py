"""Settings of the demo todo project that uses powersync_django.

Environment variables:
- ``DATABASE_URL``: ``postgres://user@host:port/name`` to use PostgreSQL; default: SQLite file ``db.sqlite3``
  (``sqlite:///path`` also works).
- ``POWERSYNC_JWT_SECRET``: HS256 secret for client tokens (development default below; change it in production).
- ``DJANGO_DEBUG``: "0" to turn debug off.
- ``POWERSYNC_KEEPALIVE_SECONDS``: seconds between ``token_expires_in`` keepalive lines (default 20).
"""

import os
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-insecure-secret-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") != "0"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "powersync_django",
    "demo_project.todos",
]

# OpenAPI description at /api/schema (and /api/docs) when drf-spectacular is installed (extra "openapi").
HAS_SPECTACULAR = find_spec("drf_spectacular") is not None
if HAS_SPECTACULAR:
    INSTALLED_APPS.append("drf_spectacular")

REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"} if HAS_SPECTACULAR else {}

SPECTACULAR_SETTINGS = {
    "TITLE": "powersync-django demo",
    "DESCRIPTION": "Upload and write-checkpoint endpoints of the PowerSync service (sync itself is a stream).",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # Describes GET /write-checkpoint2.json, a plain Django view the generator cannot see.
        "powersync_django.api.write_checkpoint_schema_hook",
    ],
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo_project.urls"
ASGI_APPLICATION = "demo_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_url(url: str | None) -> dict:
    """A Django DATABASES entry from a URL (postgres://, postgresql://, sqlite:///path) or the SQLite default."""
    if not url:
        return sqlite_database(BASE_DIR / "db.sqlite3")
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return sqlite_database(unquote(parsed.path) or BASE_DIR / "db.sqlite3")
    if parsed.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
            "USER": unquote(parsed.username or "postgres"),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "127.0.0.1",
            "PORT": str(parsed.port or 5432),
            "CONN_MAX_AGE": 0,
            "TEST": {"NAME": os.environ.get("POWERSYNC_TEST_DB_NAME", "test_powersync")},
        }
    raise ValueError(f"Unsupported DATABASE_URL scheme: {parsed.scheme!r}")


def sqlite_database(path) -> dict:
    # WAL lets the sync streams read while the replicator writes; IMMEDIATE avoids lock upgrades failing.
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
    }


DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# The web app at / (demo_project/todos/views.py) uses Django's login views (accounts/login/).
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
if os.environ.get("POWERSYNC_REDIS_URL"):  # a fleet sharing a Redis channel layer (e.g. redis://127.0.0.1:6379/0)
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                  "CONFIG": {"hosts": [os.environ["POWERSYNC_REDIS_URL"]],
                                             "prefix": os.environ.get("POWERSYNC_REDIS_PREFIX", "asgi")}}}

POWERSYNC = {
    "JWT": {
        "SECRET": os.environ.get("POWERSYNC_JWT_SECRET", "powersync-demo-dev-secret-change-me"),
        "AUDIENCE": "powersync",
    },
    "KEEPALIVE_SECONDS": float(os.environ.get("POWERSYNC_KEEPALIVE_SECONDS", "20")),
    # A fleet runs the replicator as its own process(es) (`manage.py powersync_replicate`): set "0" on the servers.
    "REPLICATOR_IN_PROCESS": os.environ.get("POWERSYNC_REPLICATOR_IN_PROCESS", "1") != "0",
    "LEASE_SECONDS": float(os.environ.get("POWERSYNC_LEASE_SECONDS", "10")),
    # Benchmarks open many streams as one user: POWERSYNC_MAX_STREAMS_PER_USER=none lifts the per-user cap.
    "MAX_STREAMS_PER_USER": (None if os.environ.get("POWERSYNC_MAX_STREAMS_PER_USER", "20").lower() == "none"
                             else int(os.environ.get("POWERSYNC_MAX_STREAMS_PER_USER", "20"))),
    # "channels": new checkpoints are announced over CHANNEL_LAYERS (set POWERSYNC_REDIS_URL) instead of LISTEN.
    "NOTIFY": os.environ.get("POWERSYNC_NOTIFY") or None,
    "BUCKETS": {
        # One bucket per list the user owns, holding that list's todos (all of them sync on connect).
        "todos_by_list": {
            "parameters": {
                "queryset": "todos.TodoList",
                "filter": {"owner_id": "token.sub"},
                "values": {"list_id": "id"},
            },
            "data": [
                {"model": "todos.Todo", "table": "todos", "filter": {"list_id": "bucket.list_id"}},
            ],
        },
    },
    # Sync Streams (README "Sync Streams"). No stream may share a bucket definition's name.
    "STREAMS": {
        # The token user's own lists, synced on connect without an explicit subscription.
        "lists": {
            "auto_subscribe": True,
            "parameters": {"owner_id": "auth.user_id"},
            "data": [
                {"model": "todos.TodoList", "table": "lists", "filter": {"owner_id": "bucket.owner_id"}},
            ],
        },
        # The todos of one list, on demand: db.syncStream("list_todos", {list_id}).subscribe(). Only for a list
        # the token user owns; any other list_id gets an error for that subscription.
        "list_todos": {
            "parameters": {
                "queryset": "todos.TodoList",
                "filter": {"id": "subscription.list_id", "owner_id": "auth.user_id"},
                "values": {"list_id": "id"},
            },
            "data": [
                {"model": "todos.Todo", "table": "todos", "filter": {"list_id": "bucket.list_id"}},
            ],
        },
    },
    "UPLOAD": {
        # The demo's user ids are free-form strings, not Django users: hooks get a TokenUser (user.user_id).
        "USER_LOOKUP_FIELD": None,
        "PERMISSIONS": {
            "lists": "demo_project.todos.permissions.can_write_list",
            "todos": "demo_project.todos.permissions.can_write_todo",
        },
        "PREPARE": {
            "lists": "demo_project.todos.permissions.prepare_list",
            "todos": "demo_project.todos.permissions.prepare_todo",
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"powersync_django": {"handlers": ["console"], "level": os.environ.get("POWERSYNC_LOG_LEVEL", "INFO")}},
}
