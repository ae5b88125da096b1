"""Fixtures of the second project's tests: the e2e machinery of tests/e2e, pointed at schema_project."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.conftest import Server, e2e_database_url, node_modules  # noqa: F401  (fixtures)
from node_client import NodeClient

E2E_FILES = ("test_schema_e2e.py",)

# The client schema of schema_project (what `manage.py powersync_schema` would generate).
CLIENT_SCHEMA = {
    "projects": {"team_id": "integer", "name": "text", "lead_id": "integer"},
    "tasks": {"team_id": "integer", "name": "text", "lead_id": "integer", "project_ptr_id": "text", "done": "integer"},
    "documents": {
        "owner_id": "integer", "folder_id": "text", "title": "text", "body": "text", "price": "text",
        "due": "text", "remind_at": "text", "attachment": "text", "created_at": "text", "duration": "real",
        "rating": "real", "pages": "integer", "archived": "integer", "ref": "text", "tags": "text",
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)


class SchemaServer(Server):
    orm_prelude = ("from django.contrib.auth.models import User\n"
                   "from schema_project.workspace.models import Team, Membership, Project, Task, Folder, "
                   "FolderMember, Document")


@pytest.fixture(scope="session")
def schema_server(e2e_database_url: str, node_modules: Path) -> Iterator[SchemaServer]:  # noqa: F811
    with SchemaServer(e2e_database_url, env={"POWERSYNC_LOG_LEVEL": "INFO"}, project="schema_project") as srv:
        yield srv


@pytest.fixture
def make_client(tmp_path: Path, node_modules: Path) -> Iterator:  # noqa: F811
    """Official clients with the second project's client schema."""
    clients: list[NodeClient] = []

    def make(name: str = "client") -> NodeClient:
        client = NodeClient(name=name)
        client.open(str(tmp_path / f"{name}-{len(clients)}.db"), schema=CLIENT_SCHEMA)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(params=["http", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param
