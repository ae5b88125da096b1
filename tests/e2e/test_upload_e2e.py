"""The official client uploading through the DRF endpoint (issue: uploads), over both transports."""

from __future__ import annotations

import time
import uuid

from test_sync_e2e import TODOS, connect, seed

NOW = "2026-11-26 08:00:00Z"


def insert_list(client, name: str, owner: str = "ignored-by-server") -> str:
    list_id = str(uuid.uuid4())
    client.execute("INSERT INTO lists (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)", [list_id, name, owner, NOW])
    return list_id


def insert_todo(client, list_id: str, description: str) -> str:
    todo_id = str(uuid.uuid4())
    client.execute(
        "INSERT INTO todos (id, list_id, description, completed, created_by, created_at) VALUES (?, ?, ?, 0, ?, ?)",
        [todo_id, list_id, description, "ignored", NOW],
    )
    return todo_id


def wait_uploaded(client, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.crud_count() == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"uploads still pending: {client.crud_count()}; {client.uploads()}")


def test_offline_writes_upload_on_reconnect_and_reach_a_second_client(server, make_client, user, transport):
    client = make_client("writer")
    list_id = insert_list(client, "offline list")
    keep = insert_todo(client, list_id, "keep me")
    edit = insert_todo(client, list_id, "edit me")
    gone = insert_todo(client, list_id, "delete me")
    client.execute("UPDATE todos SET description = ?, completed = 1 WHERE id = ?", ["edited", edit])
    client.execute("DELETE FROM todos WHERE id = ?", [gone])
    assert client.crud_count() == 6

    connect(client, server, user, transport)
    wait_uploaded(client)
    rows = server.orm(f"""
result = sorted((t.description, t.completed, t.created_by) for t in Todo.objects.filter(list__owner_id="{user}"))
""")
    assert rows == [["edited", True, user], ["keep me", False, user]]
    assert server.orm(f'result = list(TodoList.objects.filter(owner_id="{user}").values_list("name", flat=True))') == [
        "offline list"]
    # The server sets owner_id/created_by from the token; the client converges to the server's values.
    assert client.wait_for("SELECT owner_id FROM lists", [{"owner_id": user}])["matched"]
    assert client.wait_for("SELECT description FROM todos ORDER BY description",
                           [{"description": "edited"}, {"description": "keep me"}])["matched"]
    second = make_client("second")
    connect(second, server, user, transport)
    assert second.wait_for(TODOS, client.query(TODOS))["matched"]
    assert {r["id"] for r in second.query("SELECT id FROM todos")} == {keep, edit}
    assert client.upload_rejections() == []


def test_own_writes_never_flicker_while_uploading(server, make_client, user, transport):
    seed(server, user, lists=1, todos=1)
    client = make_client()
    connect(client, server, user, transport)
    list_id = client.query("SELECT id FROM lists")[0]["id"]
    sampler = client.sample_async("SELECT id, description FROM todos ORDER BY description", duration_ms=3000,
                                  interval_ms=10)
    new_ids = [insert_todo(client, list_id, f"new {i}") for i in range(3)]
    snapshots = sampler.result()
    wait_uploaded(client)
    seen = set()
    for snap in snapshots:
        ids = {r["id"] for r in snap}
        # Once a row of ours appeared locally it never disappears again (no flicker during the round trip).
        assert seen <= ids, (seen - ids, snap)
        seen |= ids & set(new_ids)
    assert seen == set(new_ids)
    assert client.wait_for("SELECT count(*) AS n FROM todos", [{"n": 4}])["matched"]
    assert server.orm(f'result = Todo.objects.filter(list_id="{list_id}").count()') == 4


def test_writing_another_users_row_is_rejected_and_queue_moves_on(server, make_client, user, transport):
    other = user + "-victim"
    seed(server, other, lists=1, todos=1)
    victim_list, victim_todo = server.orm(f"""
lst = TodoList.objects.get(owner_id="{other}")
result = [str(lst.id), str(lst.todos.get().id)]
""")
    client = make_client()
    connect(client, server, user, transport)
    # A forged write to someone else's list (the client does not even have it locally).
    client.execute("INSERT INTO todos (id, list_id, description, completed) VALUES (?, ?, ?, 0)",
                   [str(uuid.uuid4()), victim_list, "intruder"])
    client.execute("UPDATE lists SET name = 'hijacked' WHERE id = ?", [victim_list])  # no local row: no-op
    # Then a legitimate write, which must still go through after the rejected batch.
    mine = insert_list(client, "mine after rejection")
    wait_uploaded(client)
    rejections = client.upload_rejections()
    assert [r["status"] for r in rejections] == [403]
    assert server.orm(f"""
lst = TodoList.objects.get(id="{victim_list}")
result = [lst.name, lst.owner_id, list(lst.todos.values_list("description", flat=True))]
""") == [f"{other} list 0", other, [f"{other} todo 0-0"]]
    assert server.orm(f'result = TodoList.objects.filter(id="{mine}", owner_id="{user}").exists()') is True
    assert victim_todo
