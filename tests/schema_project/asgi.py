"""ASGI entry point of the second test project."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "schema_project.settings")
django_application = get_asgi_application()

from powersync_django.routing import powersync_application  # noqa: E402  (needs Django set up)

application = powersync_application(django_application)
