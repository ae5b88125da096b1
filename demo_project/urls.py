from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The PowerSync endpoint is the site root: clients use http://127.0.0.1:8000 as `endpoint`.
    path("", include("powersync_django.urls")),
]
