"""The official client with ``checkpointMode: 'requests'`` (protocol.md §11.5), and a long initial sync that a
newer checkpoint interrupts (§6.8 item 6)."""

from __future__ import annotations

import time

from test_sync_e2e import TODOS, server_rows
from test_upload_e2e import insert_todo, wait_uploaded

REQUESTS = {"checkpointMode": "requests"}


def server_counter(server, user: str) -> list:
    return server.orm(f"""
from powersync_django.models import WriteCheckpoint
result = list(WriteCheckpoint.objects.filter(user_id="{user}").values_list("issued", "replicated"))
""")


def wait_replicated(server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.orm("from powersync_django.models import OutboxEntry\nresult = OutboxEntry.objects.count()"):
        assert time.monotonic() < deadline, "the replicator did not catch up"
        time.sleep(0.05)


def test_requests_mode_uploads_and_requested_checkpoints(server, make_client, user, transport):
    server.orm(f'TodoList.objects.create(name="l", owner_id="{user}")')
    client = make_client()
    client.connect(server.url, server.token(user), connection_method=transport, extra_options=REQUESTS)
    client.wait_for_first_sync(timeout_ms=30_000)
    list_id = client.query("SELECT id FROM lists")[0]["id"]

    # A requested checkpoint is synced only with every change committed before it: no polling needed.
    server.orm(f'Todo.objects.create(list_id="{list_id}", description="from the server", created_by="x")')
    first = client.request_checkpoint()
    assert first["hasSynced"]
    assert [r["description"] for r in client.query("SELECT description FROM todos")] == ["from the server"]

    # Uploads: the SDK posts the next request id after the queue drains and applies data once it sees it.
    insert_todo(client, list_id, "from the client")
    wait_uploaded(client)
    # The server overwrites created_by from the token; the client applies that once the request is acknowledged.
    got = client.wait_for("SELECT created_by FROM todos WHERE description = ?", [{"created_by": user}],
                          params=["from the client"], timeout_ms=15_000)
    assert got["matched"], got
    second = client.request_checkpoint()
    assert int(second["requestId"]) > int(first["requestId"])
    [(issued, replicated)] = server_counter(server, user)  # one counter per user and client
    assert issued == replicated >= int(second["requestId"])
    assert client.query(TODOS) == server_rows(server, user)["todos"]
    assert client.checksum_failures() == []
    assert client.logs(contains="checkpoint request", min_level="warn") == []
    assert client.status()["downloadError"] is None


def test_switching_from_legacy_write_checkpoints_to_requests(server, make_client, user):
    """The client seeds its request counter from the server's answer: it continues above the legacy values."""
    server.orm(f'TodoList.objects.create(name="l", owner_id="{user}")')
    client = make_client()
    client.connect(server.url, server.token(user))
    client.wait_for_first_sync(timeout_ms=30_000)
    list_id = client.query("SELECT id FROM lists")[0]["id"]
    for i in range(3):  # three legacy write checkpoints
        insert_todo(client, list_id, f"legacy {i}")
        wait_uploaded(client)
        assert client.wait_for("SELECT count(*) AS n FROM todos WHERE created_by = ?", [{"n": i + 1}],
                               params=[user], timeout_ms=15_000)["matched"]
    [(legacy, _)] = server_counter(server, user)
    assert legacy >= 3
    client.disconnect()
    client.connect(server.url, server.token(user), extra_options=REQUESTS)
    client.wait_for_first_sync(timeout_ms=30_000)
    server.orm(f'Todo.objects.create(list_id="{list_id}", description="after the switch", created_by="x")')
    request = client.request_checkpoint()
    assert int(request["requestId"]) > legacy
    assert client.query("SELECT count(*) AS n FROM todos WHERE description = 'after the switch'") == [{"n": 1}]
    assert client.checksum_failures() == []


def test_a_newer_checkpoint_interrupts_a_long_initial_sync(server, make_client, user):
    """Over WebSocket, where RSocket credit paces the server to at most ~10 lines ahead of what the client
    processed (over HTTP the server may have written the whole download before the client read 1,000 ops)."""
    lists, per_list = 3, 10_000
    server.orm(f"""
from powersync_django.capture import PowerSyncQuerySet
for n in range({lists}):
    lst = TodoList.objects.create(name=f"list {{n}}", owner_id="{user}")
    PowerSyncQuerySet(Todo).bulk_create(
        [Todo(list=lst, description=f"{{n}}.{{i}}", created_by="{user}") for i in range({per_list})], batch_size=1000)
""")
    wait_replicated(server)
    client = make_client()
    client.connect(server.url, server.token(user), connection_method="websocket")
    # Once the download is under way (past the 1,000 ops after which the server watches for newer checkpoints),
    # a change commits.
    deadline = time.monotonic() + 60
    while True:
        progress = client.status()["downloadProgress"]
        if progress and progress["downloadedOperations"] >= 1000:
            break
        assert time.monotonic() < deadline, client.status()
        time.sleep(0.01)
    server.orm(f'Todo.objects.create(list=TodoList.objects.get(owner_id="{user}", name="list 0"), '
               f'description="late", created_by="{user}")')
    assert progress["downloadedOperations"] < progress["totalOperations"], progress
    client.wait_for_first_sync(timeout_ms=60_000)
    # The first complete checkpoint is the newer one: the client never settles on the stale one.
    assert client.query("SELECT description FROM todos WHERE description = 'late'") == [{"description": "late"}]
    assert client.query("SELECT count(*) AS n FROM todos") == [{"n": lists * per_list + 1}]
    assert client.checksum_failures() == []
