"""Attacks on the shared fan-out path with the second project's access rules: users sharing a team's bucket
(Membership ACL), documents shared one by one and through streams (a bucket held by a definition and by a
subscription), a stream of its own priority; memberships granted and revoked between checkpoints. Streams with
shared reads (and lines replayed from each other) send what their twins reading their own send."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from schema_project.workspace.models import Document, Membership, Project, Team

from powersync_django import fanout, notify, storage, waiting
from powersync_django.auth import TokenClaims
from powersync_django.notify import get_hub
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(fn):
    def call(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


def claims(sub: str) -> TokenClaims:
    return TokenClaims(user_id=sub, expires_at=time.time() + 3600, claims={"sub": sub})


def config(on: bool) -> dict:
    return {**settings.POWERSYNC, "SHARED_READS": on, "SHARED_READ_MAX_OPS": 6, "OPS_PER_DATA_LINE": 2,
            "KEEPALIVE_SECONDS": 3600, "MAX_STREAMS_PER_USER": None}


def test_team_members_with_subscriptions_and_access_changes_send_what_they_compute_alone(monkeypatch):
    alice, bob, carol = (User.objects.create(username=n) for n in ("alice", "bob", "carol"))
    team, other = Team.objects.create(name="t"), Team.objects.create(name="o")
    for user in (alice, bob, carol):
        Membership.objects.create(team=team, user=user)
    Membership.objects.create(team=other, user=alice)
    Project.objects.create(team=team, name="p0")
    doc = Document.objects.create(owner=alice, title="shared")
    doc.shared_with.add(bob)
    replicate_now()
    frozen: list[int] = []
    latest = storage.latest_checkpoint_id
    monkeypatch.setattr(storage, "latest_checkpoint_id",
                        lambda using="default": frozen[0] if frozen else latest(using))

    async def replicated(change) -> None:
        frozen.append(await in_thread(latest)())
        await in_thread(change)()
        await in_thread(replicate_now)()
        frozen.clear()
        notify.checkpoint_committed(0)

    doc_sub = {"stream": "document", "parameters": {"document_id": str(doc.id)}}
    now_sub = {"stream": "team_projects_now", "parameters": {"team_id": team.pk}}
    requests = [
        (alice, SyncRequest(client_id="a0")),
        (alice, SyncRequest(client_id="a1", subscriptions=[doc_sub, now_sub])),
        (bob, SyncRequest(client_id="b0")),
        (bob, SyncRequest(client_id="b1", subscriptions=[now_sub, doc_sub])),
        (bob, SyncRequest(client_id="b2", include_defaults=False, subscriptions=[doc_sub])),
        (carol, SyncRequest(client_id="a0")),
        (carol, SyncRequest(client_id="c1", subscriptions=[now_sub])),
    ]

    def steps():
        def team_project() -> None:
            Project.objects.create(team=team, name="p1")

        def edit_doc() -> None:
            doc.title = "edited"
            doc.save()

        def upload() -> None:
            Project.objects.create(team=team, name="p2")
            storage.create_write_checkpoint(str(alice.pk), "a0")

        def grant() -> None:
            Membership.objects.create(team=other, user=bob)
            Project.objects.create(team=other, name="q")
            Project.objects.create(team=team, name="p3")

        def revoke() -> None:
            Membership.objects.filter(team=team, user=carol).delete()
            Project.objects.create(team=team, name="p4")

        def many() -> None:
            for i in range(7):
                Project.objects.create(team=team, name=f"many {i}")
            doc.title = "again"
            doc.save()

        def unshare() -> None:
            doc.shared_with.remove(bob)
            Project.objects.create(team=other, name="q2")

        return [team_project, edit_doc, upload, grant, revoke, many, unshare]

    async def settled(sessions: list[SyncSession], tasks: list[asyncio.Task]) -> None:
        hub = get_hub()
        newest = await in_thread(latest)()
        async with asyncio.timeout(60):
            while True:
                await asyncio.sleep(0.02)
                for t in tasks:
                    if t.done():
                        t.result()
                        raise AssertionError("a stream ended")
                if (hub.latest_id >= newest and all(s.cursor >= hub.latest_id for s in sessions)
                        and len(waiting.of(hub).waiters) == len(sessions)):
                    return

    async def run() -> tuple[list[list[dict]], int]:
        sessions: list[SyncSession] = []
        lines: list[list[dict]] = []
        tasks: list[asyncio.Task] = []

        async def consume(index: int, session: SyncSession) -> None:
            async for line in session.lines():
                lines[index].append(line)

        for on in (True, False):
            with override_settings(POWERSYNC=config(on)):
                for user, request in requests:
                    session = SyncSession(claims(str(user.pk)), request)
                    await session.prepare()
                    sessions.append(session)
                    lines.append([])
                    tasks.append(asyncio.create_task(consume(len(lines) - 1, session)))
        with override_settings(POWERSYNC=config(True)):
            await settled(sessions, tasks)
            for step in steps():
                await replicated(step)
                await settled(sessions, tasks)
        replayed = fanout.of(get_hub()).replayed
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return lines, replayed

    lines, replayed = asyncio.run(run())
    half = len(requests)
    for i in range(half):
        assert [orjson.dumps(line) for line in lines[i]] == [orjson.dumps(line) for line in lines[i + half]], i
    assert replayed > 0
    # Carol's streams lost the team's bucket; Bob's gained the other team's.
    assert any(f"team_projects[{team.pk}]" in b for line in lines[5] if "checkpoint_diff" in line
               for b in line["checkpoint_diff"]["removed_buckets"])
