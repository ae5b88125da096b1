"""Open streams follow access changes (issue #9): revoked buckets are removed, granted ones added, and only
the streams a change concerns re-run their parameter queries. Integer keys to auth.User give one bucket id."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection
from schema_project.workspace.models import Document, Folder, FolderMember, Membership, Project, Team

from powersync_django import rules as rules_module
from powersync_django.auth import TokenClaims
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.rules import get_rules
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


async def take_until(gen, key: str, seconds: float = 10) -> list[dict]:
    out = []
    async with asyncio.timeout(seconds):
        async for line in gen:
            out.append(line)
            if key in line:
                return out
    return out


@pytest.fixture
def query_runs(monkeypatch):
    """Subjects (token sub) of every parameter queryset run."""
    runs: list[str] = []
    original = rules_module.ParameterQuery.rows

    def rows(self, token, client, order, *args, **kwargs):
        if self.model is not None:
            runs.append(str(token.get("sub")))
        return original(self, token, client, order)

    monkeypatch.setattr(rules_module.ParameterQuery, "rows", rows)
    return runs


async def open_stream(user: User) -> tuple[SyncSession, object, list[dict]]:
    session = SyncSession(claims(str(user.pk)), SyncRequest())
    await session.prepare()
    gen = session.lines()
    return session, gen, await take_until(gen, "checkpoint_complete")


def buckets_of(lines: list[dict]) -> set[str]:
    return {b["bucket"] for b in lines[0]["checkpoint"]["buckets"]}


def test_revoked_and_granted_memberships_change_the_open_streams(query_runs):
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    team, other = Team.objects.create(name="t"), Team.objects.create(name="o")
    membership = Membership.objects.create(team=team, user=alice)
    Project.objects.create(team=team, name="p")
    Project.objects.create(team=other, name="q")
    replicate_now()

    async def run():
        a, gen_a, first_a = await open_stream(alice)
        b, gen_b, first_b = await open_stream(bob)
        query_runs.clear()

        def revoke():
            membership.delete()
            replicate_now()

        await in_thread(revoke)()
        revoked = await take_until(gen_a, "checkpoint_complete")
        runs_after_revoke = list(query_runs)
        # Bob's stream sees the same checkpoint: nothing in it concerns him, no query runs.
        assert await b._diff(b.hub.changes_since(b.cursor)) == (None, None, [])
        b.cursor = b.hub.latest_id
        assert query_runs == runs_after_revoke

        def grant():
            Membership.objects.create(team=other, user=bob)
            replicate_now()

        query_runs.clear()
        await in_thread(grant)()
        granted = await take_until(gen_b, "checkpoint_complete")
        runs_after_grant = list(query_runs)
        assert await a._diff(a.hub.changes_since(a.cursor)) == (None, None, [])
        assert query_runs == runs_after_grant
        await gen_a.aclose()
        await gen_b.aclose()
        return first_a, revoked, runs_after_revoke, granted, runs_after_grant

    first_a, revoked, runs_revoke, granted, runs_grant = asyncio.run(run())
    team_bucket = f'1#team_projects[{team.pk}]'
    assert team_bucket in buckets_of(first_a)
    diff = revoked[0]["checkpoint_diff"]
    assert team_bucket in diff["removed_buckets"] and f'1#team_tasks[{team.pk}]' in diff["removed_buckets"]
    assert set(runs_revoke) == {str(alice.pk)}  # only alice's parameter queries ran
    diff = granted[0]["checkpoint_diff"]
    assert f'1#team_projects[{other.pk}]' in {b["bucket"] for b in diff["updated_buckets"]}
    rows = [orjson.loads(op["data"]) for line in granted if "data" in line for op in line["data"]["data"]]
    assert [r["name"] for r in rows] == ["q"]
    assert set(runs_grant) == {str(bob.pk)}


def test_sharing_through_many_to_many_on_open_streams(query_runs):
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    doc = Document.objects.create(owner=alice, title="shared")
    folder = Folder.objects.create(name="f")
    in_folder = Document.objects.create(owner=alice, title="in folder", folder=folder)
    replicate_now()

    async def run():
        _, gen, first = await open_stream(bob)
        out = [first]
        for change in (lambda: doc.shared_with.add(bob), lambda: bob.shared_documents.remove(doc),
                       lambda: folder.members.add(bob), lambda: FolderMember.objects.filter(user=bob).delete()):

            def apply(change=change):
                change()
                replicate_now()

            await in_thread(apply)()
            out.append(await take_until(gen, "checkpoint_complete"))
        await gen.aclose()
        return out

    first, shared, unshared, joined, left = asyncio.run(run())
    doc_bucket, folder_bucket = f'1#shared_documents["{doc.pk}"]', f'1#folder_documents["{folder.pk}"]'
    assert doc_bucket not in buckets_of(first)
    assert doc_bucket in {b["bucket"] for b in shared[0]["checkpoint_diff"]["updated_buckets"]}
    assert [orjson.loads(op["data"])["title"] for line in shared if "data" in line for op in line["data"]["data"]] == [
        "shared"]
    assert unshared[0]["checkpoint_diff"]["removed_buckets"] == [doc_bucket]
    assert folder_bucket in {b["bucket"] for b in joined[0]["checkpoint_diff"]["updated_buckets"]}
    assert [orjson.loads(op["data"])["id"] for line in joined if "data" in line for op in line["data"]["data"]] == [
        str(in_folder.pk)]
    assert left[0]["checkpoint_diff"]["removed_buckets"] == [folder_bucket]


# --- integer keys --------------------------------------------------------------------------------------


def test_integer_owner_key_gives_the_same_bucket_on_both_sides():
    alice = User.objects.create(username="alice")
    doc = Document.objects.create(owner=alice, title="mine")
    replicate_now()

    async def run():
        _, gen, lines = await open_stream(alice)
        await gen.aclose()
        return lines

    lines = asyncio.run(run())
    bucket = f"1#owned_documents[{alice.pk}]"
    assert bucket in buckets_of(lines)
    rows = [orjson.loads(op["data"]) for line in lines if "data" in line and line["data"]["bucket"] == bucket
            for op in line["data"]["data"]]
    assert [r["id"] for r in rows] == [str(doc.pk)]


def test_a_subject_that_does_not_fit_the_key_gives_no_bucket():
    User.objects.create(username="alice")
    got = get_rules().request_buckets({"sub": "abc"}, {}, 1)
    assert not any("owned_documents" in b or "team" in b or "folder" in b or "shared" in b for b in got)
    assert get_rules().stream_keys({"sub": "abc"}, {}) == frozenset(get_rules().watched)


def test_change_keys_normalise_integer_and_text_values():
    rules = get_rules()
    assert rules.change_keys("workspace.membership", '{"id": 1, "team_id": 2, "user_id": 5}') == [
        "workspace.membership|user_id=5"]
    assert "workspace.membership|user_id=5" in rules.stream_keys({"sub": "5"}, {})
    assert "workspace.membership|user_id=5" in rules.stream_keys({"sub": " 5"}, {})
    # A delete without values (raw SQL recorded a missing row): every stream re-evaluates.
    assert rules.change_keys("workspace.membership", None) == ["workspace.membership"]
