from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from demo_project.todos import views

urlpatterns = [
    path("admin/", admin.site.urls),
    # The web app (demo_project/frontend, built into static files) and Django's login/logout views.
    path("", views.app, name="app"),
    path("accounts/", include("django.contrib.auth.urls")),
    # The PowerSync endpoint is the site root: clients use http://127.0.0.1:8000 as `endpoint`.
    # It also serves the upload endpoint at /api/upload and the token view at /api/token.
    path("", include("powersync_django.urls")),
]

if settings.HAS_SPECTACULAR:
    from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

    urlpatterns += [
        # OpenAPI of the upload and write-checkpoint endpoints: YAML, or JSON with ?format=json.
        path("api/schema", SpectacularAPIView.as_view(), name="schema"),
        path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    ]
