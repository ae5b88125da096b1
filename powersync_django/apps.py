from django.apps import AppConfig


class PowerSyncConfig(AppConfig):
    name = "powersync_django"
    label = "powersync_django"
    verbose_name = "PowerSync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import capture, checks, security_checks  # noqa: F401  (signal receivers and system checks)

        capture.connect_signals()
