"""Settings of the second test project (``schema_project``): the demo's settings machinery, another schema."""

import os
from pathlib import Path

from demo_project.settings import database_from_url

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "schema-project-test-key"
DEBUG = os.environ.get("DJANGO_DEBUG", "1") != "0"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.admin",
    "django.contrib.messages",
    "channels",
    "rest_framework",
    "powersync_django",
    "schema_project.workspace",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

ROOT_URLCONF = "schema_project.urls"
ASGI_APPLICATION = "schema_project.asgi.application"

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    INSTALLED_APPS.append("django.contrib.postgres")  # hstore and range fields of workspace.Specimen
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("POWERSYNC_TEST_DB_NAME", "test_powersync") + "_schema"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

POWERSYNC = {
    "JWT": {"SECRET": os.environ.get("POWERSYNC_JWT_SECRET", "schema-project-secret-0123456789abcdef"),
            "AUDIENCE": "powersync"},
    "BUCKETS": {
        # Projects of every team the user is a member of: Membership is an ACL table only this reads.
        "team_projects": {
            "parameters": {"queryset": "workspace.Team", "filter": {"memberships__user_id": "token.sub"},
                           "values": {"team_id": "id"}},
            "data": [{"model": "workspace.Project", "table": "projects", "filter": {"team_id": "bucket.team_id"}}],
        },
        # Documents the user owns: an integer foreign key to auth.User compared with the token's sub.
        "owned_documents": {
            "parameters": {"owner_id": "token.sub"},
            "data": [{"model": "workspace.Document", "table": "documents", "filter": {"owner_id": "bucket.owner_id"}}],
        },
        # Documents of folders shared with the user through an explicit through model (FolderMember).
        "folder_documents": {
            "parameters": {"queryset": "workspace.Folder", "filter": {"members__id": "token.sub"},
                           "values": {"folder_id": "id"}},
            "data": [{"model": "workspace.Document", "table": "documents",
                      "filter": {"folder_id": "bucket.folder_id"}}],
        },
        # Documents shared one by one through an auto-created many-to-many table (Document.shared_with).
        "shared_documents": {
            "parameters": {"queryset": "workspace.Document", "filter": {"shared_with__id": "token.sub"},
                           "values": {"document_id": "id"}},
            "data": [{"model": "workspace.Document", "table": "documents", "filter": {"id": "bucket.document_id"}}],
        },
        # Multi-table inheritance: a Task is a Project row plus its own table.
        "team_tasks": {
            "parameters": {"queryset": "workspace.Team", "filter": {"memberships__user_id": "token.sub"},
                           "values": {"team_id": "id"}},
            "data": [{"model": "workspace.Task", "table": "tasks", "filter": {"team_id": "bucket.team_id"}}],
        },
    },
    "STREAMS": {
        # One document on demand, if the user may see it: as its owner, shared one by one (auto-created M2M) or
        # through a folder (explicit through model). Same rows per document as shared_documents: shares its buckets.
        "document": {
            "parameters": [
                {"queryset": "workspace.Document", "values": {"document_id": "id"},
                 "filter": {"id": "subscription.document_id", "owner_id": "auth.user_id"}},
                {"queryset": "workspace.Document", "values": {"document_id": "id"},
                 "filter": {"id": "subscription.document_id", "shared_with__id": "auth.user_id"}},
                {"queryset": "workspace.Document", "values": {"document_id": "id"},
                 "filter": {"id": "subscription.document_id", "folder__members__id": "auth.user_id"}},
            ],
            "data": [{"model": "workspace.Document", "table": "documents", "filter": {"id": "bucket.document_id"}}],
        },
        # Another team's projects on demand (integer team_id), for its members only; a priority of its own.
        "team_projects_now": {
            "priority": 1,
            "parameters": {"queryset": "workspace.Team", "values": {"team_id": "id"},
                           "filter": {"id": "subscription.team_id", "memberships__user_id": "auth.user_id"}},
            "data": [{"model": "workspace.Project", "table": "projects", "filter": {"team_id": "bucket.team_id"}}],
        },
    },
    "UPLOAD": {
        "PERMISSIONS": {
            "documents": "schema_project.workspace.permissions.can_write_document",
            "projects": "schema_project.workspace.permissions.can_write_project",
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"powersync_django": {"handlers": ["console"], "level": os.environ.get("POWERSYNC_LOG_LEVEL", "INFO")}},
}
