"""Compaction while official clients are connected: both the old and a new client converge (issue: compaction)."""

from __future__ import annotations

from test_sync_e2e import TODOS, connect, seed

STORED = """
from powersync_django.models import BucketOp
result = BucketOp.objects.filter(bucket__contains=str(TodoList.objects.get(owner_id="{user}").id)).count()
"""


def test_compaction_keeps_old_and_new_clients_consistent(server, make_client, user, transport):
    seed(server, user, lists=1, todos=1)
    before = make_client("before")
    connect(before, server, user, transport)
    todo_id = before.query("SELECT id FROM todos ORDER BY description LIMIT 1")[0]["id"]
    server.orm(f"""
t = Todo.objects.get(id="{todo_id}")
for i in range(200):
    t.description = f"version {{i}}"
    t.save()
""")
    assert before.wait_for("SELECT description FROM todos WHERE id = ?", [{"description": "version 199"}],
                           params=[todo_id], timeout_ms=20_000)["matched"]
    before.disconnect()  # comes back after compaction, from its old position
    server.orm("""
import time
from powersync_django.models import OutboxEntry
deadline = time.monotonic() + 20
while OutboxEntry.objects.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
""")  # the server's replicator has processed everything
    ops_before = server.orm(STORED.format(user=user))
    out = server.manage("powersync_compact", "--min-changed-share", "0")
    ops_after = server.orm(STORED.format(user=user))
    print(f"stored ops of the todo bucket: {ops_before} -> {ops_after}\n{out}")
    assert ops_before == 201 and ops_after == 2  # one CLEAR carrying 200 checksums + the live PUT
    # A write after compaction, so the returning client gets a diff on top of compacted history.
    server.orm(f'Todo.objects.filter(id="{todo_id}").update(completed=True)\n'
               f'from powersync_django.capture import record_changed\nrecord_changed(Todo, ["{todo_id}"])')
    before.connect(server.url, server.token(user), connection_method=transport)
    fresh = make_client("after")
    connect(fresh, server, user, transport)
    expected = fresh.query(TODOS)
    assert [r["description"] for r in expected if r["id"] == todo_id] == ["version 199"]
    assert [r["completed"] for r in expected if r["id"] == todo_id] == [1]
    assert before.wait_for(TODOS, expected, timeout_ms=20_000)["matched"]
    assert before.checksum_failures() == [] and fresh.checksum_failures() == []
