from django.apps import AppConfig


class PowerSyncConfig(AppConfig):
    name = "powersync_django"
    label = "powersync_django"
    verbose_name = "PowerSync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from . import capture, checks, db, security_checks  # noqa: F401  (signal receivers and system checks)

        capture.connect_signals()
        connection_created.connect(db.configure_connection, dispatch_uid="powersync_django.db.configure")
