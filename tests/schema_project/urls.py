from django.urls import include, path

urlpatterns = [path("", include("powersync_django.urls"))]
