"""The official @powersync/node client syncing against a live server (issue: HTTP sync; also WebSocket)."""

from __future__ import annotations

import time

LISTS = "SELECT id, name, owner_id, created_at FROM lists ORDER BY name"
TODOS = "SELECT id, list_id, description, completed, created_by, created_at, completed_at FROM todos ORDER BY description"


def seed(server, owner: str, lists: int = 2, todos: int = 3) -> None:
    server.orm(f"""
for i in range({lists}):
    lst = TodoList.objects.create(name=f"{owner} list {{i}}", owner_id="{owner}")
    for j in range({todos}):
        Todo.objects.create(list=lst, description=f"{owner} todo {{i}}-{{j}}", created_by="{owner}", completed=j == 0)
""")


def server_rows(server, owner: str) -> dict:
    """What the client should hold, computed from the database with the documented encoding."""
    return server.orm(f"""
from powersync_django.encoding import encode_value
def enc(obj, names):
    return {{n: encode_value(getattr(obj, f.attname), f) for n, f in names}}
lists = TodoList.objects.filter(owner_id="{owner}").order_by("name")
todos = Todo.objects.filter(list__owner_id="{owner}").order_by("description")
lf = [(f.attname if f.attname != "id" else "id", f) for f in TodoList._meta.concrete_fields]
tf = [(f.attname, f) for f in Todo._meta.concrete_fields]
result = {{"lists": [enc(o, lf) for o in lists], "todos": [enc(o, tf) for o in todos]}}
""")


def connect(client, server, user, transport, token=None):
    client.connect(server.url, token or server.token(user), connection_method=transport)
    client.wait_for_first_sync(timeout_ms=30_000)


def test_initial_sync_matches_database(server, make_client, user, transport):
    seed(server, user, lists=2, todos=3)
    client = make_client()
    connect(client, server, user, transport)
    expected = server_rows(server, user)
    assert client.query(LISTS) == expected["lists"]
    assert client.query(TODOS) == expected["todos"]
    assert client.checksum_failures() == []


def test_users_are_isolated(server, make_client, user, transport):
    other = user + "-other"
    seed(server, user, lists=1, todos=2)
    seed(server, other, lists=1, todos=4)
    mine, theirs = make_client("mine"), make_client("theirs")
    connect(mine, server, user, transport)
    connect(theirs, server, other, transport)
    assert {r["owner_id"] for r in mine.query(LISTS)} == {user}
    assert len(mine.query(TODOS)) == 2
    assert {r["owner_id"] for r in theirs.query(LISTS)} == {other}
    assert len(theirs.query(TODOS)) == 4


def test_live_insert_update_delete(server, make_client, user, transport):
    seed(server, user, lists=1, todos=1)
    client = make_client()
    connect(client, server, user, transport)
    list_id = client.query("SELECT id FROM lists")[0]["id"]
    todo_id = server.orm(f"""
t = Todo.objects.create(list_id="{list_id}", description="live one", created_by="{user}")
result = str(t.id)
""")
    got = client.wait_for("SELECT description, completed FROM todos WHERE id = ?", [{"description": "live one",
                          "completed": 0}], params=[todo_id], timeout_ms=10_000)
    assert got["matched"], got
    server.orm(f'Todo.objects.filter(id="{todo_id}").update(completed=True)\n'
               f'from powersync_django.capture import record_changed\nrecord_changed(Todo, ["{todo_id}"])')
    got = client.wait_for("SELECT completed FROM todos WHERE id = ?", [{"completed": 1}], params=[todo_id])
    assert got["matched"], got
    server.orm(f'Todo.objects.get(id="{todo_id}").delete()')
    got = client.wait_for("SELECT id FROM todos WHERE id = ?", [], params=[todo_id])
    assert got["matched"], got
    assert client.checksum_failures() == []


def test_list_moving_to_another_owner(server, make_client, user, transport):
    other = user + "-new"
    seed(server, user, lists=2, todos=2)
    old_owner, new_owner = make_client("old"), make_client("new")
    connect(old_owner, server, user, transport)
    connect(new_owner, server, other, transport)
    assert len(old_owner.query(TODOS)) == 4 and new_owner.query(TODOS) == []
    moved = server.orm(f"""
lst = TodoList.objects.filter(owner_id="{user}").order_by("name").first()
lst.owner_id = "{other}"
lst.save()
result = str(lst.id)
""")
    assert old_owner.wait_for("SELECT count(*) AS n FROM todos", [{"n": 2}])["matched"]
    assert old_owner.wait_for("SELECT id FROM lists WHERE id = ?", [], params=[moved])["matched"]
    assert new_owner.wait_for("SELECT count(*) AS n FROM todos WHERE list_id = ?", [{"n": 2}], params=[moved])["matched"]
    assert new_owner.wait_for("SELECT owner_id FROM lists", [{"owner_id": other}])["matched"]
    assert old_owner.checksum_failures() == [] and new_owner.checksum_failures() == []


def test_resume_after_disconnect(server, make_client, user, transport):
    seed(server, user, lists=1, todos=2)
    client = make_client()
    connect(client, server, user, transport)
    client.disconnect()
    server.orm(f"""
lst = TodoList.objects.get(owner_id="{user}")
Todo.objects.create(list=lst, description="while away", created_by="{user}")
Todo.objects.filter(list=lst, description__endswith="0-0").delete()
""")
    client.connect(server.url, server.token(user), connection_method=transport)
    expected = server_rows(server, user)
    got = client.wait_for(TODOS, expected["todos"], timeout_ms=15_000)
    assert got["matched"], got
    assert client.checksum_failures() == []


def test_expiring_token_is_refreshed_without_losing_sync(server, make_client, user, transport):
    seed(server, user, lists=1, todos=1)
    client = make_client()
    # 25 s of life: the server warns 20 s before expiry; the client fetches new credentials in the background.
    connect(client, server, user, transport, token=server.token(user, ttl=25))
    client.set_token(server.token(user))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.credentials()["fetchCount"] < 2:
        time.sleep(0.2)
    assert client.credentials()["fetchCount"] >= 2
    list_id = client.query("SELECT id FROM lists")[0]["id"]
    server.orm(f'Todo.objects.create(list_id="{list_id}", description="after refresh", created_by="{user}")')
    assert client.wait_for("SELECT count(*) AS n FROM todos", [{"n": 2}], timeout_ms=15_000)["matched"]


def test_tampered_token_gets_no_data(server, make_client, user, transport):
    seed(server, user, lists=1, todos=2)
    client = make_client()
    good = server.token(user)
    client.connect(server.url, good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), connection_method=transport)
    time.sleep(2)
    assert client.query(LISTS) == [] and client.query(TODOS) == []
    assert not client.status()["hasSynced"]
    assert len(client.credentials()["invalidations"]) >= 1
