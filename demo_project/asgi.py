"""ASGI entry point of the demo: Django's HTTP app plus the PowerSync WebSocket route.

With DEBUG on, static files (the web app's bundle, its workers and WASM) are served from the app
directories like ``runserver`` does, so ``daphne demo_project.asgi:application`` works on its own too.
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
django_application = get_asgi_application()

if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_application = ASGIStaticFilesHandler(django_application)

from powersync_django.routing import powersync_application  # noqa: E402  (needs Django set up)

application = powersync_application(django_application)
