"""The demo's web app page: a shell that loads the @powersync/web bundle built from demo_project/frontend."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from powersync_django.tokens import token_subject

#: The bundle Vite writes (demo_project/frontend/vite.config.js); `make demo` builds it.
BUNDLE = "todos/app/app.js"


@login_required
def app(request: HttpRequest) -> HttpResponse:
    """The todo app for the logged-in user; explains how to build the bundle when it is missing."""
    config = {
        # The PowerSync endpoint is this site's root (demo_project/urls.py), token view at api/token.
        "endpoint": request.build_absolute_uri("/").rstrip("/"),
        "userId": token_subject(request.user),
        "username": request.user.get_username(),
    }
    return render(request, "todos/app.html", {"config": config, "bundle": BUNDLE,
                                              "built": finders.find(BUNDLE) is not None})
