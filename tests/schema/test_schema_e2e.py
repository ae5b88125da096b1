"""The official client against the second project: access changes, JSON written by a client, SET_NULL.

Each test makes its own users and teams, so the tests share one live server.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytestmark = pytest.mark.e2e


def new_user(server) -> int:
    return server.orm(f"result = User.objects.create(username='u{uuid.uuid4().hex[:12]}').pk")


def connected(make_client, server, user_id: int, transport: str, name: str = "client"):
    client = make_client(name)
    client.connect(server.url, server.token(str(user_id)), connection_method=transport)
    client.wait_for_first_sync()
    return client


def wait_rows(client, sql: str, expected, timeout_ms: int = 10_000) -> None:
    result = client.wait_for(sql, expected, timeout_ms=timeout_ms)
    assert result["matched"], f"{sql}: {result['rows']!r} != {expected!r}"


def test_grant_and_revoke_reach_an_open_connection(schema_server, make_client, transport):
    server = schema_server
    alice = new_user(server)
    team = server.orm("result = Team.objects.create(name='t').pk")
    project = server.orm(f"result = str(Project.objects.create(team_id={team}, name='plan').pk)")
    client = connected(make_client, server, alice, transport)
    assert client.query("SELECT id FROM projects") == []

    # Granted while connected: the team's projects arrive without a reconnect.
    server.orm(f"Membership.objects.create(team_id={team}, user_id={alice})")
    wait_rows(client, "SELECT id FROM projects", [{"id": project}])

    # Revoked while connected: the rows go, and later rows of the team never arrive.
    server.orm(f"Membership.objects.filter(team_id={team}, user_id={alice}).delete()")
    wait_rows(client, "SELECT id FROM projects", [])
    server.orm(f"Project.objects.create(team_id={team}, name='secret')")
    marker = server.orm(f"result = str(Document.objects.create(owner_id={alice}, title='marker').pk)")
    wait_rows(client, "SELECT id FROM documents", [{"id": marker}])
    assert client.query("SELECT id FROM projects") == []


def test_m2m_share_reaches_an_open_connection(schema_server, make_client, transport):
    server = schema_server
    owner, reader = new_user(server), new_user(server)
    doc = server.orm(f"result = str(Document.objects.create(owner_id={owner}, title='shared').pk)")
    client = connected(make_client, server, reader, transport)
    server.orm(f"Document.objects.get(pk={doc!r}).shared_with.add({reader})")
    wait_rows(client, "SELECT id, title FROM documents", [{"id": doc, "title": "shared"}])
    server.orm(f"User.objects.get(pk={reader}).shared_documents.clear()")
    wait_rows(client, "SELECT id FROM documents", [])


def test_json_written_by_a_client_reads_back_on_another_client(schema_server, make_client, transport):
    server = schema_server
    alice = new_user(server)
    writer = connected(make_client, server, alice, transport, "writer")
    doc_id = str(uuid.uuid4())
    body = '{"blocks":[{"text":"héllo","level":2}],"pinned":true}'
    writer.execute("INSERT INTO documents (id, owner_id, title, body, pages, archived) VALUES (?, ?, ?, ?, 0, 0)",
                   [doc_id, alice, "from the client", body])
    stored = None
    for _ in range(100):
        stored = server.orm(f"d = Document.objects.filter(pk={doc_id!r}).first()\nresult = d and d.body")
        if stored:
            break
        time.sleep(0.1)
    # Stored as a JSON object, not as a string holding JSON.
    assert stored == {"blocks": [{"text": "héllo", "level": 2}], "pinned": True}
    reader = connected(make_client, server, alice, transport, "reader")
    rows = reader.query("SELECT body FROM documents WHERE id = ?", [doc_id])
    assert len(rows) == 1
    assert json.loads(rows[0]["body"]) == stored


def test_set_null_cascade_reaches_clients(schema_server, make_client, transport):
    server = schema_server
    alice = new_user(server)
    folder = server.orm("result = str(Folder.objects.create(name='f').pk)")
    doc = server.orm(f"result = str(Document.objects.create(owner_id={alice}, folder_id={folder!r}, title='d').pk)")
    client = connected(make_client, server, alice, transport)
    wait_rows(client, "SELECT id, folder_id FROM documents", [{"id": doc, "folder_id": folder}])
    server.orm(f"Folder.objects.filter(pk={folder!r}).delete()")
    wait_rows(client, "SELECT id, folder_id FROM documents", [{"id": doc, "folder_id": None}])
