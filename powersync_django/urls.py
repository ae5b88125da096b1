"""URLs of the sync service. Include them at the PowerSync endpoint's root (the client appends these paths).

``api/upload`` is the upload endpoint for your connector's ``uploadData``; the client never derives its URL,
so you may also mount ``powersync_django.api.upload`` at any other path of your own.
``metrics``, ``health/live`` and ``health/ready`` are for operators and load balancers (README "Operations").
"""

from django.urls import path

from . import api, health, monitoring, tokens, views

app_name = "powersync"

urlpatterns = [
    path("sync/stream", views.sync_stream, name="sync-stream"),
    path("write-checkpoint2.json", views.write_checkpoint, name="write-checkpoint"),
    path("sync/checkpoint-request", views.checkpoint_request, name="checkpoint-request"),
    path("api/upload", api.upload, name="upload"),
    path("api/token", tokens.token, name="token"),
    path("metrics", monitoring.metrics_view, name="metrics"),
    path("health/live", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
]
