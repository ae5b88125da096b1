"""Sync Streams with the official @powersync/node client: db.syncStream(...).subscribe() against the demo streams.

The demo declares ``lists`` (auto_subscribe: the token user's lists) and ``list_todos`` (subscription parameter
``list_id``; only lists the user owns). Most tests connect with ``includeDefaultStreams: false`` so that the
demo's default bucket definition (all todos of the user's lists) does not hide what a subscription brings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from conftest import Server
from node_client import NodeClient

TODOS = "SELECT description, list_id FROM todos ORDER BY description"
NO_DEFAULTS = {"includeDefaultStreams": False}


@pytest.fixture(scope="module")
def stream_server(e2e_database_url: str, node_modules) -> Iterator[Server]:
    """A server sending a keepalive line every second: the client re-checks subscription TTLs on them."""
    with Server(e2e_database_url, env={"POWERSYNC_LOG_LEVEL": "INFO", "POWERSYNC_KEEPALIVE_SECONDS": "1"}) as srv:
        yield srv


def seed_lists(server: Server, owner: str, lists: int = 2, todos: int = 3) -> list[str]:
    """Lists (ids as the client sees them) with ``todos`` todos each, named '<list index>-<todo index>'."""
    return server.orm(f"""
result = []
for i in range({lists}):
    lst = TodoList.objects.create(name=f"list {{i}}", owner_id="{owner}")
    for j in range({todos}):
        Todo.objects.create(list=lst, description=f"{{i}}-{{j}}", created_by="{owner}")
    result.append(str(lst.id))
""")


def connect(client, server: Server, user: str, transport: str, **options) -> None:
    client.connect(server.url, server.token(user), connection_method=transport, extra_options=options or None)


def subscribe(client, list_id: str, **kwargs) -> int:
    handle = client.subscribe_stream("list_todos", {"list_id": list_id}, **kwargs)
    return handle


def synced(client, handle: int) -> bool:
    """``subscription.waitForFirstSync()`` resolved (a timeout fails with the client's last log lines)."""
    result = client.wait_for_stream_first_sync(handle)
    assert result["synced"], client.logs_text(last=30)
    return True


def todos_of(client) -> list[tuple[str, str]]:
    return [(r["description"], r["list_id"]) for r in client.query(TODOS)]


def test_subscription_syncs_only_its_list_and_reports_progress(stream_server, make_client, user, transport):
    a, b = seed_lists(stream_server, user, lists=2, todos=3)
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    handle = subscribe(client, a)
    assert synced(client, handle)
    assert todos_of(client) == [(f"0-{j}", a) for j in range(3)]
    assert client.query("SELECT count(*) AS n FROM lists") == [{"n": 0}]  # no defaults requested
    status = client.stream_status("list_todos", {"list_id": a})
    assert status["active"] and status["hasSynced"] and status["hasExplicitSubscription"]
    assert not status["isDefault"] and status["priority"] == 3
    # Progress was reported for this stream's download: 3 operations.
    seen = [s["progress"] for h in client.status_history() for s in h["streams"]
            if s["name"] == "list_todos" and s["progress"] is not None]
    assert seen and seen[-1] == {"downloadedOperations": 3, "totalOperations": 3}, seen
    assert client.stream_status("list_todos", {"list_id": b}) is None
    assert client.checksum_failures() == []


def _progress_reports(client) -> list[dict[str, int]]:
    """The core's download counters (per priority: at_last, since_last, target_count) from its trace log."""
    out = []
    for entry in client.logs(contains="powersync_control"):
        _, _, response = entry["message"].partition(" -> ")
        try:
            instructions = json.loads(response)
        except ValueError:
            continue
        for instruction in instructions if isinstance(instructions, list) else ():
            status = instruction.get("UpdateSyncStatus", {}).get("status", {}) if isinstance(instruction, dict) else {}
            out.extend(((status.get("downloading") or {}).get("buckets") or {}).values())
    return out


def test_second_subscription_downloads_only_the_new_list(stream_server, node_modules, tmp_path, user, transport):
    a, b = seed_lists(stream_server, user, lists=2, todos=3)
    with NodeClient(name="second") as client:
        client.open(tmp_path / "second.db", log_level="trace")  # trace: the core's status after every line
        _second_subscription(client, stream_server, user, transport, a, b)


def _second_subscription(client, stream_server, user, transport, a, b) -> None:
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    first = subscribe(client, a)
    assert synced(client, first)
    client.logs(clear=True)
    second = subscribe(client, b)
    assert synced(client, second)
    assert {lst for _, lst in todos_of(client)} == {a, b} and len(todos_of(client)) == 6
    # The restarted iteration's checkpoint covers both lists; the client counts only the 3 operations it still
    # needs as the download target, and the server sent exactly those (a re-sent first list would count 6).
    reports = _progress_reports(client)
    assert reports and {r["target_count"] for r in reports} == {3}, reports
    assert max(r["since_last"] for r in reports) == 3, reports
    assert client.checksum_failures() == []


def test_unsubscribe_evicts_the_data_after_the_ttl(stream_server, make_client, user, transport):
    a, b = seed_lists(stream_server, user, lists=2, todos=2)
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    keep, drop = subscribe(client, a), subscribe(client, b, ttl=1)
    assert synced(client, keep) and synced(client, drop)
    assert len(todos_of(client)) == 4
    client.unsubscribe_stream(drop)
    # Still there until the TTL passes and a keepalive line lets the client notice.
    assert {lst for _, lst in todos_of(client)} == {a, b}
    got = client.wait_for("SELECT DISTINCT list_id FROM todos", [{"list_id": a}], timeout_ms=15_000)
    assert got["matched"], got
    assert client.stream_status("list_todos", {"list_id": b}) is None
    assert client.stream_status("list_todos", {"list_id": a})["hasSynced"]


def test_another_users_list_gets_an_error_and_no_data(stream_server, make_client, user, transport):
    [mine] = seed_lists(stream_server, user, lists=1, todos=2)
    [theirs] = seed_lists(stream_server, user + "-x", lists=1, todos=2)
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    forbidden = subscribe(client, theirs)
    allowed = subscribe(client, mine)
    assert synced(client, allowed)
    client.wait_for_stream_first_sync(forbidden, timeout_ms=5_000)
    assert {lst for _, lst in todos_of(client)} == {mine}
    errors = client.logs(contains="could not be resolved")
    assert errors and theirs in errors[-1]["message"] and "No access" in errors[-1]["message"], errors
    assert not any(mine in e["message"] for e in errors)
    # The connection still works: live changes to the allowed list arrive.
    stream_server.orm(f'Todo.objects.create(list_id="{mine}", description="live", created_by="{user}")')
    assert client.wait_for("SELECT count(*) AS n FROM todos WHERE description = 'live'", [{"n": 1}])["matched"]
    assert client.status()["downloadError"] is None


def test_auto_subscribed_stream_syncs_without_a_subscription(stream_server, make_client, user, transport):
    a, b = seed_lists(stream_server, user, lists=2, todos=1)
    seed_lists(stream_server, user + "-x", lists=1, todos=1)
    client = make_client()
    connect(client, stream_server, user, transport)
    client.wait_for_first_sync()
    assert sorted(r["id"] for r in client.query("SELECT id FROM lists")) == sorted([a, b])
    status = client.stream_status("lists")
    assert status["isDefault"] and status["active"] and status["hasSynced"] and not status["hasExplicitSubscription"]
    assert client.stream_status("todos_by_list")["isDefault"]


def test_live_changes_reach_a_subscribed_stream_and_priorities_apply(stream_server, make_client, user, transport):
    a, b = seed_lists(stream_server, user, lists=2, todos=1)
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    urgent, normal = subscribe(client, a, priority=0), subscribe(client, b)
    assert synced(client, urgent) and synced(client, normal)
    assert client.stream_status("list_todos", {"list_id": a})["priority"] == 0
    assert client.stream_status("list_todos", {"list_id": b})["priority"] == 3
    stream_server.orm(f'Todo.objects.create(list_id="{a}", description="live a", created_by="{user}")')
    got = client.wait_for("SELECT list_id FROM todos WHERE description = 'live a'", [{"list_id": a}])
    assert got["matched"], got


def test_access_lost_and_gained_while_subscribed(stream_server, make_client, user, transport):
    """The list is given to another user while subscribed: its todos leave the client; a subscription to a list
    that does not exist yet (created offline, upload pending) gets its data once the list exists."""
    [a] = seed_lists(stream_server, user, lists=1, todos=2)
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    handle = subscribe(client, a)
    assert synced(client, handle)
    assert len(todos_of(client)) == 2
    stream_server.orm(f'lst = TodoList.objects.get(pk="{a}")\nlst.owner_id = "{user}-other"\nlst.save()')
    got = client.wait_for("SELECT count(*) AS n FROM todos", [{"n": 0}], timeout_ms=15_000)
    assert got["matched"], (got, client.logs_text(last=30))
    later = str(uuid.uuid4())
    pending = subscribe(client, later.upper())
    client.wait_for_stream_first_sync(pending, timeout_ms=5_000)
    stream_server.orm(f'lst = TodoList.objects.create(id="{later}", name="later", owner_id="{user}")\n'
                      f'Todo.objects.create(list=lst, description="late", created_by="{user}")')
    got = client.wait_for("SELECT description, list_id FROM todos", [{"description": "late", "list_id": later}],
                          timeout_ms=15_000)
    assert got["matched"], (got, client.logs_text(last=30))
    assert client.checksum_failures() == []


def test_explicit_subscription_to_a_default_stream_without_defaults(stream_server, make_client, user, transport):
    """includeDefaultStreams false, then syncStream('lists').subscribe({ttl}): the lists sync, and after
    unsubscribe and the TTL they are evicted (the stream is not kept as a default one)."""
    a, b = seed_lists(stream_server, user, lists=2, todos=0)
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    handle = client.subscribe_stream("lists", None, ttl=1)
    assert synced(client, handle)
    assert sorted(r["id"] for r in client.query("SELECT id FROM lists")) == sorted([a, b])
    status = client.stream_status("lists")
    assert status["hasExplicitSubscription"] and status["hasSynced"], status
    client.unsubscribe_stream(handle)
    got = client.wait_for("SELECT count(*) AS n FROM lists", [{"n": 0}], timeout_ms=15_000)
    assert got["matched"], (got, client.sync_streams(), client.logs_text(last=20))


def test_subscription_changes_during_a_large_initial_sync(stream_server, make_client, user, transport):
    """A second subscription (and an unsubscribe) while the first list's 3,000 todos are downloading: the client
    restarts its iteration and ends with exactly the subscribed lists, without checksum failures."""
    big, small, gone = seed_lists(stream_server, user, lists=3, todos=3)
    stream_server.orm(f'from django.db import transaction\nwith transaction.atomic():\n'
                      f'    for i in range(3000):\n        Todo.objects.create(list_id="{big}", description=f"big-{{i:05}}")')
    client = make_client()
    connect(client, stream_server, user, transport, **NO_DEFAULTS)
    first = subscribe(client, big)
    dropped = subscribe(client, gone, ttl=0)
    client.unsubscribe_stream(dropped)
    second = subscribe(client, small)
    assert synced(client, first) and synced(client, second)
    got = client.wait_for("SELECT list_id, count(*) AS n FROM todos GROUP BY list_id ORDER BY n",
                          sorted([{"list_id": small, "n": 3}, {"list_id": big, "n": 3003}], key=lambda r: r["n"]),
                          timeout_ms=15_000)
    assert got["matched"], got
    assert client.checksum_failures() == []
