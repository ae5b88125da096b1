"""Access changes in less common shapes (adversarial review of issue #9): each one must reach the streams of
the users it concerns."""

from __future__ import annotations

import orjson
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from schema_project.workspace.models import Membership, Task, Team

from powersync_django.capture import PowerSyncQuerySet
from powersync_django.models import BucketOp, Checkpoint, OutboxEntry
from powersync_django.replication import replicate_now
from powersync_django.rules import get_rules

pytestmark = pytest.mark.django_db(transaction=True)


def changed_models() -> list[str]:
    """changed_models of the checkpoint that replicating everything pending commits."""
    replicate_now()
    return orjson.loads(Checkpoint.objects.latest("id").changed_models)


@pytest.fixture
def people():
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    replicate_now()
    return alice, bob


def test_deleting_a_stale_instance_names_the_user_the_row_has(people):
    """A membership loaded before another request moved it to bob, then deleted: bob loses the team."""
    alice, bob = people
    team = Team.objects.create(name="t")
    m = Membership.objects.create(team=team, user=alice)
    stale = Membership.objects.get(pk=m.pk)
    m.user = bob
    m.save()
    replicate_now()
    stale.delete()
    [entry] = OutboxEntry.objects.filter(model="workspace.membership")
    assert orjson.loads(entry.snapshot)["user_id"] == bob.pk
    assert changed_models() == [f"workspace.membership|user_id={bob.pk}"]


def test_deleting_an_instance_changed_in_memory_names_the_stored_user(people):
    alice, bob = people
    team = Team.objects.create(name="t")
    m = Membership.objects.create(team=team, user=alice)
    replicate_now()
    m.user = bob  # never saved: the row that goes is alice's
    m.delete()
    assert changed_models() == [f"workspace.membership|user_id={alice.pk}"]


def test_cascaded_deletes_read_no_row_twice(people):
    alice, bob = people
    team = Team.objects.create(name="t")
    for user in (alice, bob):
        Membership.objects.create(team=team, user=user)
    replicate_now()
    with CaptureQueriesContext(connection) as ctx:
        team.delete()
    # The cascade reads the memberships once and deletes them: no read of each row's stored values.
    reads = [q["sql"] for q in ctx.captured_queries
             if q["sql"].startswith("SELECT") and 'FROM "workspace_membership"' in q["sql"]]
    assert len(reads) == 1, reads
    assert sorted(changed_models()) == sorted(f"workspace.membership|user_id={u.pk}" for u in (alice, bob))


# --- on_delete updates of fields a multi-table child inherits ------------------------------------------


@pytest.fixture
def tasks_only(settings):
    """Only Task (a multi-table child of Project) is synced: Project itself is in no bucket definition."""
    settings.POWERSYNC = {**settings.POWERSYNC, "STREAMS": {},
                          "BUCKETS": {"team_tasks": settings.POWERSYNC["BUCKETS"]["team_tasks"]}}
    assert "workspace.project" not in get_rules().captured_labels


def test_set_null_of_a_field_inherited_from_an_untracked_parent_is_captured(tasks_only):
    lead = User.objects.create(username="lead")
    team = Team.objects.create(name="t")
    task = Task.objects.create(team=team, name="t1", lead=lead)
    replicate_now()
    lead.delete()  # Django sets Project.lead_id to NULL with an UPDATE, no signals
    assert [(e.model, e.object_pk, e.op) for e in OutboxEntry.objects.all()] == [("workspace.task", str(task.pk), "S")]
    replicate_now()
    op = BucketOp.objects.filter(bucket=f"1#team_tasks[{team.pk}]").latest("op_id")
    assert (op.op, orjson.loads(op.data)["lead_id"]) == ("PUT", None)


def test_deleting_a_stale_multi_table_child_names_the_parent_rows_stored_user(settings):
    """Django builds the parent instance of a deleted child from the child's (stale) fields."""
    settings.POWERSYNC = {**settings.POWERSYNC, "BUCKETS": {
        **settings.POWERSYNC["BUCKETS"],
        "led_teams": {"parameters": {"queryset": "workspace.Project", "filter": {"lead_id": "token.sub"},
                                     "values": {"team_id": "team_id"}},
                      "data": [{"model": "workspace.Project", "table": "projects",
                                "filter": {"team_id": "bucket.team_id"}}]}}}
    assert [f.attname for f in get_rules().targeted_fields("workspace.project")] == ["lead_id"]
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    task = Task.objects.create(team=Team.objects.create(name="t"), name="t1", lead=alice)
    stale = Task.objects.get(pk=task.pk)
    task.lead = bob
    task.save()
    replicate_now()
    stale.delete()
    [entry] = OutboxEntry.objects.filter(model="workspace.project")
    assert orjson.loads(entry.snapshot)["lead_id"] == bob.pk
    assert f"workspace.project|lead_id={bob.pk}" in changed_models()


# --- bulk_create(ignore_conflicts=True) with database-assigned keys -----------------------------------


def test_ignore_conflicts_insert_below_an_explicit_key_is_captured(people):
    """A row created with an explicit key above the key sequence (a data import, a client upload on SQLite):
    the rows the insert creates get keys below the largest one and must still be recorded."""
    alice, bob = people
    team = Team.objects.create(name="t")
    Membership.objects.create(id=10_000, team=Team.objects.create(name="imported"), user=alice)
    replicate_now()
    PowerSyncQuerySet(Membership).bulk_create([Membership(team=team, user=bob)], ignore_conflicts=True)
    new = Membership.objects.get(team=team, user=bob)
    if connection.vendor == "postgresql":
        assert new.pk < 10_000  # from the key sequence (SQLite's AUTOINCREMENT goes above the largest key)
    assert str(new.pk) in {e.object_pk for e in OutboxEntry.objects.filter(model="workspace.membership")}
    assert f"workspace.membership|user_id={bob.pk}" in changed_models()
