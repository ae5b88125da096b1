"""URLs of the sync service. Include them at the PowerSync endpoint's root (the client appends these paths)."""

from django.urls import path

from . import views

app_name = "powersync"

urlpatterns = [
    path("sync/stream", views.sync_stream, name="sync-stream"),
    path("write-checkpoint2.json", views.write_checkpoint, name="write-checkpoint"),
]
