"""A long initial sync is interrupted by a newer checkpoint (protocol.md §6.8 item 6), at the SyncSession level.

Changes commit while the session reads pages ahead: on SQLite this runs on a WAL database file (the ``using``
fixture of test_snapshot), as deployed; the in-memory shared-cache test database would lock the reader out.
Parameter querysets read the default database, so the buckets here come from the token alone: one per part
(todos whose description starts with ``"<part>."``) and user.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from django.test import override_settings
from sync_client import ClientModel
from test_snapshot import using  # noqa: F401  (fixture)
from test_sync import _config, claims, in_thread

from demo_project.todos.models import Todo, TodoList
from powersync_django.capture import PowerSyncQuerySet
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = 100
PARTS = 3


def settings_with_parts(priorities: tuple[int, ...] = (3,) * PARTS) -> dict:
    buckets = {
        f"part{n}": {
            "parameters": {"created_by": "token.sub"},
            "data": [{"model": "todos.Todo", "table": "todos",
                      "filter": {"created_by": "bucket.created_by", "description__startswith": f"{n}."}}],
            "priority": priorities[n],
        }
        for n in range(PARTS)
    }
    return {**_config(), "BUCKETS": buckets, "OPS_PER_DATA_LINE": PAGE}


def bucket(part: int, user: str = "u1") -> str:
    return f'1#part{part}["{user}"]'


def make_todos(db: str, owner: str, per_part: int) -> TodoList:
    lst = TodoList.objects.using(db).create(name=owner, owner_id=owner)
    PowerSyncQuerySet(Todo).using(db).bulk_create(
        [Todo(list=lst, description=f"{n}.{i}", created_by=owner) for n in range(PARTS) for i in range(per_part)],
        batch_size=500)
    replicate_now(db)
    return lst


def is_part(line: dict) -> bool:
    """A data line of the buckets defined here (the project may add others, e.g. from its streams)."""
    return line["data"]["bucket"].startswith("1#part")


def ops_in(line: dict) -> int:
    return len(line["data"]["data"]) if "data" in line else 0


async def next_line(gen) -> dict:
    async with asyncio.timeout(20):
        return await gen.__anext__()


async def commit_and_wait(session: SyncSession, change) -> None:
    """Commit ``change`` and a replication batch, then wait until the session's hub knows the new checkpoint."""
    before = session.hub.latest_id
    await in_thread(lambda: (change(), replicate_now(session.using)))()
    async with asyncio.timeout(20):
        while session.hub.latest_id <= before:
            await session.hub.wait_changes(before, 1)


def client_rows(lines: list[dict]) -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in lines:
        for op in line["data"]["data"] if "data" in line else []:
            if op.get("object_type") != "todos":
                continue
            if op["op"] == "PUT":
                rows[op["object_id"]] = orjson.loads(op["data"])["description"]
            elif op["op"] == "REMOVE":
                rows.pop(op["object_id"], None)
    return rows


def test_a_newer_checkpoint_interrupts_a_long_initial_sync(using):  # noqa: F811
    with override_settings(POWERSYNC=settings_with_parts()):
        lst = make_todos(using, "u1", 1000)
        theirs = make_todos(using, "u2", 2)

        async def run():
            session = SyncSession(claims("u1"), SyncRequest(), using=using)
            await session.prepare()
            gen = session.lines()
            lines = [await next_line(gen)]
            while sum(map(ops_in, lines)) < 1200:
                lines.append(await next_line(gen))
            # Another user's change is not for this stream: no interruption.
            await commit_and_wait(session, lambda: Todo.objects.using(using).create(
                list=theirs, description="0.theirs", created_by="u2"))
            lines.append(await next_line(gen))
            unrelated = lines[-1]

            def change():  # a bucket already sent, and one not sent yet
                Todo.objects.using(using).create(list=lst, description="0.added", created_by="u1")
                todo = Todo.objects.using(using).filter(description="2.0", created_by="u1").get()
                todo.description = "2.edited"
                todo.save(using=using)

            await commit_and_wait(session, change)
            interrupted_at = len(lines)
            while "checkpoint_complete" not in lines[-1]:
                lines.append(await next_line(gen))
            await gen.aclose()
            return lines, unrelated, interrupted_at

        lines, unrelated, interrupted_at = asyncio.run(run())

    assert "data" in unrelated
    kinds = [next(iter(line)) for line in lines]
    assert kinds.count("checkpoint") == 1 and kinds.count("checkpoint_diff") == 1
    assert kinds.count("checkpoint_complete") == 1
    # The diff comes at the next line boundary; the superseded checkpoint is never completed.
    assert kinds[interrupted_at] == "checkpoint_diff"
    diff = lines[interrupted_at]["checkpoint_diff"]
    assert sorted(b["bucket"] for b in diff["updated_buckets"]) == [bucket(0), bucket(2)]
    assert diff["removed_buckets"] == []
    assert int(diff["last_op_id"]) > int(lines[0]["checkpoint"]["last_op_id"])
    assert lines[-1]["checkpoint_complete"]["last_op_id"] == diff["last_op_id"]
    # Data continued from the positions reached: part 1 was mid-way when the diff came.
    assert {line["data"]["bucket"] for line in lines[interrupted_at:] if "data" in line} >= {bucket(1), bucket(2)}

    client = ClientModel()
    assert not any(client.apply(line) for line in lines)
    assert client.mismatches == [] and client.regressions == [] and client.omitted == []
    assert client.completed == 1 and client.last_op_id == int(diff["last_op_id"])
    # Every op once: no page resent after the interruption, none beyond its checkpoint.
    sent = [(line["data"]["bucket"], op["op_id"]) for line in lines if "data" in line and is_part(line)
            for op in line["data"]["data"]]
    assert len(sent) == len(set(sent)) == PARTS * 1000 + 2  # and "0.added", "2.edited"
    expected = dict(Todo.objects.using(using).filter(created_by="u1").values_list("id", "description"))
    assert client_rows(lines) == {str(pk): d for pk, d in expected.items()}


def test_fewer_ops_than_the_threshold_complete_the_current_checkpoint_first(using):  # noqa: F811
    with override_settings(POWERSYNC=settings_with_parts()):
        lst = make_todos(using, "u1", 250)  # 750 ops: below INTERRUPT_AFTER_OPS

        async def run():
            session = SyncSession(claims("u1"), SyncRequest(), using=using)
            await session.prepare()
            gen = session.lines()
            lines = [await next_line(gen)]
            while sum(map(ops_in, lines)) < 300:
                lines.append(await next_line(gen))
            await commit_and_wait(session, lambda: Todo.objects.using(using).create(
                list=lst, description="0.added", created_by="u1"))
            while sum(1 for line in lines if "checkpoint_complete" in line) < 2:
                lines.append(await next_line(gen))
            await gen.aclose()
            return lines

        lines = asyncio.run(run())

    kinds = [next(iter(line)) for line in lines]
    first_complete = kinds.index("checkpoint_complete")
    assert kinds[first_complete + 1] == "checkpoint_diff"
    assert lines[first_complete]["checkpoint_complete"]["last_op_id"] == lines[0]["checkpoint"]["last_op_id"]
    client = ClientModel()
    assert not any(client.apply(line) for line in lines)
    assert client.mismatches == [] and client.completed == 2


def test_interrupted_after_a_partial_checkpoint_the_new_one_completes_its_priorities_again(using):  # noqa: F811
    with override_settings(POWERSYNC=settings_with_parts((0, 3, 3))):
        lst = make_todos(using, "u1", 1000)

        async def run():
            session = SyncSession(claims("u1"), SyncRequest(), using=using)
            await session.prepare()
            gen = session.lines()
            lines = [await next_line(gen)]
            while sum(map(ops_in, lines)) < 1200:  # priority 0 done, part 1 begun
                lines.append(await next_line(gen))

            def change():
                for part in (0, 2):
                    Todo.objects.using(using).create(list=lst, description=f"{part}.added", created_by="u1")

            await commit_and_wait(session, change)
            interrupted_at = len(lines)
            while "checkpoint_complete" not in lines[-1]:
                lines.append(await next_line(gen))
            await gen.aclose()
            return lines, interrupted_at

        lines, interrupted_at = asyncio.run(run())

    kinds = [next(iter(line)) for line in lines]
    assert kinds[:12] == ["checkpoint"] + ["data"] * 10 + ["partial_checkpoint_complete"]
    assert kinds[interrupted_at] == "checkpoint_diff"
    diff = lines[interrupted_at]["checkpoint_diff"]
    assert sorted(b["bucket"] for b in diff["updated_buckets"]) == [bucket(0), bucket(2)]
    after = lines[interrupted_at + 1:]
    # The new checkpoint: priority 0's new op, its partial completion, then the rest from where it stopped.
    assert [next(iter(line)) for line in after[:2]] == ["data", "partial_checkpoint_complete"]
    sent_before = [line["data"] for line in lines[:interrupted_at] if "data" in line]
    reached = {page["bucket"]: page["next_after"] for page in sent_before}
    assert after[0]["data"]["bucket"] == bucket(0) and after[0]["data"]["after"] == reached[bucket(0)]
    assert after[1]["partial_checkpoint_complete"] == {"last_op_id": diff["last_op_id"], "priority": 0}
    assert after[2]["data"]["bucket"] == bucket(1) and after[2]["data"]["after"] == reached[bucket(1)]
    assert lines[-1]["checkpoint_complete"]["last_op_id"] == diff["last_op_id"]
    client = ClientModel()
    assert not any(client.apply(line) for line in lines)
    assert client.mismatches == [] and client.completed == 1
    sent = [(line["data"]["bucket"], op["op_id"]) for line in lines if "data" in line and is_part(line)
            for op in line["data"]["data"]]
    assert len(sent) == len(set(sent)) == PARTS * 1000 + 2
