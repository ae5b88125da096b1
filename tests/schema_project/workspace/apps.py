from django.apps import AppConfig


class WorkspaceConfig(AppConfig):
    name = "schema_project.workspace"
    label = "workspace"
