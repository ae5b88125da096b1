"""Sync Streams on the realistic schema: access checks through an ACL table, an explicit through model and an
auto-created many-to-many table; integer and UUID subscription parameters; buckets shared with a definition."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from schema_project.workspace.models import Document, Folder, FolderMember, Membership, Project, Team

from powersync_django.auth import TokenClaims
from powersync_django.models import BucketOp
from powersync_django.protocol import SyncRequest, parse_request
from powersync_django.rules import get_rules
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)


def request(*subscriptions: dict[str, Any]) -> SyncRequest:
    return parse_request({"streams": {"include_defaults": False, "subscriptions": list(subscriptions)}})


def sync_once(user: User, req: SyncRequest) -> list[dict[str, Any]]:
    claims = TokenClaims(user_id=str(user.pk), expires_at=time.time() + 3600, claims={"sub": str(user.pk)})

    async def run() -> list[dict[str, Any]]:
        session = SyncSession(claims, req)
        await session.prepare()
        out = []
        gen = session.lines()
        async with asyncio.timeout(10):
            async for line in gen:
                out.append(line)
                if "checkpoint_complete" in line:
                    break
        await gen.aclose()
        return out

    return asyncio.run(run())


def test_stream_with_the_shape_of_a_definition_shares_its_buckets():
    rules = get_rules()
    assert rules.definitions["document"].bucket_name == "shared_documents"
    assert rules.definitions["team_projects_now"].bucket_name == "team_projects"


def test_document_subscriptions_follow_every_access_path(replicate):
    alice, bob, carol = (User.objects.create(username=n) for n in ("alice", "bob", "carol"))
    own = Document.objects.create(owner=alice, title="own")
    shared = Document.objects.create(owner=bob, title="shared")
    shared.shared_with.add(alice)
    folder = Folder.objects.create(name="f")
    FolderMember.objects.create(folder=folder, user=alice)
    in_folder = Document.objects.create(owner=bob, title="in folder", folder=folder)
    private = Document.objects.create(owner=carol, title="private")
    replicate()
    ops_before = BucketOp.objects.count()
    docs = [own, shared, in_folder, private]
    lines = sync_once(alice, request(*({"stream": "document", "parameters": {"document_id": str(d.id)}} for d in docs)))
    checkpoint = lines[0]["checkpoint"]
    got = {b["bucket"]: b["subscriptions"] for b in checkpoint["buckets"]}
    assert got == {f'1#shared_documents["{d.id}"]': [{"sub": i}] for i, d in enumerate(docs[:3])}
    [stream] = checkpoint["streams"]
    assert stream["name"] == "document" and [e["subscription"] for e in stream["errors"]] == [3]
    titles = {op["object_id"] for line in lines if "data" in line for op in line["data"]["data"]}
    assert titles == {str(d.id) for d in docs[:3]}
    assert BucketOp.objects.count() == ops_before  # subscribing wrote nothing


def test_integer_subscription_parameters_and_stream_priority(replicate):
    alice = User.objects.create(username="alice")
    mine, other = Team.objects.create(name="mine"), Team.objects.create(name="other")
    Membership.objects.create(team=mine, user=alice)
    Project.objects.create(team=mine, name="p1")
    Project.objects.create(team=other, name="p2")
    replicate()
    lines = sync_once(alice, request(
        {"stream": "team_projects_now", "parameters": {"team_id": str(mine.pk)}},  # text, as JSON clients may send
        {"stream": "team_projects_now", "parameters": {"team_id": mine.pk}},
        {"stream": "team_projects_now", "parameters": {"team_id": other.pk}},     # not a member
        {"stream": "team_projects_now", "parameters": {"team_id": "seven"}},      # not a number
    ))
    checkpoint = lines[0]["checkpoint"]
    assert checkpoint["buckets"][0]["bucket"] == f"1#team_projects[{mine.pk}]"
    assert checkpoint["buckets"][0]["subscriptions"] == [{"sub": 0}, {"sub": 1}]
    assert checkpoint["buckets"][0]["priority"] == 1
    assert len(checkpoint["buckets"]) == 1
    assert [e["subscription"] for e in checkpoint["streams"][0]["errors"]] == [2, 3]
    # With the defaults too, the bucket is there for both reasons, at the higher of the two priorities.
    both = parse_request({"streams": {"include_defaults": True, "subscriptions": [
        {"stream": "team_projects_now", "parameters": {"team_id": mine.pk}}]}})
    entry = next(b for b in sync_once(alice, both)[0]["checkpoint"]["buckets"] if b["bucket"].startswith("1#team_projects["))
    assert entry["subscriptions"] == [{"default": 0}, {"sub": 0}] and entry["priority"] == 1


def _live(user: User, req: SyncRequest, change) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first checkpoint's lines, and the lines up to the next checkpoint_complete after ``change()`` ran."""
    from asgiref.sync import sync_to_async
    from django.db import connection

    def in_thread() -> None:
        try:
            change()
        finally:
            connection.close()

    async def take_until_complete(gen) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            async for line in gen:
                out.append(line)
                if "checkpoint_complete" in line:
                    break
        return out

    claims = TokenClaims(user_id=str(user.pk), expires_at=time.time() + 3600, claims={"sub": str(user.pk)})

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        session = SyncSession(claims, req)
        await session.prepare()
        gen = session.lines()
        first = await take_until_complete(gen)
        await sync_to_async(in_thread, thread_sensitive=False)()
        second = await take_until_complete(gen)
        await gen.aclose()
        return first, second

    return asyncio.run(run())


def test_access_lost_through_the_acl_or_the_m2m_removes_the_subscribed_bucket(replicate):
    """A membership deleted, a share removed from the auto-created M2M table: the subscribed bucket leaves in the
    next checkpoint_diff, while a bucket another reason still grants (the owner's own document) stays."""
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    team = Team.objects.create(name="t")
    membership = Membership.objects.create(team=team, user=alice)
    shared = Document.objects.create(owner=bob, title="shared")
    shared.shared_with.add(alice)
    own = Document.objects.create(owner=alice, title="own")
    own.shared_with.add(bob)
    replicate()
    req = request({"stream": "team_projects_now", "parameters": {"team_id": team.pk}},
                  {"stream": "document", "parameters": {"document_id": str(shared.id)}},
                  {"stream": "document", "parameters": {"document_id": str(own.id)}})

    def revoke() -> None:
        membership.delete()
        shared.shared_with.remove(alice)
        replicate()

    first, second = _live(alice, req, revoke)
    before = {b["bucket"] for b in first[0]["checkpoint"]["buckets"]}
    assert before == {f"1#team_projects[{team.pk}]", f'1#shared_documents["{shared.id}"]',
                      f'1#shared_documents["{own.id}"]'}
    diff = second[0]["checkpoint_diff"]
    assert sorted(diff["removed_buckets"]) == sorted([f"1#team_projects[{team.pk}]", f'1#shared_documents["{shared.id}"]'])
